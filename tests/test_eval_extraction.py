"""Answer extraction, table-driven, with the adversarial cases that break substring matching."""

import pytest

from medgpt_oss.eval.extraction import (
    extract_choice,
    extract_label,
    extract_open,
    extract_yes_no,
    first_statement,
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
    ("**Answer**: Yes", "yes"), ("__No__, normal.", "no"),  # emphasis carries no answer
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

# Common correct formats (issue 12): each class, and the prose that must not be read as a letter.
CHOICE_FORMATS = [
    # the letter alone on its first line, the explanation below (which may name other letters)
    ("B\n\nThe image shows aspiration.", "B"), ("C\nexplanation", "C"), ("D.\nBecause ...", "D"),
    ("B\nOption A is wrong because it lacks fever.", "B"), ("B\n\nA and C are wrong.", "B"),
    ("D\nC/D could both fit, but D is better.", "D"), ("Answer:\n\n**B. Aspiration pneumonia**\n\nBecause", "B"),
    # emphasis with trailing punctuation, inside or outside
    ("**B.**", "B"), ("*(C)*", "C"), ("__D)__", "D"), ("**B**. Aspiration pneumonia", "B"), ("`C`", "C"),
    ("The answer is **C**.", "C"), ("**Answer:** B", "B"), ("**Answer**: B", "B"), ('"C"', "C"),
    # "option X" phrasing, any case once the word or brackets make it a letter
    ("Option C", "C"), ("option (b)", "B"), ("Option b.", "B"), ("option b, because ...", "B"),
    ("The correct option is (b)", "B"), ("I choose option D.", "D"), ("I would choose (B).", "B"),
    ("I'd go with C", "C"), ("I will select option (c).", "C"), ("The best choice is C", "C"), ("[C]", "C"),
    # lower-case letters: alone on the line, or "c)"
    ("b", "B"), ("b.", "B"), ("(d)", "D"), ("c) asthma", "C"), ("the answer is a.", "A"),
    # not answers: prose that opens with the article/pronoun or an abbreviation, letters outside the set
    ("A chest radiograph shows consolidation.", None), ("I think C", None),
    ("e.g. asthma or pneumonia", None), ("a mass", None), ("The answer is a mass.", None),
    ("Option E", None), ("E\nbecause ...", None), ("Option A is wrong", None),
    ("I think the answer is C", "C"), ("C, a common cause of wheeze", "C"),
    # several letters stay unparseable in every form
    ("Option C or D", None), ("option B and option C", None), ("(b) or (d)", None), ("**B**, **C**", None),
    ("b, c", None),
]


@pytest.mark.parametrize("output,expected", CHOICE_FORMATS)
def test_multiple_choice_formats(output, expected):
    assert extract_choice(output, OPTIONS) == expected


TEN = {letter: f"option {i}" for i, letter in enumerate("ABCDEFGHIJ")}
TEN_OPTIONS = [
    ("J", "J"), ("(I) option 8", "I"), ("I) option 8", "I"), ("I\n\nBecause ...", "I"), ("i", "I"),
    # the pronoun and abbreviations are not letters I and E
    ("I believe it is J", None), ("I am unsure", None), ("I.e. the left lung", None), ("i.e. the left lung", None),
    ("E.g. the left lung", None),
]


@pytest.mark.parametrize("output,expected", TEN_OPTIONS)
def test_ten_option_letters(output, expected):
    assert extract_choice(output, TEN) == expected


def test_option_keys_are_returned_as_given():
    assert extract_choice("B", {"a": "x", "b": "y"}) == "b"


@pytest.mark.parametrize("output,expected", CHOICE)
def test_multiple_choice(output, expected):
    assert extract_choice(output, OPTIONS) == expected


NORMALISED = [
    ("The Left Lung.", "left lung"), ("Two", "2"), ("3.40 cm", "3.4 cm"), ("2.0", "2"),
    ("X-Ray", "x ray"), ("an MRI", "mri"), ("  Right upper lobe  ", "right upper lobe"),
    # a number glued to a unit is split from it; other words that hold digits are not touched
    ("1.5cm", "1.5 cm"), ("1.5 cm.", "1.5 cm"), ("1.50CM.", "1.5 cm"), ("10ml", "10 ml"), ("5mg/kg", "5 mg kg"),
    ("120mmHg", "120 mmhg"), ("24h", "24 h"), ("2x3cm", "2 x 3 cm"), ("2 × 3 cm", "2 x 3 cm"), ("5 µg", "5 ug"),
    ("3rd rib", "3rd rib"), ("H2O", "h2o"), ("T12", "t12"), ("1st", "1st"), ("mmHg", "mmhg"),
    # number words: compounds read as one number, as the small ones always were
    ("thirteen", "13"), ("Nineteen", "19"), ("twenty", "20"), ("twenty-one", "21"), ("twenty one", "21"),
    ("ninety-nine nodules", "99 nodules"), ("one hundred", "100"), ("a hundred", "100"),
    ("one hundred and five", "105"), ("three hundred twenty-one", "321"), ("two thousand and ten", "2010"),
    ("one hundred thousand", "100000"),
    # runs that are not one number stay apart; "and" outside a number stays
    ("two three", "2 3"), ("nineteen ninety", "19 90"), ("one and two", "1 and 2"), ("hundred and the", "100 and"),
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


FIRST_STATEMENTS = [
    ("3.4 cm. It is large.", "3.4 cm."), ("Right lung.\nBecause ...", "Right lung."), ("What? Yes", "What?"),
    # an abbreviation's period does not end the statement
    ("Approx. 1.5 cm vs. 2 cm. Next.", "Approx. 1.5 cm vs. 2 cm."), ("Dr. Smith's sign. X", "Dr. Smith's sign."),
    ("e.g. the lung. X", "e.g. the lung."), ("Infection, i.e. pneumonia. X", "Infection, i.e. pneumonia."),
    ("Edema, effusion, etc. are absent. X", "Edema, effusion, etc. are absent."), ("St. Jude. X", "St. Jude."),
    ("No. 5 rib. X", "No. 5 rib."), ("Rib no. 5. X", "Rib no. 5."),
    ("No. There is none.", "No."),  # "no." before a word is the answer "No"
]


@pytest.mark.parametrize("text,expected", FIRST_STATEMENTS)
def test_first_statement(text, expected):
    assert first_statement(text) == expected


OPEN_MATCHES = [
    ("1.5cm", "1.5 cm", True), ("1.5 cm.", "1.5cm", True), ("About 1.5cm. It is large.", "about 1.5 cm", True),
    ("Thirteen.", "13", True), ("21", "twenty-one", True), ("One hundred", "100", True),
    ("Approx. 2 cm vs. 3 cm before.", "approx 2 cm vs 3 cm before", True),
    ("1.5cm", "15 cm", False), ("twenty", "21", False),
]


@pytest.mark.parametrize("output,gold,expected", OPEN_MATCHES)
def test_open_exact_match_normalises_both_sides(output, gold, expected):
    assert open_exact_match(output, gold) is expected


def test_token_scores_precision_and_recall_are_not_swapped():
    s = token_scores("cardiomegaly", "cardiomegaly with pulmonary edema")
    assert s["precision"] == 1.0 and s["recall"] == 0.25
    s = token_scores("cardiomegaly with pulmonary edema and effusion", "cardiomegaly")
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(1 / 6)
    assert token_scores("left", "right")["f1"] == 0.0
