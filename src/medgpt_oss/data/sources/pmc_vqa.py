"""PMC-VQA: multiple-choice questions on PubMed Central figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.pmc_vqa import FILES, IMAGE_DIRS, read_pmc_vqa
from medgpt_oss.data.sources.base import Source, SourceRecord, turns

MCQ_INSTRUCTION = "Answer with the letter of the correct option."


class PMCVQA(Source):
    """``train_2.csv`` / ``test_2.csv`` (or the v1 ``train.csv`` / ``test.csv``) and the figure images, read by
    :func:`~medgpt_oss.data.published.pmc_vqa.read_pmc_vqa` (schema unverified; see there). Each row -> one
    ``mcq`` conversation whose answer is ``"<letter>. <option text>"`` (as MedSynth's MCQs).
    """

    name = "pmc_vqa"
    layout = """train_2.csv, test_2.csv   columns index,Figure_path,Caption,Question,Choice A..D,Answer,split
images/<Figure_path>"""
    origin = "https://huggingface.co/datasets/xmcmic/PMC-VQA (CSV files + images.zip); github.com/xiaoman-zhang/PMC-VQA"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dirs: tuple[str, ...] | list[str] = IMAGE_DIRS,
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or FILES)
        self.image_dirs = tuple(image_dirs)

    def records(self) -> Iterator[SourceRecord | Skip]:
        for split, filename in self.split_files.items():  # row indexes repeat across splits: the id names both
            for q in read_pmc_vqa(self, split, filename, self.image_dirs, f"{self.name}-{split}-"):
                if isinstance(q, Skip):
                    yield q
                    continue
                prompt = "<image>\n" + q.question + "\n" + "\n".join(f"{k}. {v}" for k, v in q.options.items())
                yield SourceRecord(q.id, "mcq", split, turns(prompt + "\n" + MCQ_INSTRUCTION,
                                                             f"{q.answer}. {q.options[q.answer]}"),
                                   [self.root / q.image], {"answer": q.answer, "options": q.options})
