"""Report generation: MIMIC-CXR (findings, impression, multi-view, longitudinal) and IU X-ray.

Both read R2Gen-style ``annotation.json`` files ({train, val, test: [{id, image_path[], report, ...}]}),
the split every report-generation paper uses, with the readers of ``data/published/reports.py`` -- the
same as the training sources. MIMIC-CXR's impression section and its study dates (for the prior study of a
longitudinal item) come from the official PhysioNet files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from medgpt_oss.data.published.reports import (METADATA, SPLIT_NAMES, R2GenAnnotation, Study, mimic_report, priors,
                                               read_study_times)
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
        annotation = R2GenAnnotation(self)
        if self.split not in annotation.splits:
            raise self.layout_error(f"annotation.json has splits {sorted(annotation.splits)}, not '{self.split}'")
        yield from self.published_items(annotation.studies(f"{self.name}-", splits=[self.split]), self._item)

    def _item(self, study: Study) -> EvalItem | MalformedItem:
        if not study.report:
            return MalformedItem(study.id, "empty or missing report")  # some IU studies have no findings
        if not study.images:
            return MalformedItem(study.id, "no image_path")
        images = study.images if self.views == "all" else study.images[:1]
        return EvalItem(study.id, "report", self.question, study.report, images=images)


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

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        annotation = R2GenAnnotation(self)
        if self.section == "impression":
            self.require("files")
        if self.split not in annotation.splits:
            raise self.layout_error(f"annotation.json has splits {sorted(annotation.splits)}, not '{self.split}'")
        if not self.with_prior:
            yield from self.published_items(annotation.studies(f"{self.name}-", splits=[self.split]),
                                            lambda study: self._item(study, {}))
            return
        # a prior study may be in any split
        studies = list(annotation.studies(f"{self.name}-", read_study_times(self, self.require(METADATA))[0]))
        prior_of = priors(s for s in studies if isinstance(s, Study))
        split = SPLIT_NAMES.get(self.split, self.split)
        yield from self.published_items((s for s in studies if s.split == split),
                                        lambda study: self._item(study, prior_of))

    def _images(self, study: Study) -> list[str]:
        if self.views == "all" or not study.images:
            return list(study.images)
        return [study.frontal() or study.images[0]]

    def _item(self, study: Study, prior_of: dict[str, Study]) -> EvalItem | MalformedItem | None:
        gold = study.report if self.section == "findings" else mimic_report(self, "files", study.subject_id,
                                                                            study.study_id, "impression")
        images = self._images(study)
        if not gold or not images:
            return MalformedItem(study.id, f"no {self.section} text" if not gold else "no image_path")
        question = self.question
        if self.with_prior:
            prior = prior_of.get(study.study_id)
            if prior is None:
                return None  # longitudinal evaluation covers studies that have a prior study only
            question = ("Prior study:\n<image>\nPrior report: " + prior.report + "\nCurrent study:\n"
                        + "<image>\n" * len(images) + self.question)
            images = [prior.frontal()] + images
        return EvalItem(study.id, "report", question, gold, images=images)
