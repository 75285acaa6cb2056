"""MIMIC-CXR: chest X-ray studies -> single-view, multi-view and longitudinal report samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medgpt_oss.data.sources.base import Skip, Source, SourceRecord, file_names, text, turns
from medgpt_oss.data.report_text import report_section

FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL")
PROMPT = "Write the {section} section of the radiology report for this chest X-ray."
MULTIVIEW_PROMPT = ("These are the frontal and lateral views of a chest X-ray. "
                    "Write the {section} section of the radiology report.")
TASKS = ("report", "multiview_report", "longitudinal")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}


@dataclass
class Study:
    study_id: str
    subject_id: str
    split: str
    report: str | None                 # the chosen section, whitespace-normalised
    views: list[tuple[str, Path]] = field(default_factory=list)   # (ViewPosition, image)
    when: tuple[str, float] | None = None                           # (StudyDate, StudyTime)

    def frontal(self) -> Path | None:
        # PA before AP: PA is the standard erect view, AP the bedside one
        for position in FRONTAL:
            for view, path in self.views:
                if view == position:
                    return path
        return None

    def lateral(self) -> Path | None:
        return next((p for v, p in self.views if v in LATERAL), None)


class _StudySamples(Source):
    """Studies -> samples; subclasses only read their files into :class:`Study` objects."""

    def __init__(self, root: str | Path, section: str = "findings", tasks: list[str] | tuple[str, ...] = TASKS,
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        if section not in ("findings", "impression"):
            raise ValueError(f"source.section must be findings or impression, not {section!r}")
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"source.tasks: unknown {sorted(unknown)}; choose from {list(TASKS)}")
        self.section, self.tasks = section, tuple(tasks)

    def studies(self) -> list[Study]:
        raise NotImplementedError

    def records(self) -> Iterator[SourceRecord | Skip]:
        self.study_skips: list[Skip] = []  # records studies() could not read (named; counted by prepare)
        studies = self.studies()
        yield from self.study_skips
        priors = self._priors(studies) if "longitudinal" in self.tasks else {}
        for s in studies:
            rid, meta = f"{self.name}-s{s.study_id}", {"study_id": s.study_id, "subject_id": s.subject_id}
            if not s.report:
                yield Skip(rid, "no_report_section", f"the report has no {self.section.upper()} section",
                           "choose source.section=impression, or nothing: MIMIC-CXR reports often lack one", s.split,
                           expected=True)
                continue
            frontal, lateral = s.frontal(), s.lateral()
            if frontal is None:
                yield Skip(rid, "no_frontal_view", f"views {[v for v, _ in s.views]} hold no PA/AP image", "",
                           s.split, expected=True)
                continue
            prompt = PROMPT.format(section=self.section)
            if "report" in self.tasks:
                yield SourceRecord(f"{rid}-report", "report", s.split, turns(f"<image>\n{prompt}", s.report),
                                   [frontal], {**meta, "views": ["frontal"]})
            if "multiview_report" in self.tasks and lateral is not None:
                multiview = "<image>\n<image>\n" + MULTIVIEW_PROMPT.format(section=self.section)
                yield SourceRecord(f"{rid}-multiview", "multiview_report", s.split, turns(multiview, s.report),
                                   [frontal, lateral], {**meta, "views": ["frontal", "lateral"]})
            prior = priors.get(s.study_id)
            if prior is not None:
                question = ("Prior study:\n<image>\nPrior report: " + prior.report + "\nCurrent study:\n<image>\n"
                            + prompt)
                yield SourceRecord(f"{rid}-longitudinal", "longitudinal", s.split, turns(question, s.report),
                                   [prior.frontal(), frontal], {**meta, "prior_study_id": prior.study_id,
                                                                "prior_date": prior.when[0], "date": s.when[0]})

    @staticmethod
    def _priors(studies: list[Study]) -> dict[str, Study]:
        """study_id -> the same subject's latest earlier study that has a frontal image and a report."""
        by_subject: dict[str, list[Study]] = defaultdict(list)
        for s in studies:
            if s.when is not None and s.subject_id:
                by_subject[s.subject_id].append(s)
        priors = {}
        for group in by_subject.values():
            group.sort(key=lambda s: s.when)
            usable = None
            for s in group:
                if usable is not None:
                    priors[s.study_id] = usable
                if s.report and s.frontal() is not None:
                    usable = s
        return priors

    def _read_order(self, metadata: Path) -> tuple[dict[str, tuple[str, float]], dict[str, list[dict[str, str]]]]:
        """From mimic-cxr-2.0.0-metadata.csv: study -> (StudyDate, StudyTime), study -> its image rows."""
        when, rows = {}, defaultdict(list)
        for row in self.read_csv(metadata):
            study = (row.get("study_id") or "").strip()
            if not study:
                continue  # an image row of no study belongs to no sample
            try:  # a study without a readable date and time has no place in its subject's order (no prior)
                when[study] = ((row.get("StudyDate") or "").strip(), float(row.get("StudyTime") or 0))
            except ValueError:
                pass
            rows[study].append(row)
        return when, rows


