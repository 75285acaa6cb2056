"""Answer extraction: model output text -> the answer it commits to, or ``None``.

The protocol (MedGPT-oss report): answers are structured, and an answer that
cannot be parsed is *wrong*, never guessed. So every extractor here returns
``None`` when the output is ambiguous or badly formatted, and the scorer counts
``None`` as incorrect. All matching is on whole words: ``'no' in pred`` would
read "normal", "not" and "know" as "no" (a bug seen in MedEvalKit).

Rules, in brief (docs/evaluation.md has the long form):

- Markdown emphasis is ignored: "**B.**", "*(C)*", "__D)__" are B, C, D; "**Answer**: Yes" is yes.
- Multiple choice: ``\\boxed{C}``, else the last "the answer/option is C" / "I choose option C",
  else the letter leading the first line ("C", "(c)", "C.", "C) text", "Option C", "C" alone with an
  explanation below), else the text of exactly one option. Only the item's letters count; a bare
  letter needs a delimiter after it ("A chest radiograph", "I think", "E.g." are no letters); a
  lower-case one counts after "option", as "c)" or alone on its line. Two letters given together
  on one line ("B, C", "C/D") are no answer; letters named on later lines are explanation.
- Open answers: the first line up to its first sentence end; a decimal point or an abbreviation
  ("vs.", "approx.", "e.g.", "Dr.", "No. 5") ends nothing. Prediction and gold are normalised alike:
  lower case, punctuation and articles dropped, number words to digits ("twenty-one" -> "21",
  "one hundred" -> "100"), "3.40" -> "3.4", a number glued to a unit split ("1.5cm." -> "1.5 cm").

Pure functions, no model, no I/O; tested table-driven in tests/test_eval_extraction.py.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence

# "The answer is", "Answer:", "Final answer -" ... in front of the committed answer.
_ANSWER_LEAD = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence)[,\s]+)?(?:the\s+)?(?:final\s+|correct\s+|best\s+)?"
    r"(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
# "... the answer is (C)", "I choose option D" anywhere: the *last* such statement is the conclusion.
_ANSWER_IS = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|would be|:)\s*:?\s*"
    r"|\bI(?:\s+would|'d|\s+will)?\s+(?:choose|select|pick|go\s+with)\s+", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
# Markdown emphasis ("**B.**", "__D)__", "`C`") carries no answer: dropped before extraction.
_EMPHASIS = re.compile(r"[*_`]+")

# A period after these does not end the first statement ("vs. pneumonia", "approx. 2 cm", "No. 5").
_ABBREVIATIONS = r"vs|approx|ca|cf|dr|mr|mrs|prof|st|etc|fig|al|viz|e\.g|i\.e"
_FIRST_STATEMENT = re.compile(
    rf"(?:\b(?:{_ABBREVIATIONS})\.|\bno\.(?=\s*\d)|[.!?](?!\s)|[^.!?])*[.!?]?", re.IGNORECASE)
# Units a number may be glued to ("1.5cm" -> "1.5 cm"); a closed list, so "3rd" or "h2o" stay whole.
_UNITS = (r"mm|cm|km|m|ml|dl|l|cc|mcg|ug|ng|mg|g|kg|mmol|mol|meq|iu|mmhg|cmh2o|hu|bpm|hz|khz|mhz"
          r"|sec|min|hrs?|h|wks?|yrs?|kv|kvp|kev|mev|mas|gy|cgy|mgy|msv|sv|mci|mbq|mm2|cm2|mm3|cm3")
_GLUED_UNIT = re.compile(rf"(?<=\d)(?=(?:{_UNITS})\b)|(?<=\d)(?=x\d)|(?<=\dx)(?=\d)")
_CHARACTERS = str.maketrans({"’": "'", "×": "x", "µ": "u", "μ": "u"})  # "2×3 µm" == "2 x 3 um"

_UNIT_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
               " fifteen sixteen seventeen eighteen nineteen").split()
_NUMBER_WORDS = {w: n for n, w in enumerate(_UNIT_WORDS)} | {
    w: 10 * n for n, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000}
_ARTICLES = {"a", "an", "the"}


# -- normalisation -------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-case; drop punctuation (keeping decimal points), articles; number words -> digits;
    a number glued to a unit split from it.

    "The Left Lung." -> "left lung"; "Two" -> "2"; "twenty-one" -> "21"; "one hundred and five"
    -> "105"; "3.40 cm" -> "3.4 cm"; "1.5cm." -> "1.5 cm"; "2x3 cm" -> "2 x 3 cm".
    """
    text = _GLUED_UNIT.sub(" ", text.lower().translate(_CHARACTERS))
    words = []
    for word in _number_words_to_digits([w for w in _WORD.findall(text) if w not in _ARTICLES]):
        if re.fullmatch(r"\d+\.\d+", word):  # "3.40" == "3.4", "2.0" == "2"
            word = word.rstrip("0").rstrip(".")
        words.append(word)
    return " ".join(words)


