"""What every benchmark adapter shares: the item type, layout checks, and per-kind scoring.

An adapter only knows where its published files are and how to read them into
:class:`EvalItem` objects; how an answer is extracted and scored depends on the
item's ``kind`` alone (closed / open / mcq / report), so every benchmark is
scored by the same code, whether answers come from our model or a predictions file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.layout import PublishedLayout
from medgpt_oss.eval import extraction as ex

KINDS = ("closed", "open", "mcq", "report")
YES_NO = ("yes", "no")


@dataclass
class EvalItem:
    id: str
    kind: str                      # closed | open | mcq | report
    question: str                  # stem only: the prompt template adds options and instructions
    gold: str                      # "yes"/"no", the open answer, the option letter, or the reference report
    images: list[str] = field(default_factory=list)   # relative to the benchmark root, or absolute
    options: dict[str, str] | None = None             # mcq: letter -> text
    choices: tuple[str, ...] = YES_NO                 # closed: the label set
    groups: dict[str, str] = field(default_factory=dict)  # reported splits: type, modality, ...

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"item {self.id}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class MalformedItem:
    """An item the adapter could not read; reported by id and counted, never silently dropped."""

    id: str
    problem: str


class BenchmarkLayoutError(FileNotFoundError):
    """The benchmark root is missing or does not hold the published files."""


def closed_or_open(item_id: str, question: str, answer: str, **kw: Any) -> EvalItem:
    """VQA items: yes/no answers are closed questions, anything else is scored as open."""
    gold = ex.normalize_answer(answer)
    if gold in YES_NO:
        return EvalItem(item_id, "closed", question, gold, **kw)
    return EvalItem(item_id, "open", question, answer.strip(), **kw)


class Benchmark(PublishedLayout):
    """Base adapter. Subclasses set ``layout``, ``origin`` (docs/evaluation.md has the long form) and
    implement :meth:`items`."""

    kind = "benchmark"
    layout_error_class = BenchmarkLayoutError

    def __init__(self, root: str | Path, name: str | None = None, prompts: dict[str, str] | None = None,
                 clinical_metrics: Sequence[str] | None = None,
                 report_metrics: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.name = name or type(self).__name__.lower()
        self.prompts = dict(prompts or {})
        self.clinical_metrics = list(clinical_metrics or [])
        self.report_metrics = dict(report_metrics or {})  # convention (r2gen | plain), cleaner, meteor

    # -- reading -------------------------------------------------------------------------------

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        raise NotImplementedError

    def root_hint(self) -> str:
        return f"benchmark.root=<that folder> (or benchmark.{self.name}.root=...)"

    def read_json(self, path: Path) -> Any:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except json.JSONDecodeError as exc:
            raise self.layout_error(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from exc

    def read_jsonl(self, path: Path, prefix: str) -> Iterator[tuple[str, dict[str, Any]] | MalformedItem]:
        """(line id, record) pairs; a line that is not a JSON object becomes a MalformedItem."""
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    yield MalformedItem(f"{prefix}line{line_no}", f"{path.name}:{line_no}: {exc}")
                    continue
                yield f"{prefix}{line_no - 1}", record

    # -- scoring -------------------------------------------------------------------------------

    def score(self, item: EvalItem, output: str | None) -> dict[str, Any]:
        """``{"extracted", "correct", "scores"}`` for one answer; no answer or no parse is wrong."""
        if item.kind == "report":
            return {"extracted": (output or "").strip() or None, "correct": None, "scores": {}}
        if output is None:  # no answer at all: wrong, and zero overlap for open questions
            zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0} if item.kind == "open" else {}
            return {"extracted": None, "correct": False, "scores": zero}
        if item.kind == "closed":
            extracted = ex.extract_label(output, item.choices)
            return {"extracted": extracted, "correct": extracted == item.gold, "scores": {}}
        if item.kind == "mcq":
            extracted = ex.extract_choice(output, item.options or {})
            return {"extracted": extracted, "correct": extracted == item.gold, "scores": {}}
        extracted = ex.extract_open(output) or None
        return {
            "extracted": extracted,
            "correct": extracted is not None and extracted == ex.normalize_answer(item.gold),
            "scores": ex.token_scores(output, item.gold),  # lenient recall over the whole answer
        }

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Accuracy (overall, per group) for questions; corpus metrics for reports."""
        from medgpt_oss.eval.metrics import accuracy_summary, report_metrics

        out: dict[str, Any] = {}
        questions = [r for r in rows if r.get("kind") != "report" and r.get("error") is None]
        if questions:
            out.update(accuracy_summary(questions))
        reports = [r for r in rows if r.get("kind") == "report" and r.get("error") is None]
        if reports:
            preds = [r.get("output") or "" for r in reports]
            refs = [r["gold"] for r in reports]
            # lexical (report_metrics.convention), CheXpert-style, clinical_metrics; one unavailable_metrics
            out.update(report_metrics(preds, refs, self.report_metrics, self.clinical_metrics))
            out["n_reports"] = len(reports)
            out.setdefault("n", len(reports))  # a mixed benchmark's n stays its questions' count
        return out
