"""MedSynth's test split: the embedded benchmark whose answers are fixed by what is drawn.

Prompts are the records' own human turns (they already hold the ``<image>``
placeholders, options and instructions the model was trained with), so the
benchmark config sets every prompt template to ``{question}``.

Besides the harness's metrics, MedSynth reports get a **finding F1**: the positive findings a report
states (nodule, effusion, cardiomegaly; ``data.medsynth.text.findings_from_report``) against those of the
reference report, micro F1 over all report items (``finding_f1``, with its 95% interval). The summary
also counts scored items per task (``n_by_task``) and unparseable answers per task
(``by_task.<task>.unparsed``: no final channel, or no label/letter in it). ``limit_per_task`` keeps
the first N items of each task (the demo's "N per task kind").

What "chance" means here is measured, not assumed: ``by_task.<task>.prior_accuracy`` is the accuracy of
answering each closed/open/multiple-choice item, without looking at any image, with the answer the training
split gives most often to the same question (for multiple choice: the same stem and the same set of options,
whatever their letters). A model that learnt nothing from the pixels can reach it; one that learnt from them
should beat it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem

# MedSynth task -> eval kind. caption/text_qa/multiturn have no single checkable answer.
# longitudinal_report (the prior frontal image and report + the current views -> report with a Comparison
# line) is the longitudinal setting of Figure 2, laid out as MIMIC-CXR's; series_report (the patient's whole
# series) is the long-context one. Both are asked for by name only (not among the default tasks).
TASK_KINDS = {"closed": "closed", "open": "open", "mcq": "mcq", "longitudinal": "open",
              "report": "report", "multiview_report": "report", "longitudinal_report": "report",
              "series_report": "report"}
DEFAULT_TASKS = ("closed", "open", "mcq", "longitudinal", "report", "multiview_report")


PRIOR_TASKS = ("closed", "open", "mcq")


def prior_key(rec: Mapping[str, Any]) -> tuple:
    """What an image-free guesser sees of a record: its question, and for multiple choice its stem and the
    set of option texts (letters are shuffled per record, so the guess is an option text)."""
    question = rec["conversations"][0]["value"]
    if rec["task"] == "mcq":
        stem = question.split("\n" + next(iter(rec["options"])) + ". ", 1)[0]
        return (stem, frozenset(rec["options"].values()))
    return (question,)


def answer_text(rec: Mapping[str, Any]) -> str:
    """The answer as text: an option's text for multiple choice, the short answer otherwise."""
    return str(rec["options"][rec["answer"]] if rec["task"] == "mcq" else rec["answer"])


