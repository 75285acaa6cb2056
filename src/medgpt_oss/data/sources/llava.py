"""LLaVA / LLaVA-Med conversation files, and LLaVA-Med's qa50 evaluation questions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgpt_oss.data.published.layout import Skip, file_names, text
from medgpt_oss.data.sources.base import Source, SourceRecord, turns


def infer_task(conversations: list[dict[str, Any]], has_image: bool) -> str:
    """For files without a task: text-only -> text_qa, several exchanges -> multiturn, else open."""
    if not has_image:
        return "text_qa"
    answers = sum(1 for t in conversations if isinstance(t, dict) and t.get("from") in ("gpt", "assistant"))
    return "multiturn" if answers > 1 else "open"


class LLaVAConversations(Source):
    """Reads LLaVA-format JSON (a list) or JSONL (one record a line) files.

    Each record: ``{"id", "image": "<file>" | ["<file>", ...] (absent for text-only),
    "conversations": [{"from": "human"|"gpt", "value": "..."}]}``, one ``<image>``
    per image in the human turns -- as in LLaVA's ``llava_v1_5_mix665k.json`` and
    LLaVA-Med's ``llava_med_alignment_500k.json`` / ``llava_med_instruct_60k*.json``
    (github.com/microsoft/LLaVA-Med, "Data Download"). Images are under
    ``image_dir``. ``task``: a fixed task for every record (e.g. ``caption`` for
    the alignment file); null uses the record's own ``task`` field, else infers
    text_qa / multiturn / open. Other fields of the record go into meta.
    """

    name = "llava"
    layout = """<split_files>          e.g. {train: llava_med_instruct_60k.json}: JSON list or JSONL of
                       {id, image (str | list), conversations [{from, value}]}
images/<image>"""
    origin = "https://github.com/microsoft/LLaVA-Med (Data Download) or any LLaVA-format file"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None, image_dir: str = "images",
                 task: str | None = None, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {"train": "train.json"})
        self.image_dir, self.task = image_dir, task

    def _entries(self, path: Path) -> Iterator[tuple[str, dict[str, Any] | Skip]]:
        if path.suffix == ".jsonl":
            for line_no, rec in self.read_jsonl(path):
                yield f"{path.name}:{line_no}", rec
        else:
            yield from self.json_list(path)

    def records(self) -> Iterator[SourceRecord | Skip]:
        for split, filename in self.split_files.items():
            yield from self.each(split, self._entries(self.require(filename)),
                                 lambda rid, rec, split=split: self._record(rid, rec, split),
                                 record_id=lambda rec: rec.get("id"), id_prefix="")  # ids as the file gives them

    def _record(self, rid: str, rec: dict[str, Any], split: str) -> Iterator[SourceRecord | Skip]:
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
            yield Skip(rid, "missing_field", "'conversations' is not a list of turns",
                       "give conversations as [{from, value}, ...]", split)
            return
        images = file_names(rec, "image", single=True)
        task = self.task or rec.get("task") or infer_task(conv, bool(images))  # its type: checked by prepare
        meta = {k: v for k, v in rec.items() if k not in ("id", "image", "conversations", "task")}
        yield SourceRecord(rid, task, split, conv, [self.root / self.image_dir / p for p in images], meta)


class LLaVAMedQA50(Source):
    """Reads LLaVA-Med's evaluation questions ``llava_med_eval_qa50_qa.jsonl``.

    One line per question: ``{question_id, image, pair_id, text (question, with
    "<image>"), gpt4_answer, fig_caption, type conversation|detailed_description,
    domain {chest_xray, mri, ct_scan, histology, gross}}``; images are the PMC
    figures ``images/<image>`` (``llava_med_image_urls.jsonl`` lists where to get
    them). Task ``open``; meta keeps type, domain and pair_id. Default split: test.
    """

    name = "llava_med_qa50"
    layout = """llava_med_eval_qa50_qa.jsonl   {question_id, image, text, gpt4_answer, type, domain, ...} per line
images/<image>"""
    origin = "https://github.com/microsoft/LLaVA-Med (data/eval/llava_med_eval_qa50_qa.jsonl)"

    def __init__(self, root: str | Path, file: str = "llava_med_eval_qa50_qa.jsonl", image_dir: str = "images",
                 split: str = "test", allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.file, self.image_dir, self.split = file, image_dir, split

    def records(self) -> Iterator[SourceRecord | Skip]:
        entries = ((f"{self.file}:{line_no}", rec) for line_no, rec in self.read_jsonl(self.require(self.file)))
        yield from self.each(self.split, entries, self._record, record_id=lambda rec: rec.get("question_id"))

    def _record(self, rid: str, rec: dict[str, Any]) -> Iterator[SourceRecord | Skip]:
        question, image = text(rec, "text"), text(rec, "image")
        question = question if "<image>" in question else "<image>\n" + question
        answer = rec.get("gpt4_answer")
        meta = {"type": rec.get("type"), "domain": rec.get("domain"), "pair_id": rec.get("pair_id")}
        yield SourceRecord(rid, "open", self.split, turns(question, answer if isinstance(answer, str) else ""),
                           [self.root / self.image_dir / image], meta)
