"""VQA-RAD: radiology questions on MedPix images, closed (yes/no, left/right...) and open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.published.vqa import VQA_RAD_FILES, VQA_RAD_IMAGE_DIRS, read_vqa_rad
from medgpt_oss.data.sources.base import Source, SourceRecord, vqa_records


class VQARAD(Source):
    """The common train/test split (``trainset.json``, ``testset.json``) and the MedPix images, read by
    :func:`~medgpt_oss.data.published.vqa.read_vqa_rad` -- or the OSF original ``VQA_RAD Dataset
    Public.json`` (all 2,248) via ``split_files={train: "VQA_RAD Dataset Public.json"}``; do not combine the
    OSF file with testset.json, it contains the test questions. Task = the data set's own answer type:
    ``closed`` or ``open``; answers kept as published.
    """

    name = "vqa_rad"
    layout = """trainset.json, testset.json   JSON lists of {qid, image_name, question, answer, answer_type, ...}
images/<image_name>            (or the OSF folder "VQA_RAD Image Folder/")"""
    origin = "https://osf.io/89kps/ (OSF: JSON + images); trainset/testset.json from the MedVQA split releases"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dirs: tuple[str, ...] | list[str] = VQA_RAD_IMAGE_DIRS,
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or VQA_RAD_FILES)
        self.image_dirs = tuple(image_dirs)

    def records(self) -> Iterator[SourceRecord | Skip]:
        return vqa_records(self.root, read_vqa_rad(self, self.split_files, self.image_dirs, f"{self.name}-"))
