"""IU X-ray (Open-i, Indiana University chest X-rays): reports from frontal + lateral views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.reports import R2GenAnnotation
from medgpt_oss.data.sources.base import Source, SourceRecord, stable_split, turns

MULTIVIEW_PROMPT = ("These are the frontal and lateral views of a chest X-ray. "
                    "Write the findings section of the radiology report.")
SINGLE_PROMPT = "Write the findings section of the radiology report for this chest X-ray."


def report_record(rid: str, split: str, images: list[Path], report: str, meta: dict) -> SourceRecord:
    """Two or more views -> ``multiview_report`` with one <image> per view; one view -> ``report``."""
    task, prompt = ("multiview_report", MULTIVIEW_PROMPT) if len(images) > 1 else ("report", SINGLE_PROMPT)
    return SourceRecord(rid, task, split, turns("<image>\n" * len(images) + prompt, " ".join(report.split())),
                        images, meta)


class IUXrayR2Gen(Source):
    """R2Gen's ``annotation.json`` and ``images/<id>/<0|1>.png``, read by
    :class:`~medgpt_oss.data.published.reports.R2GenAnnotation`: the 2,069 / 296 / 590 split every
    report-generation paper uses. A study with an empty report is a counted skip (``empty_findings``).
    """

    name = "iu_xray"
    layout = """annotation.json   {train, val, test: [{id, report, image_path [...], split}]}
images/<image_path>"""
    origin = "R2Gen's iu_xray release (github.com/zhjohnchan/R2Gen, annotation.json + images)"

    def __init__(self, root: str | Path, image_dir: str = "images", allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.image_dir = image_dir

    def records(self) -> Iterator[SourceRecord | Skip]:
        for study in R2GenAnnotation(self, self.image_dir).studies(f"{self.name}-"):
            if isinstance(study, Skip):
                yield study
            elif not study.report:
                yield Skip(study.id, "empty_findings", "empty or missing report", "IU X-ray has studies without "
                           "findings; nothing to fix unless you expected one", study.split, expected=True)
            elif not study.images:
                yield Skip(study.id, "missing_field", "no image_path", "", study.split)
            else:
                yield report_record(study.id, study.split, [self.root / p for p in study.images], study.report,
                                    {"study": study.study_id})


class IUXrayKaggle(Source):
    """Reads the Kaggle release: ``indiana_reports.csv`` + ``indiana_projections.csv`` + PNG images.

    ``indiana_reports.csv``: ``uid, MeSH, Problems, image, indication, comparison,
    findings, impression``; ``indiana_projections.csv``: ``uid, filename,
    projection Frontal|Lateral`` (one row per image, 1-several per study);
    images ``images/images_normalized/<filename>``. The target is the findings
    section (``with_impression`` appends "Impression: ..."); empty findings are
    a counted skip. Views are ordered frontal first. The release has no split:
    ``val_fraction``/``test_fraction`` assign one deterministically by uid.
    """

    name = "iu_xray_kaggle"
    layout = """indiana_reports.csv       uid,MeSH,Problems,image,indication,comparison,findings,impression
indiana_projections.csv   uid,filename,projection
images/images_normalized/<filename>"""
    origin = "https://www.kaggle.com/datasets/raddar/chest-xrays-indiana-university"

    def __init__(self, root: str | Path, image_dir: str = "images/images_normalized", with_impression: bool = False,
                 val_fraction: float = 0.0, test_fraction: float = 0.0, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.image_dir, self.with_impression = image_dir, with_impression
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def records(self) -> Iterator[SourceRecord | Skip]:
        views: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for row in self.read_csv(self.require("indiana_projections.csv")):
            uid, filename = (row.get("uid") or "").strip(), (row.get("filename") or "").strip()
            if uid and filename:  # a row naming no study or no file adds no view (its study reports it if empty)
                views[uid].append(((row.get("projection") or "").strip().lower(), filename))
        image_dir = self.require(self.image_dir)
        for i, row in enumerate(self.read_csv(self.require("indiana_reports.csv"))):
            uid = (row.get("uid") or "").strip()
            if not uid:
                yield Skip(f"iu_xray-row{i + 1}", "missing_field", f"indiana_reports.csv row {i + 1} has no uid", "")
                continue
            rid, split = f"iu_xray-{uid}", stable_split(uid, self.val_fraction, self.test_fraction)
            findings, impression = (row.get("findings") or "").strip(), (row.get("impression") or "").strip()
            study = sorted(views.get(uid, []), key=lambda v: v[0] != "frontal")  # stable: frontal views first
            if not findings:
                yield Skip(rid, "empty_findings", "the findings column is empty", "IU X-ray has studies without "
                           "findings; nothing to fix unless you expected one", split, expected=True)
            elif not study:
                yield Skip(rid, "missing_field", "no row in indiana_projections.csv", "", split)
            else:
                report = findings + (f" Impression: {impression}" if self.with_impression and impression else "")
                yield report_record(rid, split, [image_dir / f for _, f in study], report,
                                    {"uid": uid, "projections": [p for p, _ in study], "mesh": row.get("MeSH")})