def _number_words_to_digits(words: list[str]) -> list[str]:
    """Each run of number words that spells one number ("twenty one", "one hundred and five") -> digits.

    A word that cannot continue the number read so far starts a new one, so "two three" stays
    "2 3" and "nineteen ninety" "19 90"; "and" is dropped only inside a number.
    """
    out: list[str] = []
    total = part = None  # the number being read: completed thousands/millions + the part below
    last = ""  # the previous word's kind: "small" (< 20), "tens", "scale"
    for i, word in enumerate(words):
        value, scale = _NUMBER_WORDS.get(word), _SCALES.get(word)
        if part is not None:
            if value is not None and ((last == "tens" and 0 < value < 10) or (last == "scale" and part % 100 == 0)):
                part += value  # "twenty" + "one", "hundred" + "five"
            elif scale == 100 and 0 < part < 100 and last != "scale":
                part *= 100  # "three" + "hundred"
            elif scale is not None and scale > 100 and part > 0:
                total, part = total + part * scale, 0  # "two (hundred)" + "thousand"
            elif word == "and" and last == "scale" and i + 1 < len(words) and words[i + 1] in _NUMBER_WORDS:
                continue  # "one hundred and five"
            else:
                out.append(str(total + part))
                total = part = None
        if part is None:
            if value is None and scale is None:
                out.append(word)
                continue
            # a new number; a bare scale is one of it ("a hundred", the article already dropped)
            total, part = (0, value) if scale is None else (0, scale) if scale == 100 else (scale, 0)
        last = "scale" if scale else "tens" if value >= 20 else "small"
    if part is not None:
        out.append(str(total + part))
    return out


def strip_answer_lead(text: str) -> str:
    """Remove a leading "The answer is" / "Answer:" so the answer itself comes first."""
    return _ANSWER_LEAD.sub("", text.strip(), count=1)


def first_statement(text: str) -> str:
    """The first line/sentence: open answers are short, and what follows is explanation.

    A period only ends a sentence when whitespace follows ("3.4 cm" survives) and not after an
    abbreviation: "Approx. 2 cm vs. 3 cm", "e.g.", "Dr.", "St.", "etc.", "No. 5" stay whole.
    """
    line = strip_answer_lead(text).strip().split("\n", 1)[0]
    return _FIRST_STATEMENT.match(line).group().strip()


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
    output = _EMPHASIS.sub("", output)  # "**Answer**: Yes"

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

# How an option letter is written when it *is* the answer ({U}/{l}: the item's letters, upper/lower
# case), optionally after "option"/"choice". A bare letter needs a delimiter after it, so the article
# in "A nodule is seen", the pronoun in "I think" and the "E" of "E.g." are not options A, I and E; a
# bare lower-case letter counts only after "option", as "c)" or alone on its line ("a" is an article).
_DELIMITED = (r"(?=\.(?![A-Za-z]\.)|[:),\]]|[\"'”’](?!\w)|[ \t]*$|\s+[-–—]\s"  # "C.", "C)", "C" + line end
              r"|\s+is\s+(?:the\s+)?(?:correct|right|answer|best))")  # "C - text", "C is correct"
_LETTER_FORMS = (
    r"\(([{U}{l}])\)",  # "(C)", "(c)"
    r"\[([{U}{l}])\]",  # "[C]"
    r"([{U}])" + _DELIMITED,
    r"(?i:option|choice)\s+([{l}])" + _DELIMITED,  # "option b, because ..."
    r"([{l}])(?=\)|\.?[ \t]*$)",  # "c)", "c", "c."
)
_OPTION_WORD = r"(?:(?i:option|choice)\s+)?"
# Two letters joined as alternatives on one line ("B, C", "(b) or (d)", "C/D"); an explanation on a
# later line ("B\nOption A is wrong because ...") is not a second answer.
_TWO_LETTERS = (r"[^\w(]*{opt}(?:\(([{U}{l}])\)|\(?([{U}])\b\)?)[ \t]*(?:,|/|&|\band\b|\bor\b)[ \t]*"
                r"{opt}(?:\(([{U}{l}])\)|\(?([{U}])\b\)?)")


@functools.lru_cache(maxsize=32)
def _letter_patterns(letters: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(one letter, two letters) patterns for an item whose option letters are ``letters`` (upper case)."""
    fill = {"U": re.escape(letters), "l": re.escape(letters.lower()), "opt": _OPTION_WORD}
    one = (_OPTION_WORD + "(?:" + "|".join(_LETTER_FORMS) + ")").format(**fill)
    return re.compile(one, re.MULTILINE), re.compile(_TWO_LETTERS.format(**fill))


def _letter_in(fragment: str, keys: Mapping[str, str]) -> str | None:
    """The option key whose letter leads ``fragment`` in one of the ``_LETTER_FORMS``."""
    m = _letter_patterns("".join(keys))[0].match(fragment.strip().lstrip("'\""))
    return keys[next(g for g in m.groups() if g).upper()] if m else None


def _several_letters(fragment: str, keys: Mapping[str, str]) -> bool:
    """Whether ``fragment`` opens with two different option letters given together ("B, C", "(B) and (D)")."""
    m = _letter_patterns("".join(keys))[1].match(fragment.strip())
    return bool(m) and len({g.upper() for g in m.groups() if g}) == 2


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

    Accepted, in order: ``\\boxed{C}``; the last "the answer is (C)" / "I choose option C";
    an output whose first line starts with the letter ("C", "(C)", "C)", "C. Pneumonia", "Option C",
    "C" alone with the explanation below); the text of exactly one option. Emphasis is ignored
    ("**B.**"). Only the item's own letters count, and "A nodule is seen" is not option A.
    """
    output = _EMPHASIS.sub("", output)
    keys = {str(k).upper(): k for k in options if len(str(k)) == 1}
    if not keys:
        return None
    if any(_several_letters(fragment, keys) for fragment in (
            _boxed(output) or "", _after_last_statement(output) or "", strip_answer_lead(output))):
        return None  # "B, C" or "B and C": several answers to a one-answer question are no answer
    boxed = _boxed(output)
    if boxed is not None:
        return _letter_in(boxed, keys) or _option_text_match(boxed, options)
    stated = _after_last_statement(output)
    if stated is not None:
        found = _letter_in(stated, keys) or _option_text_match(stated, options)
        if found:
            return found
    # the raw output first: stripping the lead "Option" would lose what makes "option b, ..." a letter
    return (_letter_in(output, keys) or _letter_in(strip_answer_lead(output), keys)
            or _option_text_match(output, options))


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

