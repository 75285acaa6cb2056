"""PMC-VQA: multiple-choice questions on PubMed Central figures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.sources.base import Skip, Source, SourceRecord, turns

LETTERS = ("A", "B", "C", "D")
MCQ_INSTRUCTION = "Answer with the letter of the correct option."


class PMCVQA(Source):
    """Reads ``train_2.csv`` / ``test_2.csv`` (or the v1 ``train.csv`` / ``test.csv``) and the figure images.

    UNVERIFIED: no sample of this schema is in the project's format folder; the
    columns follow the PMC-VQA repository (xiaoman-zhang/PMC-VQA) and the
    evaluation kits that read it. v2: ``index, Figure_path, Caption, Question,
    Choice A, Choice B, Choice C, Choice D, Answer (letter), split``; v1:
    ``Figure_path, Question, Answer (text), Choice A..D, Answer_label (letter)``.
    Choices may carry their own letter prefix (``"A:CT scan"``), stripped here.
    Images: ``images/<Figure_path>`` (images.zip from the Hugging Face data set
    card; ``image_dirs`` if yours differ). Each row -> one ``mcq`` conversation
    whose answer is ``"<letter>. <option text>"`` (as MedSynth's MCQs).
    """

    name = "pmc_vqa"
    layout = """train_2.csv, test_2.csv   columns index,Figure_path,Caption,Question,Choice A..D,Answer,split
images/<Figure_path>"""
    origin = "https://huggingface.co/datasets/xmcmic/PMC-VQA (CSV files + images.zip); github.com/xiaoman-zhang/PMC-VQA"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dirs: tuple[str, ...] | list[str] = ("images", "figures"),
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {"train": "train_2.csv", "test": "test_2.csv"})
        self.image_dirs = tuple(image_dirs)

    def records(self) -> Iterator[SourceRecord | Skip]:
        image_dir = self.require(*self.image_dirs)
        for split, filename in self.split_files.items():
            for i, row in enumerate(self.read_csv(self.require(filename))):
                rid = f"pmc_vqa-{split}-{row.get('index') or i}"
                try:
                    options = {k: re.sub(rf"^\s*{k}\s*[:.)]\s*", "", row[f"Choice {k}"]).strip() for k in LETTERS}
                    letter = (row.get("Answer_label") or row["Answer"]).strip().rstrip(":.)").upper()
                    question, figure = row["Question"].strip(), row["Figure_path"].strip()
                except (KeyError, AttributeError, TypeError) as exc:  # a missing column, or an empty cell (None)
                    yield Skip(rid, "missing_field", f"no column {exc}", "use the published PMC-VQA CSV", split)
                    continue
                if letter not in options or not options[letter]:
                    yield Skip(rid, "bad_answer", f"answer {letter!r} is not one of the options {list(options)}",
                               "give the answer as the letter of a non-empty choice", split)
                    continue
                prompt = "<image>\n" + question + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
                yield SourceRecord(rid, "mcq", split,
                                   turns(prompt + "\n" + MCQ_INSTRUCTION, f"{letter}. {options[letter]}"),
                                   [image_dir / figure], {"answer": letter, "options": options})
