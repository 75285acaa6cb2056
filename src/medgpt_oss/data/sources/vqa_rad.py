"""VQA-RAD: radiology questions on MedPix images, closed (yes/no, left/right...) and open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.sources.base import Skip, Source, SourceRecord, text, turns


class VQARAD(Source):
    """Reads the JSON lists of the common train/test split and the MedPix images.

    Files: ``trainset.json`` and ``testset.json`` (the split every VQA-RAD paper
    uses, 1,797 / 451 questions) -- or the OSF original ``VQA_RAD Dataset
    Public.json`` (all 2,248) via ``split_files={train: "VQA_RAD Dataset
    Public.json"}``; do not combine the OSF file with testset.json, it contains
    the test questions. Each entry: ``{qid, image_name, question, answer,
    answer_type CLOSED/OPEN, question_type, phrase_type, image_organ, ...}``.
    Quirks kept in mind: some trainset answer types are ``"CLOSED "`` (trailing
    space); answers mix case ("Yes"/"yes") and are kept as published.
    Task = the data set's own answer type: ``closed`` or ``open``.
    """

    name = "vqa_rad"
    layout = """trainset.json, testset.json   JSON lists of {qid, image_name, question, answer, answer_type, ...}
images/<image_name>            (or the OSF folder "VQA_RAD Image Folder/")"""
    origin = "https://osf.io/89kps/ (OSF: JSON + images); trainset/testset.json from the MedVQA split releases"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dirs: tuple[str, ...] | list[str] = ("images", "VQA_RAD Image Folder"),
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {"train": "trainset.json", "test": "testset.json"})
        self.image_dirs = tuple(image_dirs)

    def records(self) -> Iterator[SourceRecord | Skip]:
        image_dir = self.require(*self.image_dirs)
        for split, filename in self.split_files.items():
            yield from self.each(split, self.json_list(self.require(filename)),
                                 lambda rid, rec, split=split: self._record(rid, rec, split, image_dir),
                                 record_id=lambda rec: rec.get("qid"))

    def _record(self, rid: str, rec: dict, split: str, image_dir: Path) -> Iterator[SourceRecord | Skip]:
        kind = text(rec, "answer_type").lower()
        question, answer, image = text(rec, "question"), text(rec, "answer"), text(rec, "image_name")
        if kind not in ("closed", "open"):
            yield Skip(rid, "bad_answer_type", f"answer_type {rec['answer_type']!r}", "use CLOSED or OPEN", split)
            return
        yield SourceRecord(
            rid, kind, split, turns(f"<image>\n{question}", answer), [image_dir / image],
            {"answer_type": kind, "question_type": rec.get("question_type"), "image_organ": rec.get("image_organ"),
             "phrase_type": rec.get("phrase_type"), "qid": rec.get("qid")},
        )
