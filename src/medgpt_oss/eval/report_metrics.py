"""Report-generation metrics in the convention of the R2Gen-family papers, and the model-based ones.

Two conventions for the lexical metrics (``report_metrics.convention``):

``r2gen`` (default for report benchmarks)
    What R2Gen (Chen et al., EMNLP 2020) and the papers that copy its evaluation report: both texts
    go through R2Gen's report cleaning (:func:`clean_report_iu_xray` / :func:`clean_report_mimic_cxr`:
    lower case, sentence periods kept as `` . `` tokens, other punctuation dropped), then
    pycocoevalcap's scorers on whitespace tokens: corpus BLEU-1..4 with the "closest" reference length
    for the brevity penalty, ROUGE-L with beta = 1.2 (mean over items of the best F over its
    references), CIDEr-D (pycocoevalcap's ``Cider``: document frequencies from the evaluated
    references, sigma 6, clipped, x10) and METEOR 1.5 (pycocoevalcap's jar: needs ``java`` and
    ``pip install pycocoevalcap``; otherwise recorded as not computed, with the reason).

``plain`` (this project's earlier numbers)
    Lower case, all punctuation dropped (decimal points kept); corpus BLEU via torchmetrics (brevity
    penalty on the summed lengths), ROUGE-L F1 (beta = 1) via torchmetrics, the same CIDEr-D formula.
    No METEOR.

BLEU, ROUGE-L and CIDEr-D here are pure Python; tests pin numbers computed with pycocoevalcap 1.2 on
real IU X-ray findings pairs (``tests/fixtures/iu_xray_findings_pairs.json``).
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CONVENTIONS = ("r2gen", "plain")
CLEANERS = ("iu_xray", "mimic_cxr", "none")

# -- R2Gen's report cleaning (modules/tokenizers.py of cuhksz-nlp/R2Gen) --------------------------------

# The sentence cleaner's character class: in R2Gen's pattern '[.,?;*!%^&_+():-\[\]{}]' the ':-\['
# part is a *range* (':' .. '['), so it also drops < = > ? @ (and A-Z, already lower-cased), while
# '-' itself is kept ("x-ray" stays one token).
_SENT_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _strip_numbering(text: str) -> str:
    # Applied in this order, each to the whole string, as R2Gen does: drops "1. " and turns the
    # numbers of a numbered list ("2. ".."5. ") into sentence ends.
    text = text.replace("1. ", "")
    for n in "2345":
        text = text.replace(f". {n}. ", ". ")
    for n in "2345":
        text = text.replace(f" {n}. ", ". ")
    return text


def _clean_sentences(text: str) -> str:
    sentences = text.strip().lower().split(". ")
    cleaned = [_SENT_PUNCT.sub("", s.replace('"', "").replace("/", "").replace("\\", "").replace("'", "")
                               .strip().lower()) for s in sentences]
    # R2Gen filters with `!= []`, which never drops a string: empty sentences stay (" .  . ").
    return " . ".join(cleaned) + " ."


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's ``clean_report_iu_xray``: '..' -> '.' (3 passes), list numbering removed, lower case,
    split at '. ', punctuation (but not '-') dropped inside sentences, joined with ' . ', ending ' .'."""
    text = report
    for _ in range(3):
        text = text.replace("..", ".")
    return _clean_sentences(_strip_numbering(text))


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's ``clean_report_mimic_cxr``: as the IU X-ray one, after newlines -> spaces, runs of '_'
    shortened (7 passes of '__' -> '_'), double spaces (6 passes) and repeated dots (8 passes) collapsed."""
    text = report.replace("\n", " ")
    for _ in range(7):
        text = text.replace("__", "_")
    for _ in range(6):
        text = text.replace("  ", " ")
    for _ in range(8):
        text = text.replace("..", ".")
    return _clean_sentences(_strip_numbering(text))


def r2gen_text(report: str, cleaner: str = "mimic_cxr") -> str:
    """The text R2Gen scores: the cleaned report as space-separated tokens (its tokenizer splits the
    cleaned text on whitespace and decodes with single spaces, so empty sentences become '. .')."""
    if cleaner not in CLEANERS:
        raise ValueError(f"report_metrics.cleaner must be one of {CLEANERS}, got {cleaner!r}")
    if cleaner == "none":
        return " ".join(report.split())
    clean = clean_report_iu_xray if cleaner == "iu_xray" else clean_report_mimic_cxr
    return " ".join(clean(report).split())


# -- pycocoevalcap's scorers, in pure Python ---------------------------------------------------------

def _as_ref_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _check(predictions: Sequence[str], refs: list[list[str]]) -> None:
    if len(predictions) != len(refs):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    if any(not r for r in refs):
        raise ValueError("every prediction needs at least one reference")


def coco_bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
              n: int = 4) -> dict[str, float]:
    """pycocoevalcap ``Bleu(4)``: corpus BLEU over whitespace tokens, clipped counts against the max over
    references, brevity penalty from each item's closest reference length (ties: the shorter), the
    scorer's 1e-15 / 1e-9 smoothing constants."""
    refs = _as_ref_lists(references)
    _check(predictions, refs)
    tiny, small = 1e-15, 1e-9
    guess, correct = [0] * n, [0] * n
    test_len = ref_len = 0
    for pred, rs in zip(predictions, refs):
        words = pred.split()
        counts = Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))
        max_ref: Counter = Counter()
        ref_lens = []
        for r in rs:
            rw = r.split()
            ref_lens.append(len(rw))
            for gram, c in Counter(tuple(rw[i:i + k]) for k in range(1, n + 1)
                                   for i in range(len(rw) - k + 1)).items():
                max_ref[gram] = max(max_ref[gram], c)
        test_len += len(words)
        ref_len += min((abs(length - len(words)), length) for length in ref_lens)[1]
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(max_ref.get(gram, 0), c)
    out, bleu = {}, 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    for k in range(n):
        bleu *= (correct[k] + tiny) / (guess[k] + small)
        score = bleu ** (1.0 / (k + 1))
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        out[f"bleu_{k + 1}"] = score
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def coco_rouge_l(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                 beta: float = 1.2) -> float:
    """pycocoevalcap ``Rouge``: per item the best precision and the best recall of the LCS over its
    references (tokens split on single spaces), F_beta with beta = 1.2; the mean over items."""
    refs = _as_ref_lists(references)
    _check(predictions, refs)
    scores = []
    for pred, rs in zip(predictions, refs):
        cand = pred.split(" ")
        prec, rec = [], []
        for r in rs:
            toks = r.split(" ")
            lcs = _lcs(toks, cand)
            prec.append(lcs / len(cand))
            rec.append(lcs / len(toks))
        p, r_ = max(prec), max(rec)
        scores.append((1 + beta ** 2) * p * r_ / (r_ + beta ** 2 * p) if p != 0 and r_ != 0 else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def coco_cider(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """pycocoevalcap ``Cider`` (CIDEr-D: idf from the evaluated references, sigma 6, clipped, x10)."""
    from medgpt_oss.eval.metrics import cider_d

    refs = _as_ref_lists(references)
    _check(predictions, refs)
    return cider_d(predictions, refs, tokenize=str.split)


METEOR_HOW_TO = ("METEOR needs Java (a `java` on PATH, JRE 8+) and `pip install pycocoevalcap` (its "
                 "meteor-1.5.jar and paraphrase tables ship in the wheel; `pip install medgpt-oss[meteor]`)")


def coco_meteor(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
                ) -> tuple[float | None, str | None]:
    """pycocoevalcap ``Meteor`` (METEOR 1.5, ``-l en -norm``): (score, None), or (None, why not)."""
    refs = _as_ref_lists(references)
    _check(predictions, refs)
    if shutil.which("java") is None:
        return None, f"{METEOR_HOW_TO} [missing: java]"
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as exc:
        return None, f"{METEOR_HOW_TO} [missing: {exc.name or exc}]"
    try:
        scorer = Meteor()
        try:
            # METEOR's protocol is line-based and '|||'-separated: keep both out of the texts.
            clean = lambda t: " ".join(t.replace("|||", "").split())  # noqa: E731
            score, _ = scorer.compute_score({i: [clean(r) for r in rs] for i, rs in enumerate(refs)},
                                            {i: [clean(p)] for i, p in enumerate(predictions)})
        finally:
            close = getattr(scorer, "close", None) or getattr(scorer, "__del__", None)
            if close is not None:
                close()
        return float(score), None
    except Exception as exc:  # JVM failed to start (memory), jar missing, ...: say so, never a silent zero
        return None, f"{METEOR_HOW_TO} [failed: {type(exc).__name__}: {str(exc)[:200]}]"


# -- both conventions ----------------------------------------------------------------------------------

def lexical_report_metrics(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                           convention: str = "r2gen", cleaner: str = "mimic_cxr",
                           meteor: bool = True) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR for ``r2gen``) in one convention (module docstring).

    Returns the scores, ``report_metrics_convention`` (e.g. ``"r2gen/iu_xray"``) and, when METEOR could
    not run, ``unavailable_metrics: {"meteor": why}``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"report_metrics.convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "plain":
        from medgpt_oss.eval.metrics import bleu_scores, cider_d, rouge_l

        refs = _as_ref_lists(references)
        if any(len(r) != 1 for r in refs):
            raise ValueError("the plain convention takes one reference per prediction")
        single = [r[0] for r in refs]
        out: dict[str, Any] = bleu_scores(predictions, single)
        out["rouge_l"] = rouge_l(predictions, single)
        out["cider_d"] = cider_d(predictions, single)
        out["report_metrics_convention"] = "plain"
        return out
    preds = [r2gen_text(p or "", cleaner) for p in predictions]
    refs = [[r2gen_text(r, cleaner) for r in rs] for rs in _as_ref_lists(references)]
    out = coco_bleu(preds, refs)
    out["rouge_l"] = coco_rouge_l(preds, refs)
    out["cider_d"] = coco_cider(preds, refs)
    if meteor:
        score, why = coco_meteor(preds, refs)
        if score is not None:
            out["meteor"] = score
        else:
            out["unavailable_metrics"] = {"meteor": why}
    else:
        out["unavailable_metrics"] = {"meteor": "switched off (report_metrics.meteor=false)"}
    out["report_metrics_convention"] = f"r2gen/{cleaner}"
    return out


# -- model-based clinical metrics ----------------------------------------------------------------------

GREEN_HOW_TO = ("GREEN needs `pip install radeval` (RadEval(do_green=True)) or the GREEN package "
                "(Stanford-AIMI/GREEN, module green_score), a GPU, and the StanfordAIMI/GREEN-radllama2-7b "
                "weights local (fetched from the Hugging Face hub on first use: copy the HF cache here "
                "and set HF_HOME; report_metrics.green_model may name a local folder)")


def _green(preds: Sequence[str], refs: Sequence[str], model: str = "StanfordAIMI/GREEN-radllama2-7b"
           ) -> dict[str, float]:
    try:
        from RadEval import RadEval
    except ImportError:
        from green_score import GREEN  # the metric's own package

        result = GREEN(model, output_dir=".")(list(refs), list(preds))
        return {"green": float(result[0])}  # (mean, std, per-report scores, summary, frame)
    scores = RadEval(do_green=True)(refs=list(refs), hyps=list(preds))
    value = scores.get("green")
    if isinstance(value, Mapping):
        value = value.get("mean", value.get("score"))
    if value is None:
        raise KeyError(f"RadEval returned no 'green' score (keys {sorted(scores)})")
    return {"green": float(value)}


def clinical_report_metrics(predictions: Sequence[str], references: Sequence[str],
                            names: Sequence[str] = ("radgraph_f1", "ratescore", "green", "radcliq_v1"),
                            green_model: str = "StanfordAIMI/GREEN-radllama2-7b"
                            ) -> tuple[dict[str, float], dict[str, str]]:
    """RadGraph-F1, RaTEScore, RadCliQ-v1 (:mod:`medgpt_oss.eval.clinical`) and GREEN: the scores that
    can run here, and for each other one why not and what to install -- never a silent skip."""
    from medgpt_oss.eval.clinical import clinical_metrics

    unknown = [n for n in names if n != "green" and n not in _clinical_names()]
    if unknown:
        raise ValueError(f"unknown clinical metric(s) {unknown}: choose from {[*_clinical_names(), 'green']}")
    scores, unavailable = clinical_metrics(predictions, references, [n for n in names if n != "green"])
    if "green" in names:
        try:
            scores.update(_green(predictions, references, green_model))
        except ImportError as exc:
            unavailable["green"] = f"{GREEN_HOW_TO} [missing: {exc.name or exc}]"
        except Exception as exc:  # weights missing, no GPU, hub unreachable, ...
            unavailable["green"] = f"{GREEN_HOW_TO} [failed: {type(exc).__name__}: {str(exc)[:200]}]"
    return scores, unavailable


def _clinical_names() -> list[str]:
    from medgpt_oss.eval.clinical import METRICS

    return list(METRICS)


def report_summary(predictions: Sequence[str], references: Sequence[str],
                   cfg: Mapping[str, Any] | None = None,
                   clinical: Sequence[str] = ()) -> dict[str, Any]:
    """Everything a report benchmark's summary holds: lexical metrics in ``cfg["convention"]`` (default
    ``r2gen``), CheXpert-style F1, the clinical metrics named in ``clinical``, and one merged
    ``unavailable_metrics`` with what to install for each metric that did not run."""
    from medgpt_oss.eval.chexpert import chexpert_f1

    cfg = dict(cfg or {})
    unknown = set(cfg) - {"convention", "cleaner", "meteor", "green_model"}
    if unknown:
        raise ValueError(f"unknown report_metrics keys {sorted(unknown)}: use convention, cleaner, meteor, "
                         "green_model")
    if not predictions:
        return {}
    out = lexical_report_metrics(predictions, references, cfg.get("convention", "r2gen"),
                                 cfg.get("cleaner", "mimic_cxr"), bool(cfg.get("meteor", True)))
    unavailable = dict(out.pop("unavailable_metrics", {}))
    out.update(chexpert_f1(predictions, references))
    if clinical:
        green_model = cfg.get("green_model") or "StanfordAIMI/GREEN-radllama2-7b"
        scores, why = clinical_report_metrics(predictions, references, list(clinical), green_model)
        out.update(scores)
        unavailable.update(why)
    if unavailable:
        out["unavailable_metrics"] = unavailable
    return out
