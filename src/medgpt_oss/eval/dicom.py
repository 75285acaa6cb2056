"""DICOM -> 8-bit PIL image for the chat command (data/images.py reads PNG/JPEG via PIL only).

Applies the modality rescale (slope/intercept), the file's own display window
when it has one (else the full range), and inverts MONOCHROME1 so bone is white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _first(value: object) -> float:
    """WindowCenter/Width may be multi-valued; the first is the default display."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def read_dicom(path: str | Path) -> Image.Image:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImportError("reading DICOM needs pydicom: pip install pydicom") from exc
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # a multi-frame series: take the middle frame
        arr = arr[arr.shape[0] // 2]
    arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        lo, hi = center - width / 2, center + width / 2
    else:
        lo, hi = float(arr.min()), float(arr.max())
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 255.0 - arr
    img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def is_dicom(path: str | Path) -> bool:
    """By extension, or by the 'DICM' magic at byte 128 (many DICOM files have no extension)."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
