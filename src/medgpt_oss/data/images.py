"""Image loading (any PIL mode, DICOM) and the encoder-side transform (resize + normalise)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from medgpt_oss.data.dicom import DicomOptions, is_dicom, read_dicom_frames

HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# PIL warns above this many pixels and refuses twice as many (a decompression bomb). Images between the
# two are reduced to this size (aspect kept) before use: no encoder input needs more.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# Transparent pixels are composited on white: in published figures and screenshots (PMC-OA,
# ROCO) transparency stands for the white page, and dark labels/arrows drawn on it would vanish
# on black.
ALPHA_BACKGROUND = (255, 255, 255)


def load_frames(source: str | Path | IO[bytes], dicom: DicomOptions | Mapping[str, Any] | None = None,
                max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """An image file (path or file object) as 8-bit RGB images: one, or a DICOM's frames per ``dicom.frames``.

    An animated image (GIF, APNG, multi-page TIFF) gives its first frame; one over ``max_pixels`` is
    reduced to fit (aspect kept; JPEGs are decoded at the reduced size).
    """
    if is_dicom(source):
        return read_dicom_frames(source, dicom)
    with Image.open(source) as img:
        decode_within(img, max_pixels)  # a full decode here, so truncated files fail now, inside this function
        rgb = to_rgb(img)
        return [img.copy() if rgb is img else rgb]  # closing `img` frees its pixels


def decode_within(img: Image.Image, max_pixels: int = MAX_PIXELS) -> bool:
    """Decode an opened image, reduced to at most ``max_pixels`` (aspect kept); returns whether it was reduced."""
    width, height = img.size
    if width * height <= max_pixels:
        img.load()
        return False
    scale = (max_pixels / (width * height)) ** 0.5
    img.thumbnail((max(1, int(width * scale)), max(1, int(height * scale))))  # JPEG: draft-mode decode first
    return True


def load_image(source: str | Path | IO[bytes],
               dicom: DicomOptions | Mapping[str, Any] | None = None) -> Image.Image:
    """One image as 8-bit RGB: PNG/JPEG/TIFF of any mode, or DICOM (by extension or 'DICM' magic)."""
    frames = load_frames(source, dicom)
    if len(frames) != 1:
        raise ValueError(f"'{source}' has {len(frames)} frames; load_frames returns them all (dicom.frames='all')")
    return frames[0]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    L/P/CMYK/YCbCr convert directly; LA/RGBA/PA and P with transparency are composited on
    :data:`ALPHA_BACKGROUND`; 16-/32-bit integer and float greyscale (I;16, I, F) are stretched
    from their actual min..max to 0..255 -- clipping would keep only the darkest 256 levels.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in HIGH_BIT_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class ImageTransform:
    """PIL image -> normalised float tensor [3, size, size] for one encoder.

    Bicubic antialiased resize of the uint8 image, then ``(x / 255 - mean) / std`` as one in-place multiply
    and subtract per channel (``x * 1/(255 std) - mean/std``: the same values within float rounding, one
    float buffer instead of torchvision's convert, scale, subtract and divide).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self._resize = v2.Compose([
            v2.PILToTensor(),
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        ])
        std_t, mean_t = torch.tensor(self.std, dtype=torch.float32), torch.tensor(self.mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(3, 1, 1)
        self._shift = (mean_t / std_t).view(3, 1, 1)

    def resize(self, image: Image.Image) -> torch.Tensor:
        """uint8 ``[3, size, size]`` (channels-last strides, as the resize leaves them)."""
        return self._resize(image)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 -> the encoder's float input, contiguous."""
        # Contiguous uint8 first (a cheap copy), then one float buffer scaled and shifted in place: measured
        # 0.16-0.19 ms at 336 px against torchvision's 0.22-0.25 and an out-of-place addcmul's 0.29-0.30.
        return pixels.contiguous().to(torch.float32).mul_(self._scale).sub_(self._shift)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.resize(image))

    def hf_image_processor(self):
        """transformers' ``CLIPImageProcessor`` doing exactly this: resize straight to the square (no
        aspect-preserving crop; ``crop_size`` = size, or serving tools count 224-px crops), bicubic, rescale,
        normalise. Exports write it, so their users feed the model as training did."""
        from transformers import CLIPImageProcessor

        size = {"height": self.size, "width": self.size}
        return CLIPImageProcessor(
            do_resize=True, size=size, resample=3, do_center_crop=False, crop_size=size, do_rescale=True,
            rescale_factor=1 / 255, do_normalize=True, image_mean=list(self.mean), image_std=list(self.std),
            do_convert_rgb=True,
        )

    def blank(self) -> torch.Tensor:
        """A black image after normalisation: what 'images blanked' ablations feed the model."""
        return self(Image.new("RGB", (self.size, self.size)))
