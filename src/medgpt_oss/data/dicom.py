"""DICOM -> 8-bit RGB PIL images, through pydicom's own modality and VOI transforms.

Greyscale (MONOCHROME1/2), in this order:

1. modality rescale -- ``pydicom.pixels.apply_modality_lut`` (RescaleSlope/Intercept or a
   Modality LUT Sequence), so CT values are Hounsfield units;
2. display window -- the file's VOI LUT Sequence, else its WindowCenter/Width (the first pair
   when multi-valued: that is the default view), through ``pydicom.pixels.apply_voi_lut``;
   without either, the frame's full value range;
3. MONOCHROME1 inverted (there, low values are white), so bone is always white.

With ``ct_windows`` set (e.g. ``"lung_mediastinum_bone"`` or three ``[center, width]`` pairs),
CT images (Modality CT) become three channels instead, one window each, R, G, B -- the
multi-window input used for CT foundation models. Other modalities keep their own window, since
Hounsfield windows mean nothing outside CT.

Colour (RGB, YBR_* -- pydicom converts YBR to RGB -- and PALETTE COLOR through its colour LUT)
stays colour; samples wider than 8 bits are scaled by their BitsStored range.

Multi-frame files follow ``frames``: ``"middle"`` (default: for a cine or a volume stored as
frames, the middle one is the most representative single view), ``"first"``, or ``"all"``
(every frame, as separate images; :func:`read_dicom_frames` returns them and the data
processor feeds them to the model like tiles of one image). Only the chosen frames are decoded.
Per-frame rescale values of enhanced multi-frame files (functional groups) are not applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from PIL import Image

FramePolicy = Literal["middle", "first", "all"]
FRAME_POLICIES = ("middle", "first", "all")

# Named CT window sets, (center, width) in HU, in R, G, B order.
CT_WINDOW_PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "lung_mediastinum_bone": ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0)),
}

ImageSource = str | Path | IO[bytes]


class DicomError(ValueError):
    """A DICOM file that cannot be rendered; ``kind`` is ``no_pixels``, ``truncated`` or ``unreadable``."""

    def __init__(self, source: str, kind: str, problem: str, fix: str) -> None:
        self.source, self.kind = source, kind
        super().__init__(f"DICOM '{source}' {problem} -- fix: {fix}")


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM files are rendered (config: ``data.dicom``)."""

    frames: FramePolicy = "middle"
    ct_windows: str | tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.frames not in FRAME_POLICIES:
            raise ValueError(f"dicom frames={self.frames!r}: use one of {FRAME_POLICIES}")
        if self.ct_windows is None:
            return
        windows = self.ct_windows
        if isinstance(windows, str):
            if windows not in CT_WINDOW_PRESETS:
                raise ValueError(f"dicom ct_windows={windows!r}: use one of {sorted(CT_WINDOW_PRESETS)} "
                                 "or three [center, width] pairs")
            windows = CT_WINDOW_PRESETS[windows]
        pairs = tuple((float(c), float(w)) for c, w in windows)
        if len(pairs) != 3 or any(w <= 0 for _, w in pairs):
            raise ValueError(f"dicom ct_windows={self.ct_windows!r}: "
                             "need three [center, width>0] pairs, one per R, G, B")
        object.__setattr__(self, "ct_windows", pairs)

    @classmethod
    def of(cls, options: DicomOptions | Mapping[str, Any] | None) -> DicomOptions:
        """Options from a config mapping (or None: the defaults)."""
        if isinstance(options, DicomOptions):
            return options
        return cls(**dict(options or {}))


def is_dicom(source: ImageSource) -> bool:
    """By extension, or by the 'DICM' magic at byte 128 (many DICOM files have no extension)."""
    if not isinstance(source, (str, Path)):
        position = source.tell()
        source.seek(128)
        magic = source.read(4)
        source.seek(position)
        return magic == b"DICM"
    path = Path(source)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(source: ImageSource, frames: FramePolicy = "middle",
               ct_windows: str | Sequence[Sequence[float]] | None = None) -> Image.Image:
    """One DICOM image as 8-bit RGB (``frames`` must pick one frame: ``middle`` or ``first``)."""
    if frames == "all":
        raise ValueError("read_dicom returns one image; use read_dicom_frames for frames='all'")
    return read_dicom_frames(source, DicomOptions(frames, _as_tuple(ct_windows)))[0]


