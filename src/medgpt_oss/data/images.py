"""Image loading and the encoder-side transform (resize + normalise)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, whatever its mode (L, I;16, RGBA, P, ...)."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # High bit-depth greyscale: stretch the actual range to 8 bits instead of clipping.
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            img = Image.fromarray(arr.astype(np.uint8), mode="L")
        return img.convert("RGB")


class ImageTransform:
    """PIL image -> normalised float tensor [3, size, size] for one encoder."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self._pipeline = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._pipeline(image)

    def blank(self) -> torch.Tensor:
        """A black image after normalisation: what 'images blanked' ablations feed the model."""
        return self(Image.new("RGB", (self.size, self.size)))
