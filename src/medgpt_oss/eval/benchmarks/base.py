"""What every benchmark adapter shares: the item type, layout checks, and per-kind scoring.

An adapter only knows where its published files are and how to read them into
:class:`EvalItem` objects (a data set that is also a training source is read by its
``data/published`` reader: :meth:`Benchmark.published_items`); how an answer is
extracted and scored depends on the item's ``kind`` alone (closed / open / mcq /
report), so every benchmark is scored by the same code, whether answers come from
our model or a predictions file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medgpt_oss.data.jsonl import BadLine, json_lines
from medgpt_oss.data.published.layout import PublishedLayout, Skip, has_bad_text
from medgpt_oss.eval import extraction as ex

Record = TypeVar("Record")

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

    def read_jsonl(self, path: Path, prefix: str) -> Iterator[tuple[str, dict[str, Any]] | MalformedItem]:
        """(line id, record) pairs; a line that is not a JSON object becomes a MalformedItem."""
        for line_no, record in json_lines(path):
            if isinstance(record, BadLine):
                yield MalformedItem(f"{prefix}line{line_no}", f"{record.where}: {record.problem}")
            else:
                yield f"{prefix}{line_no - 1}", record

    def published_items(self, records: Iterable[Record | Skip],
                        item: Callable[[Record], EvalItem | MalformedItem | None],
                        ) -> Iterator[EvalItem | MalformedItem]:
        """Items from the records of a ``data/published`` reader (``item`` may leave a record out with None).
        A record the reader could not read, or an item whose text holds bytes that are not UTF-8, is a
        malformed item saying why."""
        for record in records:
            made = MalformedItem(record.id, record.reason) if isinstance(record, Skip) else item(record)
            if isinstance(made, EvalItem) and has_bad_text([made.question, made.gold, made.options, made.images,
                                                           made.groups]):
                made = MalformedItem(made.id, "text holds bytes that are not UTF-8 -- re-encode the file as UTF-8")
            if made is not None:
                yield made

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
