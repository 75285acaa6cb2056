"""PathVQA: pathology questions generated from textbook and PEIR captions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.vqa import PATHVQA_FILES, PATHVQA_IMAGE_DIR, read_pathvqa
from medgpt_oss.data.sources.base import Source, SourceRecord, vqa_records


class PathVQA(Source):
    """``pvqa_{train,val,test}.json`` and ``images/{split}/<img_id>.jpg``, read by
    :func:`~medgpt_oss.data.published.vqa.read_pathvqa`: the i-th label of an image answers its i-th
    question; images without questions produce nothing. Task: ``closed`` for yes/no answers, else ``open``.
    """

    name = "pathvqa"
    layout = """pvqa_train.json, pvqa_val.json, pvqa_test.json   JSON lists of {img_id, labelf.pvqa, sentf.pvqa}
images/<split>/<img_id>.jpg"""
    origin = "https://github.com/UCSD-AI4H/PathVQA (data links in its README)"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dir: str = PATHVQA_IMAGE_DIR, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or PATHVQA_FILES)
        self.image_dir = image_dir

    def records(self) -> Iterator[SourceRecord | Skip]:
        return vqa_records(self.root, read_pathvqa(self, self.split_files, self.image_dir, f"{self.name}-"))
