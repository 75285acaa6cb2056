"""MedSynth's test split: the embedded benchmark whose answers are fixed by what is drawn.

Prompts are the records' own human turns (they already hold the ``<image>``
placeholders, options and instructions the model was trained with), so the
benchmark config sets every prompt template to ``{question}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem

# MedSynth task -> eval kind. caption/text_qa/multiturn have no single checkable answer.
TASK_KINDS = {"closed": "closed", "open": "open", "mcq": "mcq", "longitudinal": "open",
              "report": "report", "multiview_report": "report"}


class MedSynth(Benchmark):
    layout = """test.jsonl                   MedSynth records {id, image, conversations, task, modality, answer, options}
images/...                   (generate with: python -m medgpt_oss.data.synthetic, or let synth= do it)"""
    origin = "generated locally by medgpt_oss.data.synthetic"

    def __init__(self, root: str, split: str = "test", tasks: Sequence[str] = tuple(TASK_KINDS),
                 synth: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(root, **kw)
        unknown = set(tasks) - set(TASK_KINDS)
        if unknown:
            raise ValueError(f"MedSynth tasks {sorted(unknown)} cannot be scored; choose from {sorted(TASK_KINDS)}")
        self.split, self.tasks, self.synth = split, tuple(tasks), dict(synth) if synth else None

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        if self.synth is not None:
            from medgpt_oss.data.synthetic import ensure_medsynth

            ensure_medsynth(self.root, **self.synth)
        path = self.require(f"{self.split}.jsonl")
        for entry in self.read_jsonl(path, "medsynth-line"):
            if isinstance(entry, MalformedItem):
                yield entry
                continue
            line_id, rec = entry
            if rec.get("task") not in self.tasks:
                continue
            item_id = str(rec.get("id", line_id))
            try:
                yield self._item(item_id, rec)
            except (KeyError, TypeError, IndexError, ValueError) as exc:
                yield MalformedItem(item_id, f"missing or bad field {exc!r}")

    @staticmethod
    def _item(item_id: str, rec: dict[str, Any]) -> EvalItem:
        task = rec["task"]
        question, answer = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        images = rec.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        kind = TASK_KINDS[task]
        # closed/open/mcq golds are the short answers; longitudinal and reports are judged on the full text
        gold = rec["answer"] if task in ("closed", "open", "mcq") else answer
        groups = {"task": task, "modality": str(rec.get("modality", ""))}
        return EvalItem(item_id, kind, question, str(gold), images=images, options=rec.get("options"), groups=groups)
