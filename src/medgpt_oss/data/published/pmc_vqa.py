"""PMC-VQA as published: multiple-choice questions on PubMed Central figures.

UNVERIFIED: no sample of these files is in the project's format folder; the columns follow the PMC-VQA
repository (xiaoman-zhang/PMC-VQA) and the evaluation kits that read it:

- v2 ``train_2.csv`` / ``test_2.csv``: ``index, Figure_path, Caption, Question, Choice A..D, Answer
  (letter), split``;
- v1 ``train.csv`` / ``test.csv`` and ``test_clean.csv``: ``Figure_path, Question, Answer (text),
  Choice A..D, Answer_label (letter)``.

Choices carry their own letter prefix (``"A:CT scan"``), stripped here; an empty choice is no option. The
answer is ``Answer_label``, else ``Answer`` as a letter, else the option whose text ``Answer`` is. Images:
``images/<Figure_path>`` (images.zip from the Hugging Face data set card) or ``figures/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medgpt_oss.data.published.layout import PublishedLayout, Skip, image_path

LETTERS = ("A", "B", "C", "D")
FILES = {"train": "train_2.csv", "test": "test_2.csv"}
TEST_CLEAN = "test_clean.csv"  # the test set the evaluation kits use
IMAGE_DIRS = ("images", "figures")


@dataclass
class MCQuestion:
    """One multiple-choice question on one figure."""

    id: str                 # the reader's prefix + the row's index (else its position)
    split: str
    question: str           # stripped
    options: dict[str, str]  # letter -> text, the non-empty choices
    answer: str             # the letter of the right option
    image: str              # relative to the data set's root


def read_pmc_vqa(files: PublishedLayout, split: str, filename: str, image_dirs: Sequence[str] = IMAGE_DIRS,
                 id_prefix: str = "pmc_vqa-") -> Iterator[MCQuestion | Skip]:
    """The rows of one PMC-VQA CSV file (``split`` names the split they are)."""
    image_dir = files.require_folder(*image_dirs)
    for i, row in enumerate(files.read_csv(files.require(filename))):
        rid = f"{id_prefix}{row.get('index') or i}"
        question, figure = (row.get("Question") or "").strip(), (row.get("Figure_path") or "").strip()
        if not question or not figure:  # a missing column, or an empty cell
            yield Skip(rid, "missing_field", "no Question or Figure_path", "use the published PMC-VQA CSV", split)
            continue
        options = {}
        for letter in LETTERS:
            option = re.sub(rf"^\s*{letter}\s*[:.)]\s*", "", row.get(f"Choice {letter}") or "").strip()
            if option:
                options[letter] = option
        answer = (row.get("Answer") or "").strip()
        letter = (row.get("Answer_label") or answer).strip().rstrip(":.)").upper()
        if letter not in options:  # v1 without Answer_label: the answer is the option's text
            letter = next((k for k, v in options.items() if v == answer), letter)
        if letter not in options:
            yield Skip(rid, "bad_answer", f"answer {letter!r} is not one of the options {list(options)}",
                       "give the answer as the letter of a non-empty choice", split)
            continue
        yield MCQuestion(rid, split, question, options, letter, image_path(image_dir, figure))
