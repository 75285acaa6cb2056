"""SLAKE 1.0: bilingual (English/Chinese) radiology VQA with semantic labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.vqa import SLAKE_FILES, read_slake
from medgpt_oss.data.sources.base import Source, SourceRecord, vqa_records


class SLAKE(Source):
    """``train.json``, ``validate.json`` (split ``val``), ``test.json`` and ``imgs/xmlabN/source.jpg``, read by
    :func:`~medgpt_oss.data.published.vqa.read_slake`. English and Chinese questions share the files:
    ``language`` (en | zh | all) selects by ``q_lang``, the other language is a counted ``other_language``
    skip. Meta keeps answer_type (lower case), modality, content_type, location, base_type, q_lang, qid,
    img_id. Task = answer type: closed / open.
    """

    name = "slake"
    layout = """train.json, validate.json, test.json   JSON lists of {img_name, question, answer, q_lang,
                                        answer_type, ...}
imgs/xmlabN/source.jpg"""
    origin = "https://www.med-vqa.com/slake/ (SLAKE 1.0: Slake.zip with the JSON files and imgs/)"

    def __init__(self, root: str | Path, language: str = "en",
                 split_files: dict[str, str] | None = None, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.language = language
        self.split_files = dict(split_files or SLAKE_FILES)

    def records(self) -> Iterator[SourceRecord | Skip]:
        return vqa_records(self.root, read_slake(self, self.split_files, self.language, f"{self.name}-"))
