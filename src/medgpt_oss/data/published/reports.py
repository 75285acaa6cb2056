"""Chest X-ray report data sets as published: R2Gen's ``annotation.json`` (IU X-ray, MIMIC-CXR) and
MIMIC-CXR's official PhysioNet files.

Every reader yields :class:`Study` records: a study's report, its images with their view positions and,
from MIMIC-CXR's metadata, its date -- which orders a patient's studies (:func:`priors`). Quirks handled
here, once: R2Gen lists a study's images frontal first, then lateral, when it names no views; MIMIC-CXR's
split file says ``validate`` for ``val``; its free-text reports are cut into sections by
:func:`~medgpt_oss.data.report_text.report_section`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.published.layout import PublishedLayout, Skip, file_names, image_path, text
from medgpt_oss.data.report_text import report_section

ANNOTATION = "annotation.json"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL")
R2GEN_VIEWS = ("PA", "LATERAL")  # R2Gen's image order when a record names no views


@dataclass
class Study:
    """One chest X-ray study: its report and its images."""

    id: str                      # the reader's prefix + the study's id (what a skip or an item is named by)
    study_id: str                # R2Gen: study_id, else id
    subject_id: str              # "" when unknown: such a study has no prior
    split: str                   # train | val | test
    report: str | None           # whitespace-normalised; None when empty or absent
    images: list[str] = field(default_factory=list)  # relative to the root, in the published order
    views: list[str] = field(default_factory=list)   # the view position (PA, AP, LATERAL, ...) of each image
    when: tuple[str, float] | None = None             # (StudyDate, StudyTime), from MIMIC-CXR's metadata

    def frontal(self) -> str | None:
        # PA before AP: PA is the standard erect view, AP the bedside one
        for position in FRONTAL:
            for view, image in zip(self.views, self.images):
                if view == position:
                    return image
        return None

    def lateral(self) -> str | None:
        return next((image for view, image in zip(self.views, self.images) if view in LATERAL), None)


def study_id(rec: dict[str, Any]) -> Any:
    """An R2Gen record's study id: ``study_id`` (MIMIC-CXR; 0 is an id), else ``id`` (IU X-ray)."""
    return rec["study_id"] if rec.get("study_id") is not None else rec.get("id")


class R2GenAnnotation:
    """R2Gen's ``annotation.json``: ``{train, val, test: [{id, report, image_path [...], split}]}``; MIMIC-CXR's
    records add ``study_id``, ``subject_id`` and, in some releases, ``view`` [PA/AP/LATERAL...]. ``report`` is
    the findings section. Images are under ``image_dir``."""

    def __init__(self, files: PublishedLayout, image_dir: str = "images") -> None:
        path = files.require(ANNOTATION)
        self.data = files.read_json(path)
        if not isinstance(self.data, dict):
            raise files.layout_error(f"'{path}' must hold {{train, val, test: [records]}}")
        self.files, self.image_dir = files, files.require_folder(image_dir)

    @property
    def splits(self) -> list[str]:
        """The splits as the file names them."""
        return list(self.data)

    def studies(self, id_prefix: str, when: Mapping[str, tuple[str, float]] | None = None,
                splits: Collection[str] | None = None) -> Iterator[Study | Skip]:
        """Every study of ``splits`` (default all), in the file's order, with its date from ``when``."""
        for split, recs in self.data.items():
            if splits is not None and split not in splits:
                continue
            entries = ((f"{ANNOTATION}[{split}][{i}]", rec)
                       for i, rec in enumerate(recs if isinstance(recs, list) else [recs]))
            yield from self.files.each(SPLIT_NAMES.get(split, split), entries,
                                       lambda rid, rec, split=split: self._study(rid, rec, split, when or {}),
                                       record_id=study_id, id_prefix=id_prefix)

    def _study(self, rid: str, rec: dict[str, Any], split: str,
               when: Mapping[str, tuple[str, float]]) -> Iterator[Study]:
        sid = study_id(rec)
        sid = "" if sid is None else str(sid)
        paths = file_names(rec, "image_path") if rec.get("image_path") else []
        views = [str(v).upper() for v in rec.get("view") or []] or list(R2GEN_VIEWS[: len(paths)])
        report = text(rec, "report", optional=True)
        subject = rec.get("subject_id")
        # Without a subject id a study has no prior: "None" would make one patient of every such study.
        yield Study(rid, sid, str(subject) if subject is not None else "", SPLIT_NAMES.get(split, split),
                    " ".join(report.split()) if report else None,
                    [image_path(self.image_dir, p) for p in paths], views, when.get(sid))