def read_dicom_frames(source: ImageSource,
                      options: DicomOptions | Mapping[str, Any] | None = None) -> list[Image.Image]:
    """The frames chosen by ``options.frames``, each as 8-bit RGB."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    options = DicomOptions.of(options)
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<bytes>")
    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise DicomError(name, "unreadable", f"cannot be parsed ({exc})",
                         "check that it is a complete DICOM file") from exc
    if "PixelData" not in ds:
        if _ends_mid_element(ds):  # pydicom stops quietly at the end of a cut file
            raise DicomError(name, "truncated", "ends in the middle of an element, before any pixel data "
                             "(truncated file)", "copy or download the file again")
        raise DicomError(name, "no_pixels", "has no pixel data (PixelData missing)",
                         "it is a structured report or header-only file; drop it")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = None if options.frames == "all" or n_frames == 1 else (n_frames // 2 if options.frames == "middle" else 0)
    try:
        # pixel_array(ds, index=i) decodes only frame i; it converts YBR to RGB.
        arr = pixel_array(ds, index=index) if index is not None else ds.pixel_array
    except (ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
        raise DicomError(name, "truncated" if "less than expected" in str(exc) else "unreadable",
                         f"pixel data cannot be decoded ({exc})", "copy the file again, or install the decoder "
                         "pydicom names for its transfer syntax (e.g. pylibjpeg, gdcm)") from exc
    stacked = n_frames > 1 and index is None  # frames-first array
    frame_list = list(arr) if stacked else [arr]
    return [_render(frame, ds, options) for frame in frame_list]


def _ends_mid_element(ds: Any) -> bool:
    """True when the last element read holds fewer bytes than its header declares (or nothing was read)."""
    if not len(ds):
        return True
    last = ds.get_item(next(reversed(ds.keys())))  # still raw: the declared length is kept
    length, value = getattr(last, "length", None), getattr(last, "value", None)
    return isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length


def _render(arr: np.ndarray, ds: Any, options: DicomOptions) -> Image.Image:
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)  # 8- or 16-bit RGB entries
        return Image.fromarray(_scale_bits(arr, 16 if arr.dtype == np.uint16 else 8), mode="RGB")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # RGB, or YBR already converted by pydicom
        return Image.fromarray(_scale_bits(arr, int(ds.get("BitsStored", 8))), mode="RGB")
    grey = _greyscale_to_8bit(arr, ds, options)
    if grey.ndim == 3:  # CT multi-window: three channels
        return Image.fromarray(grey, mode="RGB")
    return Image.fromarray(grey, mode="L").convert("RGB")


def _greyscale_to_8bit(arr: np.ndarray, ds: Any, options: DicomOptions) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds).astype(np.float64)
    if options.ct_windows is not None and str(ds.get("Modality", "")).upper() == "CT":
        # Channel order follows the windows; multi-window output is not inverted for MONOCHROME1
        # because the windows are defined on HU, where bone is always high.
        return np.stack([_window(values, c, w) for c, w in options.ct_windows], axis=-1)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        # VOI LUTs index integers; a modality rescale can leave floats (pydicom warns), so round.
        lut_input = np.rint(values).astype(np.int64) if ds.get("VOILUTSequence") else values
        out = apply_voi_lut(lut_input, ds, index=0).astype(np.float64)
        # Black and white of the VOI output: what it maps the lowest and highest inputs to
        # (the window's y_min/y_max, or the VOI LUT's first and last entries).
        lo, hi = apply_voi_lut(np.array([-(2**31), 2**31 - 1], dtype=np.int64), ds, index=0).astype(np.float64)
    else:
        out, lo, hi = values, float(values.min()), float(values.max())
    unit = np.clip((out - lo) / (hi - lo), 0.0, 1.0) if hi != lo else np.zeros_like(out)
    grey = np.rint(unit * 255.0).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """A plain linear window (center +- width/2 -> 0..255) on modality values (HU for CT)."""
    unit = np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    return np.rint(unit * 255.0).astype(np.uint8)


def _scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 8:
        return arr.astype(np.uint8)
    return np.rint(arr.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)


def _as_tuple(windows: str | Sequence[Sequence[float]] | None) -> str | tuple[tuple[float, float], ...] | None:
    if windows is None or isinstance(windows, str):
        return windows
    return tuple((float(c), float(w)) for c, w in windows)

