"""load_image: every PIL mode to 8-bit RGB with known pixel values, from files on disk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgpt_oss.data.images import ALPHA_BACKGROUND, ImageTransform, load_image


def saved(image: Image.Image, path: Path, expected_mode: str) -> Path:
    image.save(path)
    with Image.open(path) as reopened:  # the file really holds the mode under test
        assert reopened.mode == expected_mode, reopened.mode
    return path


def rgb(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_l_and_rgb_keep_their_values(tmp_path):
    values = np.array([[0, 7], [128, 255]], dtype=np.uint8)
    out = rgb(saved(Image.fromarray(values, "L"), tmp_path / "l.png", "L"))
    np.testing.assert_array_equal(out, np.repeat(values[..., None], 3, axis=-1))
    colour = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [12, 34, 56]]], dtype=np.uint8)
    np.testing.assert_array_equal(rgb(saved(Image.fromarray(colour, "RGB"), tmp_path / "rgb.png", "RGB")), colour)


def test_sixteen_bit_greyscale_is_stretched_over_its_range(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    out = rgb(saved(Image.fromarray(values), tmp_path / "i16.png", "I;16"))
    expected = np.rint((values - 1000) / 4000 * 255)  # 0, 63.75, 127.5, 255
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]


def test_32_bit_integer_and_float_images_are_stretched(tmp_path):
    ints = np.array([[-100, 0], [100, 300]], dtype=np.int32)
    out = rgb(saved(Image.fromarray(ints, "I"), tmp_path / "i.tiff", "I"))
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]
    floats = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    out = rgb(saved(Image.fromarray(floats, "F"), tmp_path / "f.tiff", "F"))
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]
    constant = np.full((2, 2), 7, dtype=np.int32)  # no range to stretch: black, not a division by zero
    assert rgb(saved(Image.fromarray(constant, "I"), tmp_path / "c.tiff", "I")).max() == 0


def test_palette_images_take_their_palette_colours(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255])
    out = rgb(saved(image, tmp_path / "p.png", "P"))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 0]
    assert out[1, 0].tolist() == [0, 0, 255]
    image.save(tmp_path / "p_t.png", transparency=1)  # palette entry 1 transparent -> the background
    out = rgb(tmp_path / "p_t.png")
    assert out[0, 1].tolist() == list(ALPHA_BACKGROUND) and out[0, 0].tolist() == [10, 20, 30]


def test_transparency_is_composited_on_white(tmp_path):
    assert ALPHA_BACKGROUND == (255, 255, 255)
    pixels = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [10, 20, 30, 128]]], dtype=np.uint8)
    out = rgb(saved(Image.fromarray(pixels, "RGBA"), tmp_path / "rgba.png", "RGBA"))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> the page
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque -> unchanged
    half = (np.array([10, 20, 30]) * 128 + 255 * 127) / 255
    assert np.abs(out[0, 2] - half).max() <= 1
    la = np.array([[[200, 0], [200, 255]]], dtype=np.uint8)
    out = rgb(saved(Image.fromarray(la, "LA"), tmp_path / "la.png", "LA"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 200, 200]


def test_jpeg_greyscale_and_file_objects(tmp_path):
    values = np.full((16, 16), 90, dtype=np.uint8)
    path = saved(Image.fromarray(values, "L"), tmp_path / "l.jpg", "L")
    out = rgb(path)
    assert np.abs(out - 90).max() <= 1
    np.testing.assert_array_equal(np.asarray(load_image(io.BytesIO(path.read_bytes()))), out)


def test_truncated_and_missing_files_raise(tmp_path):
    values = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    whole = saved(Image.fromarray(values, "RGB"), tmp_path / "whole.png", "RGB").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OSError):
        load_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")


def test_transform_normalises_known_values():
    transform = ImageTransform(4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = transform(Image.new("RGB", (4, 4), (255, 255, 255)))
    assert white.shape == (3, 4, 4) and float(white.min()) == float(white.max()) == 1.0
    assert float(transform.blank().max()) == -1.0


def test_the_fused_normalisation_gives_torchvisions_tensors():
    # (x / 255 - mean) / std computed as x * 1/(255 std) - mean/std in place: same values within float rounding.
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from medgpt_oss.data.images import ImageTransform

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    reference = v2.Compose([v2.PILToTensor(), v2.Resize((48, 48), interpolation=v2.InterpolationMode.BICUBIC,
                                                         antialias=True),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    got = ImageTransform(48, mean, std)(image)
    torch.testing.assert_close(got, reference(image), rtol=0, atol=2e-6)
    assert got.is_contiguous() and got.dtype == torch.float32
