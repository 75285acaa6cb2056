"""95% percentile-bootstrap intervals over items, and paired differences between two runs.

Every interval is computed from the per-item rows of ``<benchmark>/predictions.jsonl``: the items are
resampled with replacement (``bootstrap.resamples`` times, generator seeded with ``bootstrap.seed``), the
metric is recomputed on each resample, and the 2.5th and 97.5th percentiles of those values are the
interval. A metric here is a function of *sums of per-item features*, so one matrix product per block of
resamples recomputes it exactly (a mean, or an F1 from summed per-item counts). The metrics with intervals:

* ``accuracy`` and each split's accuracy (``by_<group>``): mean of the per-item ``correct``;
* ``open_token_recall``, ``open_token_f1``: mean of the per-item token scores of open questions;
* ``chexpert_micro_f1``, ``chexpert_macro_f1``: recomputed on each resample from per-item true/false
  positive and false negative counts of the 14 observations (the labels are kept per item in the row's
  ``chexpert`` field, so the labeler runs once per report).

Not bootstrapped: the lexical report metrics (BLEU-n, ROUGE-L, CIDEr-D, METEOR: computed by
:mod:`medgpt_oss.eval.report_metrics` in a configurable convention that does not return per-item
statistics; BLEU's do add over items, so it could join once they are kept, while CIDEr-D's document
frequencies come from the whole reference set) and the model-based metrics (RadGraph-F1, RaTEScore,
RadCliQ-v1, ...). A metric's interval is attached only when the per-item recomputation on all items
reproduces the summary's number; otherwise ``ci95_skipped`` says why.

Paired comparison (``medgpt_oss.compare``) draws the *same* resampled item ids in both runs and takes the
percentiles of the difference B - A.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
SUFFIX = "_ci95"
TOLERANCE = 1e-9  # the summary's number and the per-item recomputation must agree this closely

MetricPath = tuple[str, ...]  # ("accuracy",) or ("by_type", "closed", "accuracy")


@dataclass
class ItemMetric:
    """A metric that is ``value(sums of per-item features, number of items)``; items are named by id."""

    ids: list[str]
    features: np.ndarray                                   # (n_items, k)
    value: Callable[[np.ndarray, int], np.ndarray]        # sums (..., k), n -> (...)

    @property
    def n(self) -> int:
        return len(self.ids)

    def point(self) -> float:
        return float(self.value(self.features.sum(axis=0), self.n))

    def subset(self, ids: Sequence[str]) -> ItemMetric:
        where = {i: k for k, i in enumerate(self.ids)}
        return ItemMetric(list(ids), self.features[[where[i] for i in ids]], self.value)


def display(path: MetricPath) -> str:
    """("by_type", "closed", "accuracy") -> "by_type[closed].accuracy"."""
    return path[0] if len(path) == 1 else f"{path[0]}[{path[1]}].{path[2]}"


# -- resampling ---------------------------------------------------------------------------------------------

def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (b, n) counts: how often each item is drawn in each resample (rows sum to n)."""
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 4_000_000 // max(n, 1)))  # ~32 MB of indices at most
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _percentiles(values: np.ndarray) -> list[float]:
    lo, hi = np.quantile(values, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return [round(float(lo), 6), round(float(hi), 6)]


def interval(metric: ItemMetric, resamples: int, seed: int) -> list[float] | None:
    """[low, high] of the 95% percentile bootstrap; None without items or resamples."""
    if metric.n == 0 or resamples <= 0:
        return None
    values = [metric.value(counts @ metric.features, metric.n) for counts in resample_counts(metric.n, resamples, seed)]
    return _percentiles(np.concatenate(values))


def paired_interval(a: ItemMetric, b: ItemMetric, resamples: int, seed: int) -> list[float] | None:
    """[low, high] of B - A when the same item ids are resampled in both (``a.ids == b.ids``)."""
    if a.ids != b.ids:
        raise ValueError("paired bootstrap needs the same items, in the same order, in both runs")
    if a.n == 0 or resamples <= 0:
        return None
    diffs = [b.value(counts @ b.features, b.n) - a.value(counts @ a.features, a.n)
             for counts in resample_counts(a.n, resamples, seed)]
    return _percentiles(np.concatenate(diffs))


def paired_differences(metrics_a: Mapping[MetricPath, ItemMetric], metrics_b: Mapping[MetricPath, ItemMetric],
                       resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per metric of both runs, over the item ids both scored: ``n``, ``a``, ``b``, ``diff`` (B - A) and its paired
    95% interval ``diff_ci95`` (when ``resamples`` > 0); ``unpaired`` counts items scored in one run only."""
    out: dict[str, dict[str, Any]] = {}
    for path, ma in metrics_a.items():
        mb = metrics_b.get(path)
        if mb is None:
            continue
        in_b = set(mb.ids)
        common = [i for i in ma.ids if i in in_b]
        entry: dict[str, Any] = {"n": len(common)}
        if len(common) < ma.n or len(common) < mb.n:
            entry["unpaired"] = {"a": ma.n - len(common), "b": mb.n - len(common)}
        if common:
            a, b = ma.subset(common), mb.subset(common)
            entry.update(a=a.point(), b=b.point(), diff=b.point() - a.point())
            if resamples > 0:
                entry["diff_ci95"] = paired_interval(a, b, resamples, seed)
        out[display(path)] = entry
    return out


# -- metrics as functions of per-item feature sums ------------------------------------------------------------

def _mean(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[..., 0] / n


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def _micro_f1(sums: np.ndarray, n: int) -> np.ndarray:
    return _f1(sums[..., 0], sums[..., 1], sums[..., 2])


def _macro_f1(sums: np.ndarray, n: int) -> np.ndarray:
    """Mean F1 over the observations positive in some prediction or reference of the (re)sample."""
    k = sums.shape[-1] // 3
    tp, fp, fn = sums[..., :k], sums[..., k:2 * k], sums[..., 2 * k:]
    defined = (tp + fp + fn) > 0
    count = defined.sum(axis=-1)
    total = np.where(defined, _f1(tp, fp, fn), 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def chexpert_labels(output: str | None, gold: str) -> dict[str, list[int | None]]:
    """The row's ``chexpert`` field: labels (1 positive, 0 negative, -1 uncertain, null not mentioned) of
    the generated and the reference report, in ``chexpert.OBSERVATIONS`` order."""
    from medgpt_oss.eval.chexpert import OBSERVATIONS, label_report

    out, ref = label_report(output or ""), label_report(gold)
    return {"output": [out[o] for o in OBSERVATIONS], "gold": [ref[o] for o in OBSERVATIONS]}


def add_chexpert_labels(rows: list[dict[str, Any]]) -> None:
    """Label every scored report row once, in place (rows that have labels keep them)."""
    for row in rows:
        if row.get("kind") == "report" and row.get("error") is None and "chexpert" not in row:
            row["chexpert"] = chexpert_labels(row.get("output"), row["gold"])


def _chexpert_counts(row: dict[str, Any]) -> np.ndarray:
    labels = row.get("chexpert") or chexpert_labels(row.get("output"), row["gold"])
    try:
        pred = np.array([v == 1 for v in labels["output"]], dtype=bool)
        ref = np.array([v == 1 for v in labels["gold"]], dtype=bool)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"item {row.get('id')}: 'chexpert' must be {{'output': [...], 'gold': [...]}}") from exc
    if pred.shape != ref.shape:
        raise ValueError(f"item {row.get('id')}: 'chexpert' output and gold label lists differ in length")
    return np.concatenate([pred & ref, pred & ~ref, ref & ~pred]).astype(np.float64)


def item_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[MetricPath, ItemMetric]:
    """Every metric that can be recomputed from these rows, as in ``Benchmark.summarize``."""
    scored = [r for r in rows if r.get("error") is None]
    out: dict[MetricPath, ItemMetric] = {}

    def mean(path: MetricPath, chosen: list[Mapping[str, Any]], values: list[float]) -> None:
        if chosen:
            out[path] = ItemMetric([str(r["id"]) for r in chosen], np.array(values, dtype=np.float64)[:, None], _mean)

    questions = [r for r in scored if r.get("kind") != "report" and r.get("correct") is not None]
    mean(("accuracy",), questions, [float(r["correct"]) for r in questions])
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in questions:
        for key, value in (r.get("groups") or {}).items():
            groups[key][str(value)].append(r)
    for key, by_value in sorted(groups.items()):
        for value, chosen in sorted(by_value.items()):
            mean((f"by_{key}", value, "accuracy"), chosen, [float(r["correct"]) for r in chosen])
    open_rows = [r for r in questions if r.get("kind") == "open" and r.get("scores")]
    mean(("open_token_recall",), open_rows, [float(r["scores"]["recall"]) for r in open_rows])
    mean(("open_token_f1",), open_rows, [float(r["scores"]["f1"]) for r in open_rows])

    reports = [r for r in scored if r.get("kind") == "report"]
    if reports:
        ids = [str(r["id"]) for r in reports]
        counts = np.stack([_chexpert_counts(r) for r in reports])             # (n, 3 x 14): tp | fp | fn
        k = counts.shape[1] // 3
        micro = np.stack([counts[:, :k].sum(1), counts[:, k:2 * k].sum(1), counts[:, 2 * k:].sum(1)], axis=1)
        out[("chexpert_micro_f1",)] = ItemMetric(ids, micro, _micro_f1)
        out[("chexpert_macro_f1",)] = ItemMetric(ids, counts, _macro_f1)
    return out


# -- the intervals of a benchmark's summary --------------------------------------------------------------------

def _slot(summary: dict[str, Any], path: MetricPath) -> tuple[dict[str, Any], str] | None:
    """The dict holding the metric's number in the summary, and its key."""
    holder: Any = summary
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
    return (holder, path[-1]) if isinstance(holder, dict) and path[-1] in holder else None


def _put_after(holder: dict[str, Any], key: str, new_key: str, value: Any) -> None:
    """``holder[new_key] = value``, placed right after ``key`` so summary.json reads metric, then interval."""
    items = [(k, v) for k, v in holder.items() if k != new_key]
    holder.clear()
    for k, v in items:
        holder[k] = v
        if k == key:
            holder[new_key] = value


def benchmark_item_metrics(rows: Sequence[Mapping[str, Any]], benchmark: Any = None) -> dict[MetricPath, ItemMetric]:
    """The shared per-item metrics plus the benchmark's own (``benchmark.item_metrics``, e.g. MedSynth's finding F1)."""
    own = getattr(benchmark, "item_metrics", None)
    return {**item_metrics(rows), **(own(rows) if own is not None else {})}


def add_intervals(summary: dict[str, Any], rows: Sequence[Mapping[str, Any]], resamples: int, seed: int,
                  benchmark: Any = None) -> None:
    """Put ``<metric>_ci95: [low, high]`` next to every metric of ``summary`` that the rows can recompute
    (the benchmark's own per-item metrics included)."""
    if resamples <= 0:
        return
    skipped: dict[str, str] = {}
    for path, metric in benchmark_item_metrics(rows, benchmark).items():
        slot = _slot(summary, path)
        if slot is None or slot[0][slot[1]] is None:
            continue
        holder, key = slot
        if abs(metric.point() - float(holder[key])) > TOLERANCE:
            skipped[display(path)] = (f"recomputed from the items it is {metric.point():.6f}, the summary says "
                                      f"{float(holder[key]):.6f}: no interval")
            continue
        _put_after(holder, key, key + SUFFIX, interval(metric, resamples, seed))
    if skipped:
        summary["ci95_skipped"] = skipped