def read_study_times(files: PublishedLayout, metadata: Path) -> tuple[dict[str, tuple[str, float]],
                                                                      dict[str, list[dict[str, str]]]]:
    """From ``mimic-cxr-2.0.0-metadata.csv``: study -> (StudyDate, StudyTime), study -> its image rows."""
    when, rows = {}, defaultdict(list)
    for row in files.read_csv(metadata):
        study = (row.get("study_id") or "").strip()
        if not study:
            continue  # an image row of no study belongs to no sample
        try:  # a study without a readable date and time has no place in its subject's order (no prior)
            when[study] = ((row.get("StudyDate") or "").strip(), float(row.get("StudyTime") or 0))
        except ValueError:
            pass
        rows[study].append(row)
    return when, rows


def mimic_report(files: PublishedLayout, reports_dir: str, subject: str, study: str, section: str) -> str | None:
    """The ``section`` (findings | impression) of a study's free-text report ``<reports_dir>/pXX/p<subject>/
    s<study>.txt``, whitespace-normalised; None when the file or the section is not there. Ids are data: one
    that is not a plain name (``../..``) names no report, so it never leads the reader out of the root."""
    if not subject or any(sep in subject + study for sep in ("/", "\\")):
        return None
    path = files.root / reports_dir / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
    if not path.is_file():
        return None
    return report_section(path.read_bytes().decode("utf-8", "surrogateescape"), section)


def read_mimic_cxr(files: PublishedLayout, section: str, reports_dir: str = "files", images_dir: str = "files",
                   image_exts: Sequence[str] = (".jpg", ".dcm"), id_prefix: str = "mimic_cxr-") -> list[Study]:
    """MIMIC-CXR(-JPG)'s official files: ``mimic-cxr-2.0.0-metadata.csv`` (one row per image: dicom_id,
    subject_id, study_id, ViewPosition, StudyDate, StudyTime) groups images into studies; the optional
    ``mimic-cxr-2.0.0-split.csv`` gives each study's split (without it: train); reports are
    ``<reports_dir>/pXX/p<subject>/s<study>.txt``, images ``<images_dir>/pXX/p<subject>/s<study>/<dicom_id>``
    with the first of ``image_exts`` that exists."""
    when, rows = read_study_times(files, files.require(METADATA))
    split_of: dict[str, str] = {}
    if (files.root / SPLIT_FILE).is_file():
        for row in files.read_csv(files.root / SPLIT_FILE):
            split = (row.get("split") or "").strip()
            split_of[(row.get("study_id") or "").strip()] = SPLIT_NAMES.get(split, split)
    files.require(reports_dir)
    studies = []
    for study, images in rows.items():
        subject = (images[0].get("subject_id") or "").strip()
        # Image rows without a dicom_id name no file; without a ViewPosition the view is unknown ("").
        views = [((r.get("ViewPosition") or "").strip().upper(), (r.get("dicom_id") or "").strip())
                 for r in images if (r.get("dicom_id") or "").strip()]
        folder = f"{images_dir}/p{subject[:2]}/p{subject}/s{study}"  # prepare refuses an image outside the root
        studies.append(Study(f"{id_prefix}{study}", study, subject, split_of.get(study, "train"),
                             mimic_report(files, reports_dir, subject, study, section),
                             [_image(files.root, folder, dicom_id, image_exts) for _, dicom_id in views],
                             [view for view, _ in views], when.get(study)))
    return studies


def _image(root: Path, folder: str, dicom_id: str, exts: Sequence[str]) -> str:
    for ext in exts:
        if (root / folder / f"{dicom_id}{ext}").exists():
            return image_path(folder, f"{dicom_id}{ext}")
    return image_path(folder, f"{dicom_id}{exts[0]}")  # missing: prepare reports it by record id


def priors(studies: Iterable[Study]) -> dict[str, Study]:
    """study_id -> the same subject's latest earlier study (by StudyDate, StudyTime) that has a frontal image
    and a report: what a longitudinal sample or item shows as the prior study."""
    by_subject: dict[str, list[Study]] = defaultdict(list)
    for s in studies:
        if s.when is not None and s.subject_id:
            by_subject[s.subject_id].append(s)
    found = {}
    for group in by_subject.values():
        group.sort(key=lambda s: s.when)
        usable = None
        for s in group:
            if usable is not None:
                found[s.study_id] = usable
            if s.report and s.frontal() is not None:
                usable = s
    return found
