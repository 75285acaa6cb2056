"""Model-based clinical report metrics, used only when their packages and weights are local.

RadGraph-F1 (``radgraph`` package), RaTEScore (``ratescore`` package, import
name ``RaTEScore``) and RadCliQ-v1 (rajpurkarlab/CXR-Report-Metric, not on PyPI)
all need model weights that their code fetches from the Hugging Face hub. This
machine, and many clusters, have no hub access, so each metric is tried in
turn and, when it cannot run, the summary records *why* and *what to install*
instead of a number -- never a silent zero. The CheXpert-style labeler in
:mod:`medgpt_oss.eval.chexpert` is the clinical score that always runs.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

HOW_TO = {
    "radgraph_f1": (
        "RadGraph-F1 needs `pip install radgraph` and the RadGraph weights (the package fetches "
        "StanfordAIMI/RRG_scorers from the Hugging Face hub on first use: run it once with hub access, "
        "or copy that cache here and set HF_HOME)"
    ),
    "ratescore": (
        "RaTEScore needs `pip install ratescore` and its weights (Angelakeke/RaTE-NER-Deberta and the "
        "BiomedBERT embedding model, fetched from the Hugging Face hub on first use; copy the HF cache here)"
    ),
    "radcliq_v1": (
        "RadCliQ-v1 needs rajpurkarlab/CXR-Report-Metric on PYTHONPATH (module CXRMetric, not on PyPI) "
        "with the CheXbert checkpoint and RadGraph model paths set in its config.py"
    ),
}


def _radgraph_f1(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    from radgraph import F1RadGraph

    scorer = F1RadGraph(reward_level="partial")
    mean_reward = scorer(hyps=list(preds), refs=list(refs))[0]
    return {"radgraph_f1": float(mean_reward)}


def _ratescore(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    from RaTEScore import RaTEScore

    scores = RaTEScore().compute_score(list(preds), list(refs))
    return {"ratescore": float(sum(scores) / len(scores))}


def _radcliq(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    # CXR-Report-Metric works on CSV files (study_id, report) and writes per-study scores.
    from CXRMetric.run_eval import calc_metric

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp) / f"{name}.csv" for name in ("gt", "pred", "out")}
        for name, texts in (("gt", refs), ("pred", preds)):
            with open(paths[name], "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["study_id", "report"])
                writer.writerows(enumerate(texts))
        calc_metric(str(paths["gt"]), str(paths["pred"]), str(paths["out"]), use_idf=False)
        with open(paths["out"], newline="") as fh:
            values = [float(row["RadCliQ-v1"]) for row in csv.DictReader(fh)]
    mean = sum(values) / len(values)
    # The report states 1/RadCliQ-v1 (higher is better): the reciprocal of the mean.
    return {"radcliq_v1": mean, "inv_radcliq_v1": 1.0 / mean}


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]] = {
    "radgraph_f1": _radgraph_f1,
    "ratescore": _ratescore,
    "radcliq_v1": _radcliq,
}


def clinical_metrics(preds: Sequence[str], refs: Sequence[str],
                     names: Sequence[str] = tuple(METRICS)) -> tuple[dict[str, float], dict[str, str]]:
    """Scores of every metric that can run here, and for the others why not and what to install."""
    scores: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            scores.update(METRICS[name](preds, refs))
        except ImportError as exc:
            unavailable[name] = f"{HOW_TO[name]} [missing: {exc.name or exc}]"
        except Exception as exc:  # weights missing, hub unreachable, ...: say so, never a silent zero
            unavailable[name] = f"{HOW_TO[name]} [failed: {type(exc).__name__}: {str(exc)[:200]}]"
    return scores, unavailable