def finding_counts(output: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one report's positive findings."""
    out, ref = set(output), set(gold)
    return len(out & ref), len(out - ref), len(ref - out)


def finding_f1(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    """Micro F1 of positive findings over all reports (1.0 when no report states or has any)."""
    tp = fp = fn = 0
    for p, g in zip(predicted, gold, strict=True):
        a, b, c = finding_counts(list(p), list(g))
        tp, fp, fn = tp + a, fp + b, fn + c
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _f1_of_sums(sums: Any, n: int) -> Any:
    import numpy as np

    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)


class MedSynth(Benchmark):
    layout = """test.jsonl                   MedSynth records {id, image, conversations, task, modality, answer,
                                              options}
images/...                   (generate with: python -m medgpt_oss.data.medsynth, or let synth= do it)"""
    origin = "generated locally by medgpt_oss.data.medsynth"

    def __init__(self, root: str, split: str = "test", tasks: Sequence[str] = DEFAULT_TASKS,
                 synth: dict[str, Any] | None = None, limit_per_task: int | None = None, **kw: Any) -> None:
        super().__init__(root, **kw)
        unknown = set(tasks) - set(TASK_KINDS)
        if unknown:
            raise ValueError(f"MedSynth tasks {sorted(unknown)} cannot be scored; choose from {sorted(TASK_KINDS)}")
        if limit_per_task is not None and int(limit_per_task) < 0:
            raise ValueError(f"limit_per_task={limit_per_task} must be >= 0 (null: every item)")
        self.split, self.tasks, self.synth = split, tuple(tasks), dict(synth) if synth else None
        self.limit_per_task = None if limit_per_task is None else int(limit_per_task)
        self.prior_correct: dict[str, bool] = {}   # item id -> the image-free prior guess is right
        self._guesses: dict[tuple, str] | None = None   # read once: items() runs again for blanked images

    def _prior_guesses(self) -> dict[tuple, str]:
        """The training split's most common answer text per question key (see :func:`prior_key`); empty when
        no task asked for has one, or there is no training split."""
        if self._guesses is None:
            self._guesses = self._read_prior_guesses() if set(self.tasks) & set(PRIOR_TASKS) else {}
        return self._guesses

    def _read_prior_guesses(self) -> dict[tuple, str]:
        path = self.root / "train.jsonl"
        if not path.is_file():
            return {}
        counts: dict[tuple, Counter] = {}
        for entry in self.read_jsonl(path, "medsynth-train-line"):
            if isinstance(entry, MalformedItem):
                continue
            rec = entry[1]
            if rec.get("task") in PRIOR_TASKS:
                try:
                    counts.setdefault(prior_key(rec), Counter())[answer_text(rec)] += 1
                except (KeyError, TypeError, IndexError):
                    continue
        return {key: c.most_common(1)[0][0] for key, c in counts.items()}

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        if self.synth is not None:
            from medgpt_oss.data.medsynth.generate import ensure_medsynth

            ensure_medsynth(self.root, **self.synth)
        path = self.require(f"{self.split}.jsonl")
        guesses = self._prior_guesses() if self.split != "train" else {}
        taken: Counter = Counter()
        for entry in self.read_jsonl(path, "medsynth-line"):
            if isinstance(entry, MalformedItem):
                yield entry
                continue
            line_id, rec = entry
            task = rec.get("task")
            if task not in self.tasks:
                continue
            if self.limit_per_task is not None and taken[task] >= self.limit_per_task:
                continue
            taken[task] += 1
            item_id = str(rec.get("id", line_id))
            try:
                item = self._item(item_id, rec)
                if guesses and task in PRIOR_TASKS:
                    self.prior_correct[item_id] = guesses.get(prior_key(rec)) == answer_text(rec)
                yield item
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

    # -- scoring: the harness's, plus finding F1 for reports ------------------------------------------

    def score(self, item: EvalItem, output: str | None) -> dict[str, Any]:
        scored = super().score(item, output)
        if item.kind == "mcq" and item.options and item.gold in item.options:
            # does the reply name the right option's text (whatever letter it gives)? A wrong letter with the
            # right text is a binding error: the finding was seen, the letter not matched to it
            text = item.options[item.gold].lower()
            scored["scores"] = {**scored["scores"], "names_gold_text": text in (output or "").lower()}
        if item.kind == "report":
            from medgpt_oss.data.medsynth.text import findings_from_report

            scored["scores"] = {**scored["scores"], "findings": {"output": findings_from_report(output or ""),
                                                                 "gold": findings_from_report(item.gold)}}
        return scored

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().summarize(rows)
        scored = [r for r in rows if r.get("error") is None]
        out["n_by_task"] = dict(Counter(str((r.get("groups") or {}).get("task")) for r in scored))
        for task, split in (out.get("by_task") or {}).items():
            split["unparsed"] = sum(1 for r in scored if (r.get("groups") or {}).get("task") == task
                                    and r.get("kind") != "report" and r.get("extracted") is None
                                    and not r.get("missing_prediction"))
            prior = [self.prior_correct[str(r["id"])] for r in scored
                     if (r.get("groups") or {}).get("task") == task and str(r["id"]) in self.prior_correct]
            if prior:
                split["prior_accuracy"] = sum(prior) / len(prior)
            wrong = [r for r in scored if (r.get("groups") or {}).get("task") == task and r.get("correct") is False
                     and "names_gold_text" in (r.get("scores") or {})]   # set for multiple choice only
            if wrong:
                split["wrong"] = len(wrong)
                split["wrong_letter_right_text"] = sum(bool(r["scores"]["names_gold_text"]) for r in wrong)
        reports = self._finding_rows(scored)
        if reports:
            out["finding_f1"] = finding_f1([r["scores"]["findings"]["output"] for r in reports],
                                           [r["scores"]["findings"]["gold"] for r in reports])
        return out

    @staticmethod
    def _finding_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [r for r in rows if r.get("kind") == "report" and r.get("error") is None
                and isinstance((r.get("scores") or {}).get("findings"), dict)]

    def item_metrics(self, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, ...], Any]:
        """Metrics beyond ``bootstrap.item_metrics`` that the rows recompute: ``finding_f1`` from per-item
        true/false positive and false negative counts (so its interval and paired differences are exact)."""
        import numpy as np

        from medgpt_oss.eval.bootstrap import ItemMetric

        reports = self._finding_rows(rows)
        if not reports:
            return {}
        counts = np.array([finding_counts(r["scores"]["findings"]["output"], r["scores"]["findings"]["gold"])
                           for r in reports], dtype=np.float64)
        return {("finding_f1",): ItemMetric([str(r["id"]) for r in reports], counts, _f1_of_sums)}