class MIMICCXR(_StudySamples):
    """Reads the official PhysioNet MIMIC-CXR(-JPG) files.

    - ``mimic-cxr-2.0.0-metadata.csv``: ``dicom_id, subject_id, study_id, ViewPosition,
      StudyDate, StudyTime, ...`` -- one row per image; groups images into studies
      and orders each subject's studies.
    - ``mimic-cxr-2.0.0-split.csv`` (optional): ``dicom_id, study_id, subject_id,
      split train|validate|test``; without it every study is ``train``.
    - reports ``files/pXX/p<subject>/s<study>.txt`` (mimic-cxr-reports.zip); the
      ``FINDINGS:`` (or ``IMPRESSION:``, ``section=``) body is the target.
    - images ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` (MIMIC-CXR-JPG) or
      ``.dcm`` (MIMIC-CXR, rendered to PNG by prepare).

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

    def _image(self, subject: str, study: str, dicom_id: str) -> Path:
        folder = self.root / self.images_dir / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for ext in self.image_exts:
            if (folder / f"{dicom_id}{ext}").exists():
                return folder / f"{dicom_id}{ext}"
        return folder / f"{dicom_id}{self.image_exts[0]}"  # missing: prepare reports it by record id

    def studies(self) -> list[Study]:
        when, rows = self._read_order(self.require("mimic-cxr-2.0.0-metadata.csv"))
        split_of: dict[str, str] = {}
        if (self.root / "mimic-cxr-2.0.0-split.csv").is_file():
            for row in self.read_csv(self.root / "mimic-cxr-2.0.0-split.csv"):
                split = (row.get("split") or "").strip()
                split_of[(row.get("study_id") or "").strip()] = SPLIT_NAMES.get(split, split)
        self.require(self.reports_dir)
        studies = []
        for study_id, images in rows.items():
            subject = (images[0].get("subject_id") or "").strip()
            path = self.root / self.reports_dir / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}.txt"
            text = path.read_bytes().decode("utf-8", "surrogateescape") if subject and path.is_file() else ""
            # Image rows without a dicom_id name no file; without a ViewPosition the view is unknown ("").
            views = [((r.get("ViewPosition") or "").strip().upper(),
                      self._image(subject, study_id, (r.get("dicom_id") or "").strip()))
                     for r in images if (r.get("dicom_id") or "").strip()]
            studies.append(Study(study_id, subject, split_of.get(study_id, "train"),
                                 report_section(text, self.section), views, when.get(study_id)))
        return studies


class MIMICCXRR2Gen(_StudySamples):
    """Reads an R2Gen-style MIMIC-CXR ``annotation.json`` and ``images/<image_path>``.

    ``{train, val, test: [{id, study_id, subject_id, report (= findings), image_path
    [...], view [PA/AP/LATERAL...] (optional), split}]}`` (R2Gen, ICon, ...). Without
    ``view`` the first image is taken as frontal and the second as lateral. The
    ``report`` field is the target whatever ``section`` says. Longitudinal samples
    need the official ``mimic-cxr-2.0.0-metadata.csv`` next to it for the dates.
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

    def studies(self) -> list[Study]:
        data = self.read_json(self.require("annotation.json"))
        image_dir = self.require(self.image_dir)
        metadata = self.root / "mimic-cxr-2.0.0-metadata.csv"
        if "longitudinal" in self.tasks and not metadata.is_file():
            raise self.layout_error("longitudinal samples need mimic-cxr-2.0.0-metadata.csv "
                                    "(or drop them: source.tasks=[report,multiview_report])")
        when = self._read_order(metadata)[0] if metadata.is_file() else {}
        if not isinstance(data, dict):
            raise self.layout_error("annotation.json must hold {train, val, test: [records]}")

        def study_id(rec: dict) -> object:  # a study id of 0 is an id
            return rec["study_id"] if rec.get("study_id") is not None else rec.get("id")

        def study(split: str, rec: dict) -> Iterator[Study]:
            sid = str(study_id(rec))
            paths = file_names(rec, "image_path") if rec.get("image_path") else []
            views = [str(v).upper() for v in rec.get("view") or []] or ["PA", "LATERAL"][: len(paths)]
            report = text(rec, "report", optional=True)
            subject = rec.get("subject_id")
            # Without a subject id a study has no prior: "None" would make one patient of every such study.
            yield Study(sid, str(subject) if subject is not None else "", SPLIT_NAMES.get(split, split),
                        " ".join(report.split()) if report else None,
                        [(v, image_dir / p) for v, p in zip(views, paths)], when.get(sid))

        studies = []
        for split, recs in data.items():
            entries = ((f"annotation.json[{split}][{i}]", rec) for i, rec in enumerate(recs if isinstance(recs, list)
                                                                                     else [recs]))
            for item in self.each(SPLIT_NAMES.get(split, split), entries,
                                  lambda rid, rec, split=split: study(split, rec),
                                  record_id=study_id):
                (self.study_skips if isinstance(item, Skip) else studies).append(item)
        return studies
