"""Answer extraction, table-driven, with the adversarial cases that break substring matching."""

import pytest

from medgpt_oss.eval.extraction import (
    extract_choice,
    extract_label,
    extract_open,
    extract_yes_no,
    normalize_answer,
    open_exact_match,
    token_scores,
)

YES_NO = [
    ("Yes", "yes"), ("yes.", "yes"), ("No.", "no"), ("NO", "no"), ("**Yes**", "yes"),
    ("Yes, there is a small effusion.", "yes"), ("No, the heart is normal.", "no"),
    ("The answer is no.", "no"), ("Answer: Yes", "yes"), ("\\boxed{no}", "no"),
    ("Looking at the lungs... so the answer is yes", "yes"),
    # "no" as a substring, or a hedge, is not an answer: unparseable -> None -> wrong
    ("Normal", None), ("normal heart size", None), ("not sure", None), ("I don't know", None),
    ("There is no effusion", None), ("None", None), ("Nodule present", None), ("Knowing the anatomy", None),
    ("", None), ("yesterday's film", None), ("\\boxed{yes or no}", None), ("Maybe", None),
    # both asserted as alternatives: a hedge, not the first word
    ("Yes/no", None), ("yes or no", None), ("Yes and no.", None), ("No / yes", None),
    ("Yes, no effusion is seen.", "yes"),  # a comma starts the explanation, not an alternative
]


@pytest.mark.parametrize("output,expected", YES_NO)
def test_yes_no(output, expected):
    assert extract_yes_no(output) == expected


def test_yes_no_maybe_label_set():
    labels = ("yes", "no", "maybe")
    assert extract_label("Maybe.", labels) == "maybe"
    assert extract_label("maybe not", labels) == "maybe"
    assert extract_label("Perhaps", labels) is None


OPTIONS = {"A": "Pneumonia", "B": "Aspiration pneumonia", "C": "Asthma", "D": "Heart failure"}
CHOICE = [
    ("B", "B"), ("(B)", "B"), ("B)", "B"), ("B.", "B"), ("B: Aspiration pneumonia", "B"), ("**C**", "C"),
    ("B. Aspiration pneumonia", "B"), ("The answer is C.", "C"), ("the correct option is (D)", "D"),
    ("Answer: A", "A"), ("\\boxed{C}", "C"), ("\\boxed{\\text{D}}", "D"), ("C is correct.", "C"),
    ("I think the answer is (D).", "D"),  # "I" is a letter of 10-option sets, not an answer here
    ("The answer is C. Wait, on reflection the answer is D.", "D"),  # the last statement is the conclusion
    ("Aspiration pneumonia", "B"),  # the longest matching option text wins over its substring "pneumonia"
    ("Pneumonia.", "A"), ("heart failure", "D"),
    # not answers: the article "A", several letters, a letter outside the options, prose
    ("A nodule is seen in the right lung.", None), ("A or B", None), ("E", None), ("(E)", None),
    ("Pneumonia or asthma", None), ("It depends on the history.", None), ("", None),
    # several letters given as the answer: no answer, wherever they stand (today "B, C" gave B)
    ("B, C", None), ("B and C", None), ("(B) and (D)", None), ("C/D", None), ("The answer is B, C.", None),
    ("\\boxed{B, C}", None),
    ("B, because C is wrong", "B"),  # one letter, then an explanation that names another
]


@pytest.mark.parametrize("output,expected", CHOICE)
def test_multiple_choice(output, expected):
    assert extract_choice(output, OPTIONS) == expected


def test_ten_option_letters():
    options = {letter: f"option {i}" for i, letter in enumerate("ABCDEFGHIJ")}
    assert extract_choice("J", options) == "J"
    assert extract_choice("(I) option 8", options) == "I"
    assert extract_choice("I believe it is J", options) is None


NORMALISED = [
    ("The Left Lung.", "left lung"), ("Two", "2"), ("3.40 cm", "3.4 cm"), ("2.0", "2"),
    ("X-Ray", "x ray"), ("an MRI", "mri"), ("  Right upper lobe  ", "right upper lobe"),
]


@pytest.mark.parametrize("text,expected", NORMALISED)
def test_normalize(text, expected):
    assert normalize_answer(text) == expected


def test_open_answers_match_after_normalisation_only():
    assert open_exact_match("Right upper lobe.", "right upper lobe")
    assert open_exact_match("The answer is: two", "2")
    assert open_exact_match("3.4 cm. It is large.", "3.4 cm")  # first statement; decimal point kept
    assert not open_exact_match("Left upper lobe", "right upper lobe")
    assert not open_exact_match("", "lung")
    assert extract_open("Chest X-ray.\nThe image shows ...") == "chest x ray"
    assert extract_open("Optional surgery") == "optional surgery"  # "option" is only a lead as a whole word


def test_token_scores_precision_and_recall_are_not_swapped():
    s = token_scores("cardiomegaly", "cardiomegaly with pulmonary edema")
    assert s["precision"] == 1.0 and s["recall"] == 0.25
    s = token_scores("cardiomegaly with pulmonary edema and effusion", "cardiomegaly")
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(1 / 6)
    assert token_scores("left", "right")["f1"] == 0.0
