"""MedSynth records: the LLaVA-style records of one case, for every task."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from medgpt_oss.data.medsynth.cases import MODALITY_SHARE, case_seeds, positive_findings
from medgpt_oss.data.medsynth.text import CHANGE_SENTENCES, capitalized, caption_text, report_text

TASKS = ("caption", "report", "closed", "open", "mcq", "text_qa",
         "multiview_report", "longitudinal", "longitudinal_report", "multiturn", "series_report")
MODALITY_NAMES = {"cxr": "Chest X-ray", "ct": "CT", "mri": "MRI", "pathology": "Pathology"}
_P_TEXT_QA = 0.30      # a text-only knowledge question attached to a case

TEXT_QA = (
    ("What does cardiomegaly mean?", "An enlarged heart."),
    ("What is a pleural effusion?", "Fluid in the space around the lung."),
    ("What is a lung nodule?", "A small round opacity in the lung."),
    ("What is the cardiothoracic ratio?", "The width of the heart divided by the width of the chest."),
    ("Which cardiothoracic ratio suggests cardiomegaly?", "A ratio greater than one half."),
    ("On a frontal chest X-ray, where is the patient's left side?", "On the right side of the image."),
    ("Where does a pleural effusion collect on an upright chest X-ray?", "At the base of the lung."),
    ("What are the two standard views of a chest X-ray?", "Frontal and lateral."),
    ("What does CT stand for?", "Computed tomography."),
    ("What does MRI stand for?", "Magnetic resonance imaging."),
    ("What does a hypodense lesion on CT mean?", "A region darker than the tissue around it."),
    ("Which organ lies in the right upper abdomen?", "The liver."),
    ("What fluid fills the ventricles of the brain?", "Cerebrospinal fluid."),
    ("Which stain is used for routine pathology?", "Hematoxylin and eosin."),
    ("What color does hematoxylin stain nuclei?", "Blue to purple."),
    ("How do tumor nuclei usually look?", "Large, dark and irregular."),
    ("What should be compared when a prior study is available?", "Any change in the findings since the prior study."),
    ("What does it mean when a nodule has grown?", "It is larger than on the prior study."),
)

_CAPTION_PROMPTS = ("Describe the image briefly.", "Write a short caption for this image.",
                    "What does this image show?")

# Multiple choice is built so that the options alone give the answer away as little as the findings allow:
# - each answer is asked about equally often: a case's question is asked as multiple choice with probability
#   min(1, MCQ_RATE / the answer's share of cases), so common answers ("No abnormality", chest X-ray) are not
#   the best guess; a modality question not asked so is asked as an open question;
# - the finding question's three distractors come from every modality's findings and "No abnormality", never a
#   finding the image has; an option set is drawn with probability proportional to the product of its options'
#   shares, so that rarer answers do not stand out as the odd option.
# What is left to a guesser without the image: findings co-occur on chest X-rays, so a set that leaves out a
# chest finding hints that the image has it (test_medsynth: the best image-free guess is right ~0.37, chance 0.25).
MCQ_RATE = 0.15
NO_FINDING = "No abnormality"
FINDING_NAMES = {"nodule": "Lung nodule", "effusion": "Pleural effusion", "cardiomegaly": "Cardiomegaly",
                 "liver_lesion": "Liver lesion", "brain_mass": "Brain mass", "tumor": "Tumor"}
# each finding question's answer: its share of cases (measured on 20,000 generated cases)
ANSWER_SHARE = {"Lung nodule": 0.151, "Pleural effusion": 0.131, "Cardiomegaly": 0.135, "Liver lesion": 0.077,
                "Brain mass": 0.075, "Tumor": 0.099, NO_FINDING: 0.332}
_CLOSED = {  # finding key -> question
    "nodule": "Is there a nodule?", "effusion": "Is there a pleural effusion?",
    "cardiomegaly": "Is the heart enlarged?", "liver_lesion": "Is there a liver lesion?",
    "brain_mass": "Is there a brain mass?", "tumor": "Is this a tumor?",
}


def _yn(v: Any) -> tuple[str, str]:
    return ("Yes.", "yes") if v else ("No.", "no")


def _conv(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def _mcq_conv(question: str, letter: str, options: dict[str, str]) -> list[dict[str, str]]:
    """A multiple-choice exchange whose answer is reasoned first in the analysis channel, as GPT-oss does:
    the option's text (what the image shows), then its letter, looked up among the options; the final answer
    repeats them. Naming the text before the letter splits seeing from matching."""
    conv = _conv("<image>\n" + question, f"{letter}. {options[letter]}")
    conv[1]["thinking"] = f"{options[letter]} is option {letter}."
    return conv


def _mcq(rng: np.random.Generator, question: str, correct: str, distractors: list[str]) -> tuple[str, str, dict]:
    letters = "ABCD"
    gold = int(rng.integers(4))
    others = [distractors[i] for i in rng.permutation(len(distractors))[:3]]
    opts = others[:gold] + [correct] + others[gold:]
    options = dict(zip(letters, opts))
    q = question + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items()) + \
        "\nAnswer with the letter of the correct option."
    return q, letters[gold], options


def _asked_as_mcq(rng: np.random.Generator, share: float) -> bool:
    return rng.random() < min(1.0, MCQ_RATE / share)


def _finding_mcq(rng: np.random.Generator, f: dict) -> tuple[str, str, dict] | None:
    """"Which finding is present?" as multiple choice, or None when this case is not asked it (see MCQ_RATE)."""
    present = [name for key, name in FINDING_NAMES.items() if f.get(key)]
    correct = present[int(rng.integers(len(present)))] if present else NO_FINDING
    if not _asked_as_mcq(rng, ANSWER_SHARE[correct]):
        return None
    pool = [name for name in ANSWER_SHARE if name != correct and name not in present]
    triples = list(itertools.combinations(pool, 3))
    weight = np.array([math.prod(ANSWER_SHARE[name] for name in t) for t in triples])
    distractors = list(triples[int(rng.choice(len(triples), p=weight / weight.sum()))])
    return _mcq(rng, "Which finding is present in this image?", correct, distractors)


def case_records(case: dict[str, Any], seed: int, images: dict[str, str]) -> list[dict[str, Any]]:
    """The records of one case; ``images`` maps view -> path relative to the root."""
    rng = np.random.default_rng(case_seeds(seed, case["split"], case["index"])[2])
    m, f = case["modality"], case["findings"]
    cid = f"medsynth-{case['split']}-{case['index']:06d}"
    main_view = {"cxr": "frontal", "ct": "axial", "mri": "axial", "pathology": "patch"}[m]
    main = images[main_view]
    out: list[dict[str, Any]] = []

    def rec(suffix: str, image, conv, task: str, modality: str = m, findings: Any = f, **extra):
        r = {"id": f"{cid}-{suffix}"}
        if image is not None:
            r["image"] = image
        r.update(conversations=conv, task=task, modality=modality)
        r.update(extra)
        r["findings"] = findings
        r["case_id"] = cid
        out.append(r)

    # captions: one per image
    for view, path in images.items():
        if view.startswith("older"):
            continue
        vf = case["prior"]["findings"] if view.startswith("prior") else f
        prompt = _CAPTION_PROMPTS[int(rng.integers(3))]
        rec(f"caption-{view.replace('_', '-')}", path,
            _conv("<image>\n" + prompt, caption_text(m, vf, view, int(rng.integers(3)))), "caption", findings=vf)

    if m == "cxr":
        report = report_text(f)
        pos = positive_findings(m, f)
        rec("report", main, _conv("<image>\nWrite the findings and impression for this chest radiograph.", report),
            "report", findings=pos)
        rec("multiview-report", [images["frontal"], images["lateral"]],
            _conv("<image>\n<image>\nThese are the frontal and lateral views of a chest radiograph. "
                  "Write the findings and impression.", report), "multiview_report", findings=pos)
        if case["prior"]:
            prior_f = case["prior"]["findings"]
            q = ("Prior study:\n<image>\nPrior report: " + report_text(prior_f).replace("\n", " ") +
                 "\nCurrent study:\n<image>\nHow has the nodule changed since the prior study?")
            rec("longitudinal", [images["prior_frontal"], images["frontal"]],
                _conv(q, CHANGE_SENTENCES[case["change"]]), "longitudinal", answer=case["change"],
                findings={"change": case["change"], "prior_nodule": prior_f["nodule"], "nodule": f["nodule"]})
            # the longitudinal report, laid out as MIMIC-CXR's longitudinal items: the prior frontal image and report,
            # then the current views; the report ends with the change (Figure 2's third setting)
            q = ("Prior study:\n<image>\nPrior report: " + report_text(prior_f).replace("\n", " ") +
                 "\nCurrent study:\n<image>\n<image>\nCompare with the prior study and write the findings and "
                 "impression of the current study.")
            rec("longitudinal-report", [images["prior_frontal"], images["frontal"], images["lateral"]],
                _conv(q, report_text(f) + "\nComparison: " + CHANGE_SENTENCES[case["change"]]),
                "longitudinal_report", answer=case["change"], findings=pos)

    # closed questions: every finding of the modality, asked whatever the answer
    for key in f:
        text, ans = _yn(f[key])
        rec(f"closed-{key.replace('_', '-')}", main, _conv("<image>\n" + _CLOSED[key], text), "closed", answer=ans)

    # open questions about a present finding
    if m == "cxr":
        if f["nodule"]:
            rec("open-nodule-side", main,
                _conv("<image>\nWhich side is the nodule on?", capitalized(f["nodule"]["side"]) + "."),
                "open", answer=f["nodule"]["side"])
            rec("open-nodule-size", main,
                _conv("<image>\nHow large is the nodule?", capitalized(f["nodule"]["size"]) + "."),
                "open", answer=f["nodule"]["size"])
        if f["effusion"]:
            rec("open-effusion-side", main,
                _conv("<image>\nWhich side is the pleural effusion on?", capitalized(f["effusion"]["side"]) + "."),
                "open", answer=f["effusion"]["side"])
    elif m == "mri" and f["brain_mass"]:
        s = f["brain_mass"]["side"]
        rec("open-mass-side", main, _conv("<image>\nWhich side is the mass on?", capitalized(s) + "."), "open",
            answer=s)
    elif m == "pathology":
        word = "tumor" if f["tumor"] else "normal"
        rec("open-tissue", main, _conv("<image>\nIs this tissue normal or tumor?", capitalized(word) + "."), "open",
            answer=word)

    # modality: asked as an open question or as a multiple choice, never both
    mod_name = MODALITY_NAMES[m]
    if not _asked_as_mcq(rng, MODALITY_SHARE[m]):
        rec("open-modality", main, _conv("<image>\nWhat is the imaging modality?", mod_name + "."), "open",
            answer=mod_name.lower())
    else:
        distract = [v for k, v in MODALITY_NAMES.items() if k != m]
        q, letter, options = _mcq(rng, "What is the imaging modality of this image?", mod_name, distract)
        rec("mcq-modality", main, _mcq_conv(q, letter, options), "mcq", answer=letter, options=options)
    finding_mcq = _finding_mcq(rng, f)
    if finding_mcq is not None:
        q, letter, options = finding_mcq
        rec("mcq-finding", main, _mcq_conv(q, letter, options), "mcq", answer=letter, options=options)

    # multiturn: 2-3 questions about the same image, follow-ups only where they make sense
    qa: list[tuple[str, str, str]] = []
    if m == "cxr":
        n_turns = int(rng.integers(2, 4))
        for key in [("nodule", "effusion", "cardiomegaly")[i] for i in rng.permutation(3)]:
            text, ans = _yn(f[key])
            qa.append((_CLOSED[key], text, ans))
            if f[key] and key in ("nodule", "effusion"):
                qa.append(("Which side is it on?", capitalized(f[key]["side"]) + ".", f[key]["side"]))
                if key == "nodule":
                    qa.append(("How large is it?", capitalized(f[key]["size"]) + ".", f[key]["size"]))
        qa = qa[:n_turns]
    else:
        key = next(iter(f))
        text, ans = _yn(f[key])
        qa = [("What is the imaging modality?", mod_name + ".", mod_name.lower()), (_CLOSED[key], text, ans)]
        if rng.random() < 0.5:
            qa.reverse()
        if m == "mri" and f["brain_mass"]:
            qa.append(("Which side is it on?", capitalized(f["brain_mass"]["side"]) + ".", f["brain_mass"]["side"]))
    turns = []
    for i, (q, a, _) in enumerate(qa):
        turns += [("<image>\n" if i == 0 else "") + q, a]
    rec("multiturn", main, _conv(*turns), "multiturn", answers=[x[2] for x in qa])

    if rng.random() < _P_TEXT_QA:
        q, a = TEXT_QA[int(rng.integers(len(TEXT_QA)))]
        rec("text-qa", None, _conv(q, a), "text_qa", modality="text", findings={})

    if m == "cxr" and case["prior"]:
        rec("series-report", *_series(case, images), "series_report", answer=case["change"],
            findings=positive_findings(m, f))
    return out


def _series(case: dict[str, Any], images: dict[str, str]) -> tuple[list[str], list[dict[str, str]]]:
    """A patient's studies, oldest first, each with its images and report; the current one to report on."""
    prior = report_text(case["prior"]["findings"]).replace("\n", " ")
    older = sorted(v for v in images if v.startswith("older"))
    studies = [(f"Study {k + 1} (frontal view):\n<image>\nReport: {prior}", [images[v]]) for k, v in enumerate(older)]
    studies.append((f"Study {len(older) + 1} (frontal and lateral views):\n<image>\n<image>\nReport: {prior}",
                    [images["prior_frontal"], images["prior_lateral"]]))
    question = ("These are a patient's chest radiographs, oldest first, with their reports.\n\n"
                + "\n\n".join(text for text, _ in studies)
                + "\n\nCurrent study (frontal and lateral views):\n<image>\n<image>\n"
                "Write the findings and impression of the current study, comparing it with the last prior study.")
    answer = report_text(case["findings"]) + "\nComparison: " + CHANGE_SENTENCES[case["change"]]
    paths = [p for _, ps in studies for p in ps] + [images["frontal"], images["lateral"]]
    return paths, _conv(question, answer)
