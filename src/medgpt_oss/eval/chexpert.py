"""A CheXpert-style rule-based labeler of the 14 CheXpert observations, offline.

Mentions come from the CheXpert labeler's own phrase lists (shipped as package
data in ``chexpert_phrases/``, MIT licence), widened to whole words, overlapping
ones of an observation merged ("the heart" + "heart size"). The original
classifies each mention with Semgrex patterns over a dependency parse
(``patterns/`` in the labeler); we have no parser, so this module applies a
**simplified rule set in the spirit of those patterns**, within the mention's
clause. A *predicate* is what follows the mention's subject, copula optional;
the subject may be a list closed by "and" ("the heart, pulmonary XXXX and
mediastinum are within normal limits", "heart size and mediastinal contour
normal"), so a predicate covers every listed mention. A *cue* precedes the
mention; its scope runs across a list ("no effusion, pneumothorax or
consolidation") but ends at a comma that starts an item with its own state
("no effusion, mild atelectasis"), at a copula (for negation), and -- for cues
that do not head lists ("normal", "resolved") -- at any comma unless the cue
starts its clause. In order:

1. negated uncertainty -- cue "cannot exclude", "no new"; predicate "cannot be
   excluded", "not ruled out"                                   -> uncertain
2. negating predicate -- "not", "normal", "unremarkable", "within normal
   limits", "resolved", "cleared", "clear", "absent"             -> negative
3. (structures, below) abnormal predicate "enlarged", "prominent" -> positive
4. negation cue -- "no", "without", "negative for", "free of", "clear of",
   "resolution of", "normal", "resolved", ...                    -> negative
5. uncertainty -- predicate "may be", "likely", "possible", "borderline", or a
   cue "possible", "may", "suggest...", "concern for", ...; or next to "or" /
   "versus" ("atelectasis or pneumonia"). A verb that interprets an observed
   finding leaves its subject alone: in "opacity may represent atelectasis"
   only the atelectasis is uncertain                             -> uncertain
6. otherwise                                                     -> positive

Cardiac and mediastinal phrases that name a structure, not a finding ("heart
size", "cardiac silhouette", "mediastinum"), are positive only when stated
abnormal ("enlarged", "prominent", "widened", ...); "stable"/"unchanged" also
negates them ("stable heart size", but "stable enlargement of the heart" stays
positive), and a sentence that says nothing about them leaves them unmentioned.
Rewrites first: "upper limits of normal"/"top normal" -> borderline (uncertain,
not normal); "no (interval) change in X" -> "unchanged" (it does not negate X);
"not well seen" -> uncertain.

A clause ends at sentence punctuation, ";", ":" and words that start a new
statement ("but", "however", "although", "which", "with", ", otherwise", "and
there/is/are"); "and the/a" also ends it for cues ("no effusion and the heart
is enlarged") but not for a subject list ("the heart and the mediastinum are
normal"). A break is zero-width before the next word, so it never swallows part
of a mention. A plain comma does not end a clause. Aggregation follows the
labeler: per observation positive beats uncertain beats negative; "chf"/"heart
failure" make Cardiomegaly at least uncertain; No Finding is positive only when
nothing but Support Devices is positive or uncertain (the ``no_finding`` phrases
are other findings that also rule it out).

Known gaps versus the parser: the comma heuristics ("no effusion, left basilar
atelectasis" still negates both; "mild cardiomegaly, lungs and pleura are clear"
makes a list of the wrong words), long-range dependencies, history ("prior
granulomatous infection", "old rib fractures" are positive), and hedges the
lists lack. Agreement with human IU X-ray labels: ``chexpert_agreement.py``.
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

# Clause breaks. "and" breaks only before a new subject, and only "and" itself is the break (a lookahead, not
# part of the match) so a break never swallows the words of a mention ("... and the heart is enlarged").
_CLAUSE_BREAK = re.compile(
    r"[;:]|\b(?:but|however|although|though|except|aside from|apart from|whereas|which|with|while)\b|"
    r",\s*otherwise\b|\band(?= (?:there|is|are)\b)"
)
# "and the/a" starts a new clause for cues before a mention ("no effusion and the heart is enlarged") but
# not for a list of subjects before its predicate ("the heart and the mediastinum are normal").
_AND_ARTICLE = re.compile(r"\band(?= (?:the|a|an)\b)")

_COPULA = r"(?:is|are|was|were|be|been|has|have|had|appears?|remains?|seems?|looks?)"
# Words that state something about a noun: they end a subject list ("heart size enlarged, lungs clear").
_STATE = (r"(?:enlarg\w*|large[rd]?|increas\w*|decreas\w*|prominen\w*|widen\w*|new|worse\w*|abnormal\w*|small|"
          r"tiny|trace|minimal|mild|moderate|severe|marked|stable|unchanged|persistent|chronic|residual|again|"
          r"improv\w*|borderline)\b")
_HALT = (rf"(?:{_COPULA}|{_STATE}|not|no|nor|without|may|might|could|can|cannot|will|would|should|there|seen|"
         r"noted|identified|present|demonstrated|visualized|evident|likely|possibl\w*|probabl\w*|suspect\w*|"
         r"cleared|resolved|normal|unremarkable|clear)\b")
_SUBJECT = re.compile(rf"(?:[\s,]+(?!{_HALT})[\w/'&-]+)*?")  # the rest of a subject (list) after the mention
_ADVERB = rf"(?!(?:{_STATE}|and|or|but)\b)[\w-]+"
_VERB = re.compile(rf"\b(?:{_COPULA}|there)\b")
# States that, after a comma, start a list item with its own status ("no effusion, mild atelectasis"); not
# "large", which negated lists use as a hedge ("no consolidation, large effusion, or pneumothorax").
_ITEM_STATE = (r"(?:mild|moderate|severe|marked|small|tiny|trace|minimal|stable|unchanged|persistent|chronic|"
               r"residual|again|new|increas\w*|decreas\w*|improv\w*|worse\w*|borderline|there)\b")

# Predicates (after the mention's subject, with or without a copula) and cues (before the mention).
_NEG_UNCERTAIN_PRED = r"(?:cannot|can not|could not|can't|not) (?:be )?(?:excluded|ruled out)"
_NEG_UNCERTAIN_CUE = re.compile(
    r"\b(?:(?:cannot|can not|could not|can't|difficult to|not) (?:exclude|rule out)|no new)\b")
_NEG_PRED = (r"(?:not|no longer|normal|unremarkable|within (?:normal )?limits|resolved|absent|removed|cleared|clear|"
             r"negative)")
_STRUCTURE_NEG_PRED = rf"(?:{_NEG_PRED}|stable|unchanged|similar)"
_UNCERTAIN_WORD = (r"(?:possible|possibly|probable|probably|presumabl\w*|presumed|questionabl\w*|question of|"
                   r"suspect\w*|suspicious|suspicion|concern for|concerning for|may|might|could|likely|versus|vs|"
                   r"differential|borderline|suggest\w*|worrisome|equivocal|indeterminate|poorly seen|obscur\w*)")
# As a predicate, hedges and modals make their subject uncertain ("atelectasis may be present", "effusion is
# possible"), but verbs that interpret an observed finding do not ("opacity may represent atelectasis",
# "opacity suspicious for pneumonia", "no opacity to suggest pneumonia": only the pneumonia is uncertain).
_UNCERTAIN_PRED = (r"(?:possible|possibly|probable|probably|presumabl\w*|presumed|questionabl\w*|suspected|"
                   r"likely|may|might|could|borderline|equivocal|indeterminate|poorly seen|obscured)"
                   r"(?! (?:represent|reflect|indicate|relate|suggest|be due|be related|be secondary))")
_ABNORMAL = r"(?:enlarg\w*|large[r]?|increas\w*|prominen\w*|widen\w*|abnormal\w*|cardiomegaly)"
_LIST_CUE = (r"(?:no|without|negative for|free of|absence of|clear of|clearing of|resolution of|removal of|rule out|"
             r"ruled out|exclude)")  # cues that head a list: "no effusion, pneumothorax or consolidation"
_NEG_CUE = re.compile(rf"\b(?:{_LIST_CUE}|not|absent|excluded|resolved|never|normal|unremarkable)\b")
# negates a structure ("stable heart size"), not an abnormality after it ("stable enlargement of the heart")
_STABLE_CUE = re.compile(r"\b(?:stable|unchanged)\b")
_UNCERTAIN_CUE = re.compile(rf"\b{_UNCERTAIN_WORD}\b")
_ABNORMAL_CUE = re.compile(rf"\b{_ABNORMAL}\b")
_OR_AFTER = re.compile(r"^(?:\s+[\w-]+){0,2}?\s+(?:and/)?(?:or|versus|vs)\b")
_OR_BEFORE = re.compile(r"\b(?:or|versus|vs)\.?(?:\s+[\w-]+){0,2}?\s*$")

# Cardiac and mediastinal mentions that name a structure, not a finding ("heart size", "the mediastinum"):
# they are positive only when stated abnormal, and "stable"/"unchanged" negates them.
_STRUCTURE_OBSERVATIONS = ("Cardiomegaly", "Enlarged Cardiomediastinum")

# Rewrites before matching: "upper limits of normal" is borderline, not normal; "no change in X" describes
# X, it does not negate it; "not well seen" is uncertain, not negative.
_REWRITES = (
    (re.compile(r"\b(?:upper|high|top)[- ](?:(?:limits?|range|end) (?:of )?(?:the )?)?normal\b"), "borderline"),
    (re.compile(r"\b(?:no|without) (?:[\w-]+ ){0,2}?changes?\b|\bnot (?:[\w-]+ )?changed\b"), "unchanged"),
    (re.compile(r"\bnot well[- ](?:seen|visualized|evaluated|assessed)\b"), "poorly seen"),
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
    # A period ends a sentence before whitespace, or between two words ("atelectasis.catheter"), but not
    # inside a number ("3.4 cm"); whitespace is collapsed.
    parts = re.split(r"(?<=[.!?])\s+|(?<=[a-z]{2}\.)(?=[a-z])|\n", report.lower())
    out = []
    for s in parts:
        s = " ".join(s.split())
        for pattern, repl in _REWRITES:
            s = pattern.sub(repl, s)
        if s:
            out.append(s)
    return out


def _clause_bounds(sentence: str, start: int, end: int, breaks: re.Pattern = _CLAUSE_BREAK) -> tuple[int, int]:
    left, right = 0, len(sentence)
    for m in breaks.finditer(sentence):
        if m.end() <= start:
            left = max(left, m.end())
        elif m.start() >= end:
            right = min(right, m.start())
    return left, right


def _predicate(after: str, predicate: str) -> bool:
    """Whether the text after a mention is the rest of its subject, then ``predicate`` (copula optional):
    "[heart size] and mediastinal contours are within normal limits"."""
    m = re.match(rf"({_SUBJECT.pattern})\s+(?:{_COPULA}\s+(?:{_ADVERB}\s+){{0,2}}?)?{predicate}\b", after)
    # a comma inside the subject must belong to a list closed by "and": "A, B and C are normal" (but not
    # "effusion at the left base, lungs are clear")
    return bool(m) and ("," not in m.group(1) or re.search(r"\b(?:and|&)\b[^,]*$", m.group(1)) is not None)


def _reaches(before: str, cue: re.Pattern, list_cues: str | None, verbs_halt: bool) -> bool:
    """Whether a cue in ``before`` (the clause up to the mention) has the mention in its scope. The scope runs
    across a list ("no effusion, pneumothorax or consolidation") but ends at a comma that starts an item with
    its own state ("no effusion, mild atelectasis"), and, for negation, at a verb. Cues that are not list
    heads ("normal", "resolved") cross a comma only at the start of their clause ("normal heart size,
    mediastinum and hila", not "heart size normal, left base atelectasis")."""
    for m in cue.finditer(before):
        gap = before[m.end():]
        items = gap.split(",")
        if len(gap.split()) > 12 or (verbs_halt and _VERB.search(gap)):
            continue
        if any(re.search(rf"\b{_ITEM_STATE}", item) for item in items[1:]):
            continue
        if len(items) > 1 and not (list_cues and re.fullmatch(list_cues, m.group(0))):
            if re.search(r"\w", re.sub(r"\b(?:the|a|an|otherwise|overall|and|there (?:is|are))\b", "",
                                       before[:m.start()])):
                continue
        return True
    return False


def classify_mention(sentence: str, start: int, end: int, structure: bool = False) -> int | None:
    """POSITIVE / NEGATIVE / UNCERTAIN for the mention at ``sentence[start:end]``; None for a structure
    mention ("heart size") that the sentence states nothing abnormal about."""
    left, right = _clause_bounds(sentence, start, end)
    cue_left = _clause_bounds(sentence, start, end, _AND_ARTICLE)[0]
    before, after = sentence[max(left, cue_left):start], sentence[end:right]
    if _NEG_UNCERTAIN_CUE.search(before) or _predicate(after, _NEG_UNCERTAIN_PRED):
        return UNCERTAIN
    # the mention's own predicate decides before a cue further left: "no effusion, heart size is enlarged"
    if _predicate(after, _STRUCTURE_NEG_PRED if structure else _NEG_PRED):
        return NEGATIVE
    if structure and _predicate(after, _ABNORMAL):
        return POSITIVE
    if _reaches(before, _NEG_CUE, _LIST_CUE, verbs_halt=True) or (
            structure and _reaches(before, _STABLE_CUE, None, verbs_halt=True)
            and not _ABNORMAL_CUE.search(before[_STABLE_CUE.search(before).end():])):
        return NEGATIVE
    if (_predicate(after, _UNCERTAIN_PRED) or _reaches(before, _UNCERTAIN_CUE, None, verbs_halt=False)
            or _OR_AFTER.search(after) or _OR_BEFORE.search(before)):
        return UNCERTAIN
    if structure:
        return POSITIVE if _reaches(before, _ABNORMAL_CUE, None, verbs_halt=False) else None
    return POSITIVE


def _mentions(sentence: str, observation: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """Mention spans, widened to whole words, overlapping ones merged ("the heart" + "heart size")."""
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
            s, e = m.start() + (phrase[0] == " "), m.end() - (phrase[-1] == " ")
            while s > 0 and padded[s - 1].isalnum():
                s -= 1
            while e < len(padded) and padded[e].isalnum():
                e += 1
            found.append((s - 1, e - 1, phrase.strip()))
    merged: list[tuple[int, int, tuple[str, ...]]] = []
    for s, e, phrase in sorted(found):
        if merged and s < merged[-1][1]:
            ms, me, phrases = merged[-1]
            merged[-1] = (ms, max(me, e), (*phrases, phrase))
        else:
            merged.append((s, e, (phrase,)))
    return merged


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
            for start, end, phrases in _mentions(sentence, observation):
                structure = observation in _STRUCTURE_OBSERVATIONS and not any(
                    _ABNORMAL_CUE.search(p) for p in phrases)  # "heart size", not "cardiomegaly"
                label = classify_mention(sentence, start, end, structure)
                if label is None:
                    continue
                if observation != "Support Devices" and label in (POSITIVE, UNCERTAIN):
                    no_finding = False
                if observation == "No Finding":
                    continue  # its phrases are "other findings": they only rule No Finding out
                if label in (POSITIVE, UNCERTAIN) and {"chf", "heart failure"} & set(phrases):
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
