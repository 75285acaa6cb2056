"""Image-caption lists (PMC-OA, ROCO/ROCOv2) -> ``caption`` conversations for the align stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medgpt_oss.data.published.layout import Skip, text
from medgpt_oss.data.sources.base import Source, SourceRecord, stable_choice, turns

# LLaVA's alignment data asks for a caption in varied words; the choice is fixed per image id.
CAPTION_PROMPTS = (
    "Describe this image.",
    "Write a caption for this figure.",
    "What does this image show?",
)


def caption_record(source: str, rid: str, split: str, image: Path, caption: str, meta: dict) -> SourceRecord:
    prompt = stable_choice(rid, CAPTION_PROMPTS)
    return SourceRecord(rid, "caption", split, turns(f"<image>\n{prompt}", caption.strip()), [image], meta)


class PMCOACaptions(Source):
    """Reads PMC-OA's JSONL caption files: one ``{"image": "PMC..._F1.jpg", "caption": "..."}`` per line.

    Files: ``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` (``pmc_oa.jsonl`` holds
    all; pass ``split_files={train: pmc_oa.jsonl}``) and the images from
    ``images.zip`` under ``images/`` (``image_dir`` if yours differ).
    """

    name = "pmc_oa"
    layout = """train.jsonl, valid.jsonl, test.jsonl   {"image": "<file name>", "caption": "..."} per line
images/<image>"""
    origin = "https://huggingface.co/datasets/axiong/pmc_oa (JSONL files + images.zip)"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None, image_dir: str = "images",
                 allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {"train": "train.jsonl", "val": "valid.jsonl", "test": "test.jsonl"})
        self.image_dir = image_dir

    def records(self) -> Iterator[SourceRecord | Skip]:
        image_dir = self.require(self.image_dir)
        for split, filename in self.split_files.items():
            entries = ((f"{filename}:{line_no}", rec) for line_no, rec in self.read_jsonl(self.require(filename)))
            yield from self.each(split, entries, lambda rid, rec, split=split: self._record(rid, rec, split, image_dir),
                                 record_id=lambda rec: Path(rec["image"]).stem if isinstance(rec.get("image"), str)
                                 else None)

    def _record(self, rid: str, rec: dict, split: str, image_dir: Path) -> Iterator[SourceRecord]:
        image, caption = text(rec, "image"), text(rec, "caption")
        yield caption_record(self.name, rid, split, image_dir / image, caption, {})


class ROCOCaptions(Source):
    """Reads ROCOv2's caption CSVs: ``train_captions.csv``, ``valid_captions.csv``, ``test_captions.csv``.

    Columns ``ID, Caption`` (e.g. ``ROCOv2_2023_train_000001``); images
    ``train/<ID>.jpg``, ``valid/<ID>.jpg``, ``test/<ID>.jpg`` from the Zenodo
    zips. For the original ROCO (a ``radiologytraintest`` folder of per-split
    ``captions.txt``), convert to this two-column CSV first.
    """

    name = "roco"
    layout = """train_captions.csv, valid_captions.csv, test_captions.csv   columns ID,Caption
train/<ID>.jpg, valid/<ID>.jpg, test/<ID>.jpg"""
    origin = "https://zenodo.org/records/10821435 (ROCOv2)"

    def __init__(self, root: str | Path, split_files: dict[str, str] | None = None,
                 image_dirs: dict[str, str] | None = None, allow_outside_root: bool = False) -> None:
        super().__init__(root, allow_outside_root)
        self.split_files = dict(split_files or {"train": "train_captions.csv", "val": "valid_captions.csv",
                                                "test": "test_captions.csv"})
        self.image_dirs = dict(image_dirs or {"train": "train", "val": "valid", "test": "test"})

    def records(self) -> Iterator[SourceRecord | Skip]:
        for split, filename in self.split_files.items():
            image_dir = self.require(self.image_dirs[split])
            for i, row in enumerate(self.read_csv(self.require(filename))):
                image_id, caption = (row.get("ID") or "").strip(), row.get("Caption")
                rid = f"roco-{image_id or f'{split}{i}'}"
                if not image_id or caption is None:
                    yield Skip(rid, "missing_field", f"{filename} row {i + 1} needs ID and Caption", "", split)
                    continue
                yield caption_record(self.name, rid, split, image_dir / f"{image_id}.jpg", caption, {})
