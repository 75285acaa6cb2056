"""PathVQA: pathology questions generated from textbook and PEIR captions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.sources.base import Skip, Source, SourceRecord, text, turns


class PathVQA(Source):
    """Reads ``pvqa_{train,val,test}.json`` and ``images/{split}/<img_id>.jpg``.

    The official repository's per-image format: a JSON list of ``{img_id,
    labelf: {pvqa: [{answer: 1}, ...]}, sentf: {pvqa: [question, ...]}}``, the
    i-th label answering the i-th question; many images have no questions (empty
    lists, nothing to skip). Task: ``closed`` for yes/no answers, else ``open``
    (PathVQA has no answer_type field; the same rule as its evaluation adapter).
    """

    name = "pathvqa"
    layout = """pvqa_train.json, pvqa_val.json, pvqa_test.json   JSON lists of {img_id, labelf.pvqa, sentf.pvqa}
images/<split>/<img_id>.jpg"""
    origin = "https://github.com/UCSD-AI4H/PathVQA (data links in its README)"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dir: str = "images/{split}", allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {s: f"pvqa_{s}.json" for s in ("train", "val", "test")})
        self.image_dir = image_dir

    def _image(self, split: str, img_id: str) -> Path:
        folder = self.root / self.image_dir.format(split=split)
        for ext in (".jpg", ".png", ".jpeg"):
            if (folder / f"{img_id}{ext}").exists():
                return folder / f"{img_id}{ext}"
        return folder / f"{img_id}.jpg"  # missing: prepare reports it by record id

    def records(self) -> Iterator[SourceRecord | Skip]:
        for split, filename in self.split_files.items():
            yield from self.each(split, self.json_list(self.require(filename)),
                                 lambda rid, rec, split=split: self._records(rid, rec, split),
                                 record_id=lambda rec: rec.get("img_id"))

    def _records(self, rid: str, rec: dict, split: str) -> Iterator[SourceRecord | Skip]:
        img_id = text(rec, "img_id")
        try:
            labels, questions = rec["labelf"]["pvqa"], rec["sentf"]["pvqa"]
        except (KeyError, TypeError) as exc:
            yield Skip(rid, "missing_field", f"no field {exc}", "", split)
            return
        if not isinstance(labels, list) or not isinstance(questions, list) or len(labels) != len(questions):
            yield Skip(rid, "label_count", f"{len(questions)} questions but {len(labels)} labels",
                       "give one {answer: 1} label per question", split)
            return
        for i, (label, question) in enumerate(zip(labels, questions)):
            qid = f"{rid}-{i}"
            if not isinstance(label, dict) or not label or not all(isinstance(a, str) for a in label):
                yield Skip(qid, "missing_field", f"label {label!r:.60} is not an {{answer: score}} object", "", split)
                continue
            if not isinstance(question, str):
                yield Skip(qid, "bad_field", f"question {i} is {type(question).__name__}, not text",
                           "give each question as a string", split)
                continue
            answer = max(label, key=label.get).strip()
            kind = "closed" if answer.lower() in ("yes", "no") else "open"
            yield SourceRecord(qid, kind, split, turns(f"<image>\n{question.strip()}", answer),
                               [self._image(split, img_id)], {"answer_type": kind, "img_id": img_id})
