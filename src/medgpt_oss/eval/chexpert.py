"""A CheXpert-style rule-based labeler of the 14 CheXpert observations, offline.

Mentions come from the CheXpert labeler's own phrase lists (shipped as package
data in ``chexpert_phrases/``, MIT licence). The original classifies each
mention with Semgrex patterns over a dependency parse (``patterns/`` in the
labeler); we have no parser, so this module applies a **simplified rule set in
the spirit of those patterns**, within the clause holding the mention:

1. pre-negation uncertainty -- "cannot be excluded", "cannot rule out", "not
   excluded", "no new X"                                     -> uncertain
2. negation -- a cue before the mention ("no", "without", "negative for",
   "free of", "no evidence of", "normal", "resolved", ...) or after it with a
   copula ("X is not enlarged", "X has resolved", "X is within normal limits",
   "heart size normal")                                         -> negative
3. post-negation uncertainty -- "possible", "may", "likely", "suspicious for",
   "versus", "or", "borderline", "suggest..." anywhere in the clause -> uncertain
4. otherwise                                                     -> positive

A clause ends at sentence punctuation, ";", and words that start a new
statement ("but", "however", "although", "which", "with", "and there" ...); a
plain comma does not, so "no effusion, pneumothorax or consolidation" negates
all three. Aggregation follows the labeler: per observation positive beats
uncertain beats negative; "chf"/"heart failure" make Cardiomegaly at least
uncertain; No Finding is positive only when nothing but Support Devices is
positive or uncertain (the ``no_finding`` phrases are other findings that also
rule it out). Known gaps versus the parser: negation scope across commas in
mixed lists ("no effusion, mild atelectasis" negates both), and long-range
dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

PHRASE_DIR = Path(__file__).resolve().parent / "chexpert_phrases"

OBSERVATIONS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
)
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

_CLAUSE_BREAK = re.compile(
    r"[;:]|\b(?:but|however|although|though|except|aside from|apart from|whereas|which|with|while|"
    r"and (?:there|the|is|are|a|an)|otherwise)\b"
)
_PRE_UNCERTAIN = re.compile(
    r"\b(?:cannot|can not|could not|can't) (?:be )?(?:excluded|exclude|ruled out|rule out)|\bnot (?:be )?excluded|"
    r"\bno new\b|\bnot (?:be )?ruled out"
)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|rule out|ruled out|resolution of|resolved|"
    r"removal of|clear of|clearing of|exclude|excluded|normal|unremarkable|never)\b"
)
_NEG_WORDS = r"(?:not|no longer|normal|unremarkable|within normal limits|resolved|absent|removed|cleared|negative)"
_POST_NEGATION = re.compile(
    rf"^\s*(?:[\w-]+\s+){{0,3}}?(?:is|are|was|were|has|have|had|appears?|remains?|seems?|looks?)\s+"
    rf"(?:[\w-]+\s+){{0,2}}?{_NEG_WORDS}\b|^\s*(?:{_NEG_WORDS}|not seen|not identified)\b"
)
_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|probable|probably|presumably|presumed|questionable|question of|suspect|suspected|"
    r"suspicious|suspicion|concern for|concerning for|may|might|could|likely|versus|vs|differential|borderline|"
    r"suggest|suggests|suggestive|suggesting|worrisome|or|cannot be assessed|not well (?:seen|visualized|evaluated)|"
    r"obscur\w*|equivocal|indeterminate)\b"
)


@lru_cache(maxsize=None)
def load_phrases(kind: str) -> dict[str, tuple[str, ...]]:
    """``mention`` or ``unmention`` phrase lists, keyed by observation name ("_" means a space)."""
    out = {}
    for path in sorted((PHRASE_DIR / kind).glob("*.txt")):
        name = path.stem.replace("_", " ").title()  # lung_lesion -> "Lung Lesion"
        phrases = [line.strip().lower().replace("_", " ") for line in path.read_text().splitlines()]
        out[name] = tuple(p for p in phrases if p.strip())
    return out


def _sentences(report: str) -> list[str]:
    # A period ends a sentence only before whitespace ("3.4 cm" stays whole); whitespace is collapsed.
    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+|\n", report.lower()) if s.strip()]


def _clause_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    left, right = 0, len(sentence)
    for m in _CLAUSE_BREAK.finditer(sentence):
        if m.end() <= start:
            left = m.end()
        elif m.start() >= end and right == len(sentence):
            right = m.start()
    return left, right


def classify_mention(sentence: str, start: int, end: int) -> int:
    """POSITIVE / NEGATIVE / UNCERTAIN for the mention at ``sentence[start:end]``."""
    left, right = _clause_bounds(sentence, start, end)
    before, after = sentence[left:start], sentence[end:right]
    clause = sentence[left:right]
    if _PRE_UNCERTAIN.search(clause):
        return UNCERTAIN
    if _PRE_NEGATION.search(before) or _POST_NEGATION.search(after):
        return NEGATIVE
    if _UNCERTAIN.search(clause):
        return UNCERTAIN
    return POSITIVE


def _mentions(sentence: str, observation: str) -> list[tuple[int, int, str]]:
    padded = f" {sentence} "
    blocked = [
        (m.start(), m.end())
        for phrase in load_phrases("unmention").get(observation, ())
        for m in re.finditer(re.escape(phrase), padded)
    ]
    found = []
    for phrase in load_phrases("mention").get(observation, ()):
        for m in re.finditer(re.escape(phrase), padded):
            if any(s < m.end() and m.start() < e for s, e in blocked):
                continue
            found.append((max(m.start() - 1, 0), max(m.end() - 1, 0), phrase.strip()))
    return found


def label_report(report: str | None) -> dict[str, int | None]:
    """Observation -> 1 positive, 0 negative, -1 uncertain, None not mentioned.

    A missing or empty report mentions nothing, No Finding included: "nothing found" is a statement a
    report makes, and an empty one would otherwise earn No Finding credit against every normal reference.
    """
    if report is None or not report.strip():
        return {observation: None for observation in OBSERVATIONS}
    labels: dict[str, list[int]] = {}
    no_finding = True
    for sentence in _sentences(report):
        for observation in load_phrases("mention"):
            for start, end, phrase in _mentions(sentence, observation):
                label = classify_mention(sentence, start, end)
                if observation != "Support Devices" and label in (POSITIVE, UNCERTAIN):
                    no_finding = False
                if observation == "No Finding":
                    continue  # its phrases are "other findings": they only rule No Finding out
                if label in (POSITIVE, UNCERTAIN) and phrase in ("chf", "heart failure"):
                    labels.setdefault("Cardiomegaly", []).append(UNCERTAIN)
                labels.setdefault(observation, []).append(label)
    out: dict[str, int | None] = {}
    for observation in OBSERVATIONS:
        found = labels.get(observation, [])
        out[observation] = (POSITIVE if POSITIVE in found else UNCERTAIN if UNCERTAIN in found
                            else NEGATIVE if found else None)
    out["No Finding"] = POSITIVE if no_finding else None
    return out


def positive_vector(labels: dict[str, int | None], uncertain_as_positive: bool = False) -> list[int]:
    wanted = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
    return [int(labels[o] in wanted) for o in OBSERVATIONS]


def chexpert_f1(predictions: Sequence[str], references: Sequence[str],
                uncertain_as_positive: bool = False) -> dict[str, float]:
    """Micro and macro F1 of positive findings, generated report vs reference report.

    Macro averages the observations that are positive in at least one reference
    or prediction (F1 is undefined for the others, and counting them as 0 or 1
    would only reflect which findings the test set happens to lack).
    """
    tp = [0] * len(OBSERVATIONS)
    fp = [0] * len(OBSERVATIONS)
    fn = [0] * len(OBSERVATIONS)
    for pred, ref in zip(predictions, references, strict=True):
        p = positive_vector(label_report(pred), uncertain_as_positive)
        r = positive_vector(label_report(ref), uncertain_as_positive)
        for i, (a, b) in enumerate(zip(p, r)):
            tp[i] += a and b
            fp[i] += a and not b
            fn[i] += b and not a

    def f1(t: int, f_p: int, f_n: int) -> float:
        return 2 * t / (2 * t + f_p + f_n) if t + f_p + f_n else 0.0

    defined = [i for i in range(len(OBSERVATIONS)) if tp[i] + fp[i] + fn[i]]
    return {
        "chexpert_micro_f1": f1(sum(tp), sum(fp), sum(fn)),
        "chexpert_macro_f1": sum(f1(tp[i], fp[i], fn[i]) for i in defined) / len(defined) if defined else 0.0,
    }


# -- the CheXpert labeler's own command line and CSV formats -------------------------------------------

# The labeler's column order (stanfordmlgroup/chexpert-labeler): No Finding first.
LABELER_COLUMNS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
_CELL = {POSITIVE: "1.0", NEGATIVE: "0.0", UNCERTAIN: "-1.0", None: ""}  # as the labeler's pandas writes them


def label_csv(reports_path: str | Path, output_path: str | Path) -> int:
    """Label a headerless one-report-per-row CSV into the labeler's output CSV (``Reports`` + 14 columns of
    1.0 / 0.0 / -1.0 / blank). Returns the number of reports."""
    import csv

    with open(reports_path, newline="", encoding="utf-8") as fh:
        reports = [row[0] if row else "" for row in csv.reader(fh)]
    with open(output_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("Reports", *LABELER_COLUMNS))
        for report in reports:
            labels = label_report(report)
            writer.writerow((report, *(_CELL[labels[column]] for column in LABELER_COLUMNS)))
    return len(reports)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Label radiology reports as the CheXpert labeler's CLI does "
                                                 "(same input and output CSV formats), with this project's rules.")
    parser.add_argument("--reports_path", required=True, help="headerless CSV, one report per row")
    parser.add_argument("--output_path", default="labeled_reports.csv")
    args = parser.parse_args(argv)
    n = label_csv(args.reports_path, args.output_path)
    print(f"labelled {n} reports -> {args.output_path}")


if __name__ == "__main__":
    main()
