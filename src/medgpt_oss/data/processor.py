"""Record (LLaVA-style dict) -> model inputs, and batch collation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from medgpt_oss.data.conversation import IGNORE_INDEX, ConversationError, HarmonyFormatter
from medgpt_oss.data.images import ImageTransform, load_image


@dataclass
class ModelInputSpec:
    """What the data side must know about a model to feed it (see ``MedVLM.input_spec``)."""

    tokenizer: PreTrainedTokenizerBase
    image_token: str
    tokens_per_image: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def record_images(record: dict[str, Any]) -> list[str]:
    """The ``image`` field as a list (LLaVA uses a string for one image, a list for several)."""
    images = record.get("image")
    if images is None:
        return []
    return [images] if isinstance(images, str) else list(images)


class SampleProcessor:
    """Turns one record into ``input_ids``/``labels``/``pixel_values`` tensors."""

    def __init__(self, spec: ModelInputSpec, root: str | Path, system_prompt: str | None = None,
                 max_length: int | None = None) -> None:
        self.root = Path(root)
        self.formatter = HarmonyFormatter(spec.tokenizer, spec.image_token, spec.tokens_per_image,
                                          system_prompt=system_prompt, max_length=max_length)
        self.transform = ImageTransform(spec.image_size, spec.image_mean, spec.image_std)
        self.pad_id = spec.tokenizer.pad_token_id

    def load_pixels(self, record_id: str, image_paths: list[str]) -> torch.Tensor:
        pixels = []
        for rel in image_paths:
            path = self.root / rel
            try:
                pixels.append(self.transform(load_image(path)))
            except (OSError, ValueError) as exc:
                raise ConversationError(record_id, f"image '{path}' cannot be read ({exc})",
                                        "fix or remove the file, or drop the record") from exc
        if not pixels:
            return torch.empty(0, 3, self.transform.size, self.transform.size)
        return torch.stack(pixels)

    def __call__(self, record: dict[str, Any], for_generation: bool = False) -> dict[str, Any]:
        record_id = str(record.get("id", "<no id>"))
        images = record_images(record)
        tokens = self.formatter.tokenize(record_id, record["conversations"], len(images), for_generation)
        return {
            "id": record_id,
            "input_ids": tokens.input_ids,
            "labels": tokens.labels,
            "pixel_values": self.load_pixels(record_id, images),
        }

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
