"""MedSynth: a deterministic, procedural biomedical image-text data set.

Nothing outside the package registries can be reached, so the project ships its
own data: drawn images whose findings decide every answer, so a model can only
score above chance by looking at the pixels.

What is drawn (every geometry is in normalised [0, 1] coordinates, so any
``image_size`` works; findings are sized to survive a 64 px encoder):

* ``cxr``   chest radiograph studies, a frontal (PA) and a lateral view of one
  patient. Findings, each present independently (about 50 %, with ~20 % fully
  normal studies): a round bright *nodule* in the upper/mid zone of one lung
  (small: radius ~0.04, large: ~0.08 of the image side, i.e. ~2.6 px vs ~5 px
  at 64 px), a *pleural effusion* (bright fluid filling the base of one lung,
  with a meniscus rising laterally) and *cardiomegaly* (cardiothoracic ratio
  0.60-0.68 vs 0.35-0.43 when absent). Some patients (40 %) also have a prior
  study; the nodule between prior and current is new, grown (small -> large),
  resolved, stable, or absent from both ("none"): the ``longitudinal`` question
  and the ``longitudinal_report`` (prior frontal image and report + current
  frontal and lateral views -> report with a Comparison line, laid out as
  MIMIC-CXR's longitudinal items). Those patients also have 3-16
  older follow-up studies (frontal views, findings as on the prior): their whole
  series with reports, oldest first, makes the long ``series_report`` samples of
  the long-context stage (thousands of tokens at 64 tokens per image).
* ``ct``    axial abdominal CT-like slices with an optional hypodense liver lesion.
* ``mri``   axial brain MRI-like slices with an optional bright mass in one hemisphere.
* ``pathology`` RGB H&E-like patches: normal (sparse small regular nuclei) or
  tumor (dense, large, irregular dark nuclei).

Side convention (radiological): every side in the text and in ``findings`` is
the *patient's* side. Frontal radiographs are PA views and axial CT/MRI slices
are viewed from the feet, so the patient's left is on the image's RIGHT and
the patient's right on the image's left. Lateral radiographs are displayed
with the patient's front (anterior) on the image left and the spine
(posterior) on the image right; a lateral view cannot show the side.

Multiple choice (``mcq``: the modality, and which finding is present) is built so
that the four options give the answer away as little as the findings allow: each
answer is asked about equally often, and distractors come from every modality's
findings (``records.MCQ_RATE``). The best guess without the image is right about
1 time in 4 for the modality and ~0.38 for the finding (co-occurring chest
findings leave a hint); the benchmark reports it as ``prior_accuracy``.

Records are LLaVA-style JSONL (``{root}/{split}.jsonl``, images under
``{root}/images/{split}/``, paths relative to ``root``) with our extra fields:
``task``, ``modality``, ``answer`` (closed/open/mcq/longitudinal), ``options``
(mcq), ``findings`` (structured ground truth), ``case_id`` and ``answers``
(multiturn short answers). Determinism: each case draws from its own
``numpy`` generator seeded by (seed, split, index), so a case is independent of
the other cases and of the split sizes, and equal arguments give byte-identical
files.

Modules: ``cases`` (seeds and ground truth), ``drawing`` (the images), ``text``
(captions, reports and the report parser), ``records`` (a case's records, task by
task) and ``generate`` (the data set folder and its manifest: ``generate_medsynth``,
``ensure_medsynth``); ``python -m medgpt_oss.data.medsynth --root DIR`` writes a set.
"""
