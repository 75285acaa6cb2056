"""Record (LLaVA-style dict) -> model inputs, and batch collation."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from medgpt_oss.data.conversation import IGNORE_INDEX, ConversationError, HarmonyFormatter
from medgpt_oss.data.dicom import DicomOptions
from medgpt_oss.data.images import ImageTransform, load_frames
from medgpt_oss.data.packing import pack
from medgpt_oss.data.tiling import tile_image
from medgpt_oss.contract import ModelInputSpec  # noqa: F401  (re-exported: the data side's name for it)
from medgpt_oss.trust import OutsideRootError, inside_root

log = logging.getLogger(__name__)


def record_images(record: dict[str, Any]) -> list[str]:
    """The ``image`` field as a list (LLaVA uses a string for one image, a list for several)."""
    images = record.get("image")
    if images is None:
        return []
    return [images] if isinstance(images, str) else list(images)


class SampleProcessor:
    """Turns one record into ``input_ids``/``labels``/``pixel_values`` tensors.

    ``max_tiles`` > 1 turns on InternVL-style dynamic tiling (``data/tiling.py``): each image
    becomes up to ``max_tiles`` encoder-size tiles plus a thumbnail, its ``<image>`` expands to
    that many image-token runs, and ``pixel_values`` holds the tiles in order. ``dicom`` sets how
    DICOM files are rendered (``DicomOptions``); with ``frames="all"`` each frame is fed like a tile.
    Image paths must resolve inside ``root`` (symlinks followed) unless ``allow_outside_root``.
    """

    def __init__(self, spec: ModelInputSpec, root: str | Path, system_prompt: str | None = None,
                 max_length: int | None = None, max_tiles: int | None = None,
                 dicom: DicomOptions | dict[str, Any] | None = None, allow_outside_root: bool = False) -> None:
        self.root = Path(root)
        self.allow_outside_root = allow_outside_root  # false: every image path must resolve inside root
        self.max_tiles = max_tiles if max_tiles and max_tiles > 1 else None
        self.dicom = DicomOptions.of(dicom)
        self.formatter = HarmonyFormatter(spec.tokenizer, spec.image_token, spec.tokens_per_image,
                                          system_prompt=system_prompt, max_length=max_length, chat=spec.chat)
        self.transform = ImageTransform(spec.image_size, spec.image_mean, spec.image_std)
        self.pad_id = spec.tokenizer.pad_token_id

    def load_pixels(self, record_id: str, image_paths: list[str],
                    image_bytes: list[bytes] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Decode + transform each image: from ``image_bytes`` (prepared shards) or from files under root.

        Returns the encoder inputs of all images in order and how many each image became
        (1 unless tiled or a multi-frame DICOM read with ``frames="all"``).
        """
        pixels, views_per_image = [], []
        for i, rel in enumerate(image_paths):
            path = self.root / rel if image_bytes is None else f"{rel} (embedded, {len(image_bytes[i])} bytes)"
            if image_bytes is None and not self.allow_outside_root:
                try:
                    inside_root(self.root, rel)
                except OutsideRootError as exc:
                    raise ConversationError(record_id, f"outside_root: image {exc}",
                                            "keep images inside the data folder, or set allow_outside_root=true "
                                            "if you trust its paths") from None
            try:
                source = self.root / rel if image_bytes is None else io.BytesIO(image_bytes[i])
                views = [tile for frame in load_frames(source, self.dicom) for tile in self._tiles(frame)]
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ConversationError(record_id, f"image '{path}' cannot be read ({exc})",
                                        "fix or remove the file, or drop the record") from exc
            pixels.extend(self.transform(view) for view in views)
            views_per_image.append(len(views))
        if not pixels:
            return torch.empty(0, 3, self.transform.size, self.transform.size), views_per_image
        return torch.stack(pixels), views_per_image

    def _tiles(self, image: Image.Image) -> list[Image.Image]:
        return tile_image(image, self.transform.size, self.max_tiles) if self.max_tiles else [image]

    def __call__(self, record: dict[str, Any], for_generation: bool = False) -> dict[str, Any]:
        record_id = str(record.get("id", "<no id>"))
        images = record_images(record)
        image_bytes = record.get("image_bytes")
        if image_bytes is not None and len(image_bytes) != len(images):
            raise ConversationError(record_id, f"{len(image_bytes)} embedded images but {len(images)} image names",
                                    "prepare the data again")
        # Images first: how many tiles/frames each becomes sets its number of image tokens.
        pixels, views_per_image = self.load_pixels(record_id, images, image_bytes)
        tokens = self.formatter.tokenize(record_id, record["conversations"], len(images), for_generation,
                                         tiles_per_image=views_per_image)
        if not for_generation and not bool((tokens.labels != IGNORE_INDEX).any()):
            # LLaVA's failure mode: a sample whose labels are all masked trains on nothing, silently.
            raise ConversationError(record_id, "no token of the sample is supervised",
                                    "give the record a non-empty assistant answer")
        return {
            "id": record_id,
            "input_ids": tokens.input_ids,
            "labels": tokens.labels,
            "pixel_values": pixels,
        }

    def sample_length(self, record: dict[str, Any]) -> int:
        """Tokens of the record's training sample, from its text alone (no image is read); 0 for a record that
        processing will skip (packing plans with this, so it must equal ``len(self(record)["input_ids"])``)."""
        if self.max_tiles or self.dicom.frames == "all":
            raise ValueError("an image's token count depends on its pixels with max_tiles or dicom.frames=all; "
                             "planned packing cannot know it in advance: set data.pack_lookahead=0 "
                             "(packing within each batch)")
        try:
            return len(self.formatter.tokenize(str(record.get("id", "<no id>")), record["conversations"],
                                               len(record_images(record))).input_ids)
        except ConversationError:
            return 0

    def process(self, record: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """A training sample; a bad record raises when ``strict``, else comes back as ``{"id", "skipped"}``."""
        try:
            return self(record)
        except ConversationError as exc:
            if strict:
                raise
            log.warning("skipped %s", exc)
            return {"id": exc.record_id, "skipped": exc.problem}

    def collate_kept(self, samples: list[dict[str, Any]], pack_length: int | None = None) -> dict[str, Any]:
        """Collate (or pack) the samples that processed; the batch counts the skipped ones in ``skipped``."""
        kept = [s for s in samples if "skipped" not in s]
        skipped = [f"{s['id']}: {s['skipped']}" for s in samples if "skipped" in s]
        if not kept:  # every sample was bad: an empty batch the stage skips (nothing is supervised)
            size = self.transform.size
            batch = {"ids": [], "input_ids": torch.full((0, 1), self.pad_id),
                     "labels": torch.full((0, 1), IGNORE_INDEX),
                     "attention_mask": torch.zeros((0, 1), dtype=torch.long),
                     "pixel_values": torch.empty(0, 3, size, size)}
        elif pack_length:
            batch = pack(kept, pack_length, self.pad_id)
        else:
            batch = self.collate(kept)
        return {**batch, "skipped": len(skipped), "skipped_reasons": skipped}

    def collate(self, samples: list[dict[str, Any]], padding_side: str = "right") -> dict[str, Any]:
        """Pad to the longest sample; images of all samples are concatenated in order."""
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[i, span] = s["input_ids"]
            labels[i, span] = s["labels"]
            attention_mask[i, span] = 1
        return {
            "ids": [s["id"] for s in samples],
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
        }
