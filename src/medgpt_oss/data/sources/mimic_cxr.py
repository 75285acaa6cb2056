"""MIMIC-CXR: chest X-ray studies -> single-view, multi-view and longitudinal report samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.reports import METADATA, R2GenAnnotation, Study, priors, read_mimic_cxr, read_study_times
from medgpt_oss.data.sources.base import Source, SourceRecord, turns

PROMPT = "Write the {section} section of the radiology report for this chest X-ray."
MULTIVIEW_PROMPT = ("These are the frontal and lateral views of a chest X-ray. "
                    "Write the {section} section of the radiology report.")
TASKS = ("report", "multiview_report", "longitudinal")


class _StudySamples(Source):
    """Studies -> samples; subclasses only read their files into :class:`Study` records."""

    def __init__(self, root: str | Path, section: str = "findings", tasks: list[str] | tuple[str, ...] = TASKS,
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        if section not in ("findings", "impression"):
            raise ValueError(f"source.section must be findings or impression, not {section!r}")
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"source.tasks: unknown {sorted(unknown)}; choose from {list(TASKS)}")
        self.section, self.tasks = section, tuple(tasks)

    def studies(self) -> list[Study | Skip]:
        raise NotImplementedError

    def records(self) -> Iterator[SourceRecord | Skip]:
        read = self.studies()
        yield from (s for s in read if isinstance(s, Skip))  # records the reader could not read (named; counted)
        studies = [s for s in read if isinstance(s, Study)]
        prior_of = priors(studies) if "longitudinal" in self.tasks else {}
        for s in studies:
            rid, meta = f"{self.name}-s{s.study_id}", {"study_id": s.study_id, "subject_id": s.subject_id}
            if not s.report:
                yield Skip(rid, "no_report_section", f"the report has no {self.section.upper()} section",
                           "choose source.section=impression, or nothing: MIMIC-CXR reports often lack one", s.split,
                           expected=True)
                continue
            frontal, lateral = s.frontal(), s.lateral()
            if frontal is None:
                yield Skip(rid, "no_frontal_view", f"views {s.views} hold no PA/AP image", "", s.split, expected=True)
                continue
            prompt = PROMPT.format(section=self.section)
            if "report" in self.tasks:
                yield SourceRecord(f"{rid}-report", "report", s.split, turns(f"<image>\n{prompt}", s.report),
                                   [self.root / frontal], {**meta, "views": ["frontal"]})
            if "multiview_report" in self.tasks and lateral is not None:
                multiview = "<image>\n<image>\n" + MULTIVIEW_PROMPT.format(section=self.section)
                yield SourceRecord(f"{rid}-multiview", "multiview_report", s.split, turns(multiview, s.report),
                                   [self.root / frontal, self.root / lateral],
                                   {**meta, "views": ["frontal", "lateral"]})
            prior = prior_of.get(s.study_id)
            if prior is not None:
                question = ("Prior study:\n<image>\nPrior report: " + prior.report + "\nCurrent study:\n<image>\n"
                            + prompt)
                yield SourceRecord(f"{rid}-longitudinal", "longitudinal", s.split, turns(question, s.report),
                                   [self.root / prior.frontal(), self.root / frontal],
                                   {**meta, "prior_study_id": prior.study_id, "prior_date": prior.when[0],
                                    "date": s.when[0]})


class MIMICCXR(_StudySamples):
    """The official PhysioNet MIMIC-CXR(-JPG) files, read by
    :func:`~medgpt_oss.data.published.reports.read_mimic_cxr`: the metadata CSV groups images into studies
    and orders each subject's studies, the optional split CSV gives splits (else train), the ``FINDINGS:``
    (or ``IMPRESSION:``, ``section=``) body of ``files/pXX/p<subject>/s<study>.txt`` is the target; images
    ``.jpg`` (MIMIC-CXR-JPG) or ``.dcm`` (MIMIC-CXR, rendered to PNG by prepare).

    Samples per study (``tasks``): ``report`` (the PA, else AP image),
    ``multiview_report`` (frontal + lateral, when the study has both) and
    ``longitudinal`` (the subject's previous study by StudyDate/StudyTime: its
    frontal image and report, then the current frontal image -> current report).
    Studies without the section or without a frontal view are counted skips.
    """

    name = "mimic_cxr"
    layout = """mimic-cxr-2.0.0-metadata.csv   dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime,...
mimic-cxr-2.0.0-split.csv      (optional) dicom_id,study_id,subject_id,split
files/pXX/p<subject>/s<study>.txt            reports
files/pXX/p<subject>/s<study>/<dicom_id>.jpg images (or .dcm)"""
    origin = "https://physionet.org/content/mimic-cxr-jpg/ and /mimic-cxr/ (credentialed access)"

    def __init__(self, root: str | Path, reports_dir: str = "files", images_dir: str = "files",
                 image_exts: tuple[str, ...] | list[str] = (".jpg", ".dcm"), **kw) -> None:
        super().__init__(root, **kw)
        self.reports_dir, self.images_dir, self.image_exts = reports_dir, images_dir, tuple(image_exts)

    def studies(self) -> list[Study | Skip]:
        return read_mimic_cxr(self, self.section, self.reports_dir, self.images_dir, self.image_exts,
                              f"{self.name}-")


class MIMICCXRR2Gen(_StudySamples):
    """An R2Gen-style MIMIC-CXR ``annotation.json`` and ``images/<image_path>``, read by
    :class:`~medgpt_oss.data.published.reports.R2GenAnnotation` (R2Gen, ICon, ...). Without ``view`` the
    first image is taken as frontal and the second as lateral. The ``report`` field is the target whatever
    ``section`` says. Longitudinal samples need the official ``mimic-cxr-2.0.0-metadata.csv`` next to it
    for the dates.
    """

    name = "mimic_cxr"
    layout = """annotation.json                {train, val, test: [{id, study_id, subject_id, report, image_path,
                                                      view?}]}
images/<image_path>
mimic-cxr-2.0.0-metadata.csv   (for longitudinal samples) StudyDate, StudyTime per study"""
    origin = "R2Gen's mimic_cxr annotation.json (github.com/zhjohnchan/R2Gen) + physionet.org/content/mimic-cxr-jpg/"

    def __init__(self, root: str | Path, image_dir: str = "images", **kw) -> None:
        super().__init__(root, **kw)
        self.image_dir = image_dir

    def studies(self) -> list[Study | Skip]:
        annotation = R2GenAnnotation(self, self.image_dir)
        metadata = self.root / METADATA
        if "longitudinal" in self.tasks and not metadata.is_file():
            raise self.layout_error("longitudinal samples need mimic-cxr-2.0.0-metadata.csv "
                                    "(or drop them: source.tasks=[report,multiview_report])")
        when = read_study_times(self, metadata)[0] if metadata.is_file() else {}
        return list(annotation.studies(f"{self.name}-", when))
