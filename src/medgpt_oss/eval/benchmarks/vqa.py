"""Radiology/pathology VQA with yes/no and open answers: VQA-RAD, SLAKE (English), PathVQA.

The files are read by ``data/published/vqa.py``, the same readers as the training sources. Closed and open
questions are reported separately (``groups["type"]`` is the data set's own answer type); a yes/no answer
is scored by yes/no extraction, any other answer by normalised exact match (plus token recall/F1).
"""

from __future__ import annotations

from collections.abc import Iterator

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.vqa import (OTHER_LANGUAGE, PATHVQA_FILES, PATHVQA_IMAGE_DIR, SLAKE_FILES, VQA_RAD_FILES,
                                           VQA_RAD_IMAGE_DIRS, VQAQuestion, read_pathvqa, read_slake, read_vqa_rad)
from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem, closed_or_open


def vqa_item(question: VQAQuestion, **groups: str) -> EvalItem:
    return closed_or_open(question.id, question.question, question.answer, images=[question.image],
                          groups={"type": question.answer_type, **groups})


class VQARAD(Benchmark):
    layout = """testset.json                 the common 451-question test split: JSON list of
                             {qid, image_name, question, answer, answer_type CLOSED/OPEN, image_organ, ...}
                             (split_file="VQA_RAD Dataset Public.json" reads all 2,248 OSF pairs instead)
images/<image_name>          or the OSF folder "VQA_RAD Image Folder/<image_name>\""""
    origin = "https://osf.io/89kps/ (OSF) for the JSON and images; testset.json from the MedVQA test-split releases"

    def __init__(self, root: str, split_file: str = VQA_RAD_FILES["test"],
                 image_dirs: tuple[str, ...] = VQA_RAD_IMAGE_DIRS, **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.image_dirs = split_file, tuple(image_dirs)

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        questions = read_vqa_rad(self, {"test": self.split_file}, self.image_dirs)
        yield from self.published_items(
            questions, lambda q: vqa_item(q, organ=str(q.meta.get("image_organ") or "").lower()))


class SLAKE(Benchmark):
    layout = """test.json                    JSON list of {qid, img_name "xmlabN/source.jpg", question, answer,
                             q_lang en/zh, answer_type CLOSED/OPEN, modality, location, content_type, ...}
imgs/xmlabN/source.jpg"""
    origin = "https://www.med-vqa.com/slake/ (SLAKE 1.0: test.json and imgs.zip)"

    def __init__(self, root: str, split_file: str = SLAKE_FILES["test"], language: str = "en", **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.language = split_file, language

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        questions = read_slake(self, {"test": self.split_file}, self.language)
        chosen = (q for q in questions if not (isinstance(q, Skip) and q.kind == OTHER_LANGUAGE))
        yield from self.published_items(chosen, lambda q: vqa_item(q, modality=str(q.meta.get("modality") or "")))


class PathVQA(Benchmark):
    layout = """pvqa_test.json               the official per-image format: JSON list of
                             {img_id, labelf: {pvqa: [{answer: 1}, ...]}, sentf: {pvqa: [question, ...]}}
                             (the i-th label answers the i-th question)
images/test/<img_id>.jpg     (image_dir= if yours differ)"""
    origin = "https://github.com/UCSD-AI4H/PathVQA (data links in its README)"

    def __init__(self, root: str, split_file: str = PATHVQA_FILES["test"], image_dir: str = PATHVQA_IMAGE_DIR,
                 **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.image_dir = split_file, image_dir

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        self.require(self.image_dir.format(split="test"))
        yield from self.published_items(read_pathvqa(self, {"test": self.split_file}, self.image_dir), vqa_item)
