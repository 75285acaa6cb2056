"""Metrics: accuracy summaries over scored rows, and lexical report-generation metrics.

Report benchmarks are scored by :func:`report_metrics` in one of two conventions
(``report_metrics.convention``; :mod:`medgpt_oss.eval.report_metrics` has the details):

- ``r2gen`` (default): the R2Gen-family papers' numbers -- R2Gen's report cleaning (sentence
  periods kept as tokens), then pycocoevalcap's BLEU-1..4 ("closest" brevity penalty), ROUGE-L
  (beta 1.2), CIDEr-D and METEOR (when Java and pycocoevalcap are there).
- ``plain``: this module's functions below -- lower case, punctuation removed, whitespace tokens;
  BLEU-n is corpus BLEU (brevity penalty over the corpus) via torchmetrics; ROUGE-L is the mean
  sentence-level F1 via torchmetrics; CIDEr-D follows coco-caption's ``cider_scorer`` (document
  frequencies from the references of the evaluated set, sigma 6, clipped counts, x10).

Tests check BLEU against sacrebleu, ROUGE-L against rouge-score and both conventions against
numbers produced by pycocoevalcap 1.2 on the same strings.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


# -- accuracy over scored rows --------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def accuracy_summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Overall accuracy and per-group accuracy (``row["groups"]``: e.g. type=closed, modality=MRI).

    A row whose answer could not be extracted has ``correct=False``: unparseable is wrong.
    Open questions also get mean token recall/F1 (``row["scores"]``).
    """
    rows = [r for r in rows if r.get("correct") is not None]
    out: dict[str, Any] = {"accuracy": _mean([float(r["correct"]) for r in rows]), "n": len(rows)}
    # answered but not parseable (badly formatted): counted wrong, and counted here so it shows
    out["unparsed"] = sum(1 for r in rows if r.get("extracted") is None and not r.get("missing_prediction"))
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for key, value in (r.get("groups") or {}).items():
            by[key][str(value)].append(float(r["correct"]))
    for key, values in sorted(by.items()):
        out[f"by_{key}"] = {v: {"accuracy": _mean(c), "n": len(c)} for v, c in sorted(values.items())}
    open_rows = [r for r in rows if r.get("kind") == "open" and r.get("scores")]
    if open_rows:
        out["open_token_recall"] = _mean([r["scores"]["recall"] for r in open_rows])
        out["open_token_f1"] = _mean([r["scores"]["f1"] for r in open_rows])
    return out


# -- lexical report metrics -----------------------------------------------------------------------

def report_tokens(text: str) -> list[str]:
    """R2Gen-style tokens: lower case, punctuation dropped (decimal points kept)."""
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def _normalized(text: str) -> str:
    return " ".join(report_tokens(text))


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from torchmetrics.text import BLEUScore

    preds = [_normalized(p) for p in predictions]
    refs = [[_normalized(r)] for r in references]
    return {f"bleu_{n}": float(BLEUScore(n_gram=n)(preds, refs)) for n in (1, 2, 3, 4)}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from torchmetrics.text import ROUGEScore

    metric = ROUGEScore(rouge_keys="rougeL", normalizer=_normalized, tokenizer=str.split)
    return float(metric([_normalized(p) for p in predictions], [_normalized(r) for r in references])["rougeL_fmeasure"])


def _ngrams(tokens: Sequence[str], n_max: int = 4) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]] | Sequence[str],
            sigma: float = 6.0, tokenize: Callable[[str], list[str]] = report_tokens) -> float:
    """Corpus CIDEr-D (coco-caption): mean over items of 10 x mean_n similarity of tf-idf n-gram vectors.

    ``tokenize``: :func:`report_tokens` (plain convention) or ``str.split`` (pycocoevalcap on pre-cleaned text)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    pred_grams = [_ngrams(tokenize(p)) for p in predictions]
    ref_grams = [[_ngrams(tokenize(r)) for r in rs] for rs in refs]
    df: Counter = Counter()
    for grams in ref_grams:
        df.update(set(g for rg in grams for g in rg))
    log_n = math.log(float(len(refs)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(4)]
        norm = [0.0] * 4
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = tf * (log_n - math.log(max(1.0, df[gram])))
            vec[n][gram] = weight
            norm[n] += weight * weight
        length = sum(c for g, c in counts.items() if len(g) == 2)  # coco-caption: length = count of bigrams
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vh, vr, nh, nr, lh, lr) -> list[float]:
        out = []
        for n in range(4):
            val = sum(min(w, vr[n][g]) * vr[n][g] for g, w in vh[n].items() if g in vr[n])
            if nh[n] != 0 and nr[n] != 0:
                val /= nh[n] * nr[n]
            out.append(val * math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2)))
        return out

    scores = []
    for pg, rgs in zip(pred_grams, ref_grams, strict=True):
        vh, nh, lh = vectorize(pg)
        total = [0.0] * 4
        for rg in rgs:
            vr, nr, lr = vectorize(rg)
            total = [a + b for a, b in zip(total, sim(vh, vr, nh, nr, lh, lr))]
        scores.append(10.0 * sum(total) / 4 / len(rgs))
    return sum(scores) / len(scores) if scores else 0.0


def report_metrics(predictions: Sequence[str], references: Sequence[str],
                   cfg: Mapping[str, Any] | None = None, clinical: Sequence[str] = ()) -> dict[str, Any]:
    """Lexical metrics in ``cfg["convention"]`` (``r2gen`` unless set; ``cleaner``: ``iu_xray`` |
    ``mimic_cxr``; ``meteor``: false to skip it), CheXpert-style F1, the model-based metrics named in
    ``clinical``, and ``unavailable_metrics``: for every metric that did not run, why and what to install."""
    from medgpt_oss.eval.report_metrics import report_summary

    return report_summary(predictions, references, cfg, clinical)
