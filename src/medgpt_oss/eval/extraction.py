"""Answer extraction: model output text -> the answer it commits to, or ``None``.

The protocol (MedGPT-oss report): answers are structured, and an answer that
cannot be parsed is *wrong*, never guessed. So every extractor here returns
``None`` when the output is ambiguous or badly formatted, and the scorer counts
``None`` as incorrect. All matching is on whole words: ``'no' in pred`` would
read "normal", "not" and "know" as "no" (a bug seen in MedEvalKit).

Pure functions, no model, no I/O; tested table-driven in tests/test_eval_extraction.py.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

# "The answer is", "Answer:", "Final answer -" ... in front of the committed answer.
_ANSWER_LEAD = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence)[,\s]+)?(?:the\s+)?(?:final\s+|correct\s+|best\s+)?"
    r"(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
# "... the answer is (C)" anywhere: the *last* such statement is the conclusion.
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)\s*(?:is|would be|:)\s*:?\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_ARTICLES = {"a", "an", "the"}


# -- normalisation -------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-case; drop punctuation (keeping decimal points), articles; number words -> digits.

    "The Left Lung." -> "left lung"; "Two" -> "2"; "3.40 cm" -> "3.4 cm".
    """
    words = []
    for word in _WORD.findall(text.lower().replace("’", "'")):
        if word in _ARTICLES:
            continue
        word = _NUMBER_WORDS.get(word, word)
        if re.fullmatch(r"\d+\.\d+", word):  # "3.40" == "3.4", "2.0" == "2"
            word = word.rstrip("0").rstrip(".")
        words.append(word)
    return " ".join(words)


def strip_answer_lead(text: str) -> str:
    """Remove a leading "The answer is" / "Answer:" so the answer itself comes first."""
    return _ANSWER_LEAD.sub("", text.strip(), count=1)


def first_statement(text: str) -> str:
    """The first line/sentence: open answers are short, and what follows is explanation.

    A period only ends a sentence when whitespace follows, so "3.4 cm" survives.
    """
    text = strip_answer_lead(text)
    line = text.strip().split("\n", 1)[0]
    return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0]


# -- shared helpers ------------------------------------------------------------------------------

