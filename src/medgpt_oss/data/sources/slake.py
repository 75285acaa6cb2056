"""SLAKE 1.0: bilingual (English/Chinese) radiology VQA with semantic labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.sources.base import Skip, Source, SourceRecord, text, turns

META_FIELDS = ("answer_type", "modality", "content_type", "location", "base_type", "q_lang", "qid", "img_id")


class SLAKE(Source):
    """Reads ``train.json``, ``validate.json``, ``test.json`` and ``imgs/xmlabN/source.jpg``.

    Each file is a JSON list of ``{img_id, img_name "xmlabN/source.jpg", question,
    answer, q_lang en|zh, answer_type OPEN/CLOSED, modality, location,
    content_type, base_type, triple, qid}``; English and Chinese questions share
    the files, so ``language`` (en | zh | all) selects by ``q_lang``. Meta keeps
    answer_type (lower case), modality, content_type, location, base_type, q_lang.
    ``validate`` is written as split ``val``. Task = answer type: closed / open.
    """

    name = "slake"
    layout = """train.json, validate.json, test.json   JSON lists of {img_name, question, answer, q_lang,
                                        answer_type, ...}
imgs/xmlabN/source.jpg"""
    origin = "https://www.med-vqa.com/slake/ (SLAKE 1.0: Slake.zip with the JSON files and imgs/)"

    def __init__(self, root: str | Path, language: str = "en",
                 split_files: dict[str, str] | None = None, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        if language not in ("en", "zh", "all"):
            raise ValueError(f"source.language must be en, zh or all, not {language!r}")
        self.language = language
        self.split_files = dict(split_files or {"train": "train.json", "val": "validate.json", "test": "test.json"})

    def records(self) -> Iterator[SourceRecord | Skip]:
        imgs = self.require("imgs")
        for split, filename in self.split_files.items():
            yield from self.each(split, self.json_list(self.require(filename)),
                                 lambda rid, rec, split=split: self._record(rid, rec, split, imgs),
                                 record_id=lambda rec: rec.get("qid"))

    def _record(self, rid: str, rec: dict, split: str, imgs: Path) -> Iterator[SourceRecord | Skip]:
        if self.language != "all" and rec.get("q_lang") != self.language:
            # the other language: not a bad record, just not selected -- counted, so the totals add up
            yield Skip(rid, "other_language", f"q_lang {rec.get('q_lang')!r}",
                       "source.language=all keeps both", split, expected=True)
            return
        kind = text(rec, "answer_type").lower()
        question, answer, image = text(rec, "question"), text(rec, "answer"), imgs / text(rec, "img_name")
        if kind not in ("closed", "open"):
            yield Skip(rid, "bad_answer_type", f"answer_type {rec['answer_type']!r}", "use OPEN or CLOSED", split)
            return
        meta = {k: rec.get(k) for k in META_FIELDS}
        meta["answer_type"] = kind
        yield SourceRecord(rid, kind, split, turns(f"<image>\n{question}", answer), [image], meta)
