"""Report generation: MIMIC-CXR (findings, impression, multi-view, longitudinal) and IU X-ray.

Both read R2Gen-style ``annotation.json`` files ({train, val, test: [{id,
image_path[], report, ...}]}), the split every report-generation paper uses.
MIMIC-CXR's impression section and its study dates (for the prior study of a
longitudinal item) come from the official PhysioNet files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from typing import Any

from medgpt_oss.data.report_text import report_section  # one parser for training and evaluation
from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem

FINDINGS_PROMPT = "Write the findings section of the radiology report for this chest X-ray."


class IUXray(Benchmark):
    layout = """annotation.json              R2Gen split: {train, val, test: [{id, report,
                                           image_path [frontal, lateral], split}]}
images/<image_path>          e.g. images/CXR2384_IM-0942/0.png"""
    origin = "R2Gen's iu_xray release (annotation.json + images), built from Open-i (openi.nlm.nih.gov)"

    def __init__(self, root: str, split: str = "test", views: str = "all",
                 question: str = "These are the frontal and lateral views of a chest X-ray. "
                                 "Write the findings section of the radiology report.", **kw: Any) -> None:
        super().__init__(root, **kw)
        self.split, self.views, self.question = split, views, question

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require("annotation.json"))
        self.require("images")
        if self.split not in data:
            raise self.layout_error(f"annotation.json has splits {sorted(data)}, not '{self.split}'")
        for i, rec in enumerate(data[self.split]):
            item_id = f"{self.name}-{rec.get('id', i)}"
            report, paths = rec.get("report"), rec.get("image_path") or []
            if not isinstance(report, str) or not report.strip():
                yield MalformedItem(item_id, "empty or missing report")  # some IU studies have no findings
                continue
            if not paths:
                yield MalformedItem(item_id, "no image_path")
                continue
            images = [f"images/{p}" for p in (paths if self.views == "all" else paths[:1])]
            yield EvalItem(item_id, "report", self.question, report.strip(), images=images)


class MIMICCXR(Benchmark):
    layout = """annotation.json              R2Gen-style split: {train, val, test: [{id, study_id, subject_id, report
                             (= findings), image_path [...], view [PA/AP/LATERAL...] (optional), split}]}
images/<image_path>
files/pXX/pNNN/sMMM.txt      official free-text reports (section=impression only)
mimic-cxr-2.0.0-metadata.csv official metadata: dicom_id, subject_id, study_id, ViewPosition, StudyDate,
                             StudyTime (with_prior=true only: orders each patient's studies)"""
    origin = "https://physionet.org/content/mimic-cxr-jpg/ (credentialed) + R2Gen's mimic_cxr annotation.json"

    def __init__(self, root: str, split: str = "test", section: str = "findings", views: str = "frontal",
                 with_prior: bool = False, question: str = FINDINGS_PROMPT, **kw: Any) -> None:
        super().__init__(root, **kw)
        if section not in ("findings", "impression") or views not in ("frontal", "all"):
            raise ValueError("section must be findings|impression and views frontal|all")
        self.split, self.section, self.views = split, section, views
        self.with_prior, self.question = with_prior, question

    def _images(self, rec: dict[str, Any], views: str | None = None) -> list[str]:
        paths = list(rec.get("image_path") or [])
        if (views or self.views) == "all" or not paths:
            return [f"images/{p}" for p in paths]
        views = [str(v).upper() for v in rec.get("view") or []]
        frontal = [p for p, v in zip(paths, views) if v in ("PA", "AP")]
        return [f"images/{(frontal or paths)[0]}"]

    def _gold(self, rec: dict[str, Any]) -> str | None:
        if self.section == "findings":
            return rec.get("report")
        subject, study = str(rec.get("subject_id", "")), str(rec.get("study_id", ""))
        path = self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        return report_section(path.read_text(), "impression") if path.is_file() else None

    def _study_order(self) -> dict[str, tuple[str, str, str]]:
        """study_id -> (subject_id, StudyDate, StudyTime) from the official metadata."""
        path = self.require("mimic-cxr-2.0.0-metadata.csv")
        order = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                order[str(row["study_id"])] = (str(row["subject_id"]), row["StudyDate"], row["StudyTime"])
        return order

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require("annotation.json"))
        self.require("images")
        if self.section == "impression":
            self.require("files")
        if self.split not in data:
            raise self.layout_error(f"annotation.json has splits {sorted(data)}, not '{self.split}'")
        priors = self._priors(data) if self.with_prior else {}
        for i, rec in enumerate(data[self.split]):
            study = rec.get("study_id")
            item_id = f"{self.name}-{study if study is not None else rec.get('id', i)}"  # a study id of 0 is an id
            gold, images = self._gold(rec), self._images(rec)
            if not gold or not images:
                yield MalformedItem(item_id, f"no {self.section} text" if not gold else "no image_path")
                continue
            question = self.question
            if self.with_prior:
                prior = priors.get(str(rec.get("study_id")))
                if prior is None:
                    continue  # longitudinal evaluation covers studies that have a prior study only
                question = ("Prior study:\n<image>\nPrior report: " + " ".join(str(prior.get("report", "")).split())
                            + "\nCurrent study:\n" + "<image>\n" * len(images) + self.question)
                images = self._images(prior, views="frontal") + images  # the prior's frontal view
            yield EvalItem(item_id, "report", question, " ".join(gold.split()), images=images)

    def _priors(self, data: dict[str, Sequence[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """study_id -> the same patient's previous study (from any split), by StudyDate/StudyTime."""
        order = self._study_order()
        by_subject: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for recs in data.values():
            for rec in recs:
                meta = order.get(str(rec.get("study_id")))
                if meta:
                    by_subject.setdefault(meta[0], []).append((meta[1], meta[2], rec))
        priors = {}
        for studies in by_subject.values():
            studies.sort(key=lambda s: (s[0], s[1]))
            for (_, _, prev), (_, _, cur) in zip(studies, studies[1:]):
                priors[str(cur.get("study_id"))] = prev
        return priors