def _boxed(output: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (``\\text{}`` unwrapped), if any."""
    found = _BOXED.findall(output)
    if not found:
        return None
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", found[-1]).strip()


def _after_last_statement(output: str) -> str | None:
    """Text after the last "answer is" / "Answer:" / "option is", if any."""
    matches = list(_ANSWER_IS.finditer(output))
    return output[matches[-1].end():] if matches else None


# -- closed sets: yes/no, yes/no/maybe ---------------------------------------------------------

def extract_label(output: str, labels: Sequence[str] = ("yes", "no")) -> str | None:
    """The closed-set label the output commits to, from its first word or "the answer is X".

    Strict on purpose: "No." and "Yes, there is ..." count; "There is no effusion"
    does not (the question asked for yes or no, and a badly formatted answer is wrong).
    """
    wanted = {label.lower(): label for label in labels}

    def first_word(text: str) -> str | None:
        words = _WORD.findall(text.lower())
        return wanted.get(words[0]) if words else None

    boxed = _boxed(output)
    if boxed is not None:
        words = _WORD.findall(boxed.lower())
        return wanted.get(words[0]) if len(words) == 1 else None
    if _hedges(strip_answer_lead(output), wanted):  # "Yes/no", "yes or no": both asserted, neither answered
        return None
    lead = first_word(strip_answer_lead(output))
    if lead:
        return lead
    stated = _after_last_statement(output)
    return first_word(stated) if stated is not None else None


def _hedges(text: str, labels: Mapping[str, str]) -> bool:
    """Whether ``text`` opens with two different labels joined as alternatives ("yes/no", "No or yes")."""
    words = "|".join(re.escape(label) for label in labels)
    m = re.match(rf"\W*({words})\s*(?:/|\||\bor\b|\band\b)\s*({words})\b", text.lower())
    return bool(m) and m.group(1) != m.group(2)


def extract_yes_no(output: str) -> str | None:
    return extract_label(output, ("yes", "no"))


# -- multiple choice ------------------------------------------------------------------------------

def _letter_in(fragment: str, letters: str) -> str | None:
    """An option letter leading ``fragment``: "C", "(C)", "C)", "C.", "C:", "**C**", "C - text".

    Upper case only and followed by a delimiter, so the article in "A nodule is
    seen" and the pronoun in "I think" are not read as options A and I.
    """
    s = fragment.strip().strip("*_`' ").lstrip("[")
    m = re.match(rf"\(([{letters}])\)", s) or re.match(
        rf"([{letters}])(?:[.):\],]|\s*$|\s+[-–—]\s|\s+is\s+(?:the\s+)?(?:correct|right|answer|best))", s)
    return m.group(1) if m else None


def _several_letters(fragment: str, letters: str) -> bool:
    """Whether ``fragment`` opens with two different option letters given together ("B, C", "(B) and (D)")."""
    m = re.match(rf"\W*\(?([{letters}])\)?\s*(?:,|/|&|\band\b|\bor\b)\s*\(?([{letters}])\b\)?",
                 fragment.strip().strip("*_`' "))
    return bool(m) and m.group(1) != m.group(2)


def _option_text_match(output: str, options: Mapping[str, str]) -> str | None:
    """The one option whose text the output states (a longer match wins over its substrings)."""
    said = f" {normalize_answer(first_statement(output))} "
    hits = {}
    for letter, text in options.items():
        norm = normalize_answer(str(text))
        if norm and f" {norm} " in said:
            hits[letter] = norm
    # "aspiration pneumonia" also contains option "pneumonia": keep only maximal matches.
    maximal = [k for k, v in hits.items() if not any(v != w and f" {v} " in f" {w} " for w in hits.values())]
    return maximal[0] if len(maximal) == 1 else None


def extract_choice(output: str, options: Mapping[str, str]) -> str | None:
    """The option letter the output commits to, or ``None`` (wrong) when none or several.

    Accepted, in order: ``\\boxed{C}``; "the answer is (C)" (its last statement);
    an output that starts with the letter ("C", "(C)", "C)", "C. Pneumonia");
    the text of exactly one option. "A nodule is seen" is not option A.
    """
    letters = "".join(sorted(k.upper() for k in options))
    if not letters:
        return None
    if any(_several_letters(fragment, letters) for fragment in (
            _boxed(output) or "", _after_last_statement(output) or "", strip_answer_lead(output))):
        return None  # "B, C" or "B and C": several answers to a one-answer question are no answer
    boxed = _boxed(output)
    if boxed is not None:
        return _letter_in(boxed, letters) or _option_text_match(boxed, options)
    stated = _after_last_statement(output)
    if stated is not None:
        found = _letter_in(stated, letters) or _option_text_match(stated, options)
        if found:
            return found
    return _letter_in(strip_answer_lead(output), letters) or _option_text_match(output, options)


# -- open answers ------------------------------------------------------------------------------

def extract_open(output: str) -> str:
    """The answer phrase of an open question: the first statement, normalised."""
    return normalize_answer(first_statement(output))


def token_scores(prediction: str, gold: str) -> dict[str, float]:
    """Token precision/recall/F1 of normalised words (SQuAD style; recall is LLaVA-Med's open metric).

    precision = overlap / predicted tokens, recall = overlap / gold tokens -- not swapped.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        exact = float(pred == ref)
        return {"precision": exact, "recall": exact, "f1": exact}
    overlap = sum((Counter(pred) & Counter(ref)).values())
    precision, recall = overlap / len(pred), overlap / len(ref)
    f1 = 0.0 if overlap == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def open_exact_match(output: str, gold: str) -> bool:
    extracted = extract_open(output)
    return bool(extracted) and extracted == normalize_answer(gold)


__all__ = [
    "extract_choice", "extract_label", "extract_open", "extract_yes_no", "first_statement",
    "normalize_answer", "open_exact_match", "strip_answer_lead", "token_scores",
]

