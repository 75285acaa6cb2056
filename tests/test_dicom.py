"""DICOM rendering on the files pydicom ships: every value checked against numpy from the raw pixels and tags."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medgpt_oss.data.dicom import CT_WINDOW_PRESETS, DicomError, DicomOptions, read_dicom, read_dicom_frames
from medgpt_oss.data.images import load_frames, load_image


def shipped(name: str) -> str:
    # Only files inside the pydicom wheel: get_testdata_file would try to download the others.
    path = get_testdata_file(name)
    assert path is not None, name
    return path


def grey(image) -> np.ndarray:
    arr = np.asarray(image)
    assert image.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


def to_8bit(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def pydicom_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window as a unit interval, written out with numpy."""
    c, w = center - 0.5, width - 1.0
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


def modified(tmp_path: Path, name: str, out: str, change) -> Path:
    ds = pydicom.dcmread(shipped(name))
    change(ds)
    path = tmp_path / out
    ds.save_as(path)
    return path


def test_ct_without_a_window_rescales_to_hounsfield_and_uses_the_full_range():
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024.0
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = to_8bit((hu - hu.min()) / (hu.max() - hu.min()))
    np.testing.assert_array_equal(grey(read_dicom(shipped("CT_small.dcm"))), expected)


def test_mr_uses_its_own_window_center_and_width():
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # 600 / 1600
    expected = to_8bit(pydicom_linear_window(ds.pixel_array.astype(np.float64), center, width))
    got = grey(read_dicom(shipped("MR_small.dcm")))
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.min() < got.max() == 255  # the window really clips: not the full-range result
    assert not np.array_equal(got, to_8bit((ds.pixel_array - ds.pixel_array.min()) / np.ptp(ds.pixel_array)))


def test_multi_valued_window_takes_the_first_pair(tmp_path):
    def two_windows(ds):
        ds.WindowCenter, ds.WindowWidth = [600, 100], [1600, 50]
    path = modified(tmp_path, "MR_small.dcm", "two_windows.dcm", two_windows)
    np.testing.assert_array_equal(grey(read_dicom(path)), grey(read_dicom(shipped("MR_small.dcm"))))


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 60000).astype(int)  # a non-linear display curve

    def with_lut(ds):
        item = Dataset()
        item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor: entries, first mapped value, bits
        item.add_new(0x00283006, "US", lut.tolist())  # LUTData
        ds.VOILUTSequence = Sequence([item])
    path = modified(tmp_path, "MR_small.dcm", "voi_lut.dcm", with_lut)
    raw = pydicom.dcmread(shipped("MR_small.dcm")).pixel_array
    out = lut[np.clip(raw, 0, 4095)].astype(np.float64)
    expected = to_8bit((out - lut[0]) / (lut[-1] - lut[0]))
    np.testing.assert_array_equal(grey(read_dicom(path)), expected)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_monochrome1_is_the_inverse_of_monochrome2(name, tmp_path):
    def mono1(ds):
        ds.PhotometricInterpretation = "MONOCHROME1"
    path = modified(tmp_path, name, "mono1.dcm", mono1)
    normal = grey(read_dicom(shipped(name)))
    np.testing.assert_array_equal(grey(read_dicom(path)), 255 - normal)
    assert normal.std() > 10  # a real image, not a constant one that inverts to itself


def test_ct_multi_window_gives_one_window_per_channel():
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_dicom(shipped("CT_small.dcm"), ct_windows="lung_mediastinum_bone")
    rgb = np.asarray(image)
    for channel, (center, width) in enumerate(CT_WINDOW_PRESETS["lung_mediastinum_bone"]):
        np.testing.assert_array_equal(rgb[..., channel], to_8bit((hu - (center - width / 2)) / width))
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    assert (r != g).mean() > 0.5 and (g != b).mean() > 0.5 and (r != b).mean() > 0.5
    # The same windows given as numbers, as a Hydra list override would.
    as_numbers = read_dicom(shipped("CT_small.dcm"), ct_windows=[[-600, 1500], [40, 400], [400, 1800]])
    np.testing.assert_array_equal(np.asarray(as_numbers), rgb)


def test_ct_windows_leave_other_modalities_on_their_own_window():
    plain = np.asarray(read_dicom(shipped("MR_small.dcm")))
    np.testing.assert_array_equal(np.asarray(read_dicom(shipped("MR_small.dcm"), ct_windows="lung_mediastinum_bone")),
                                  plain)


def test_bad_ct_windows_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="lung_mediastinum_bone"):
        DicomOptions(ct_windows="lungs")
    with pytest.raises(ValueError, match="three"):
        DicomOptions(ct_windows=((40, 400),))
    with pytest.raises(ValueError, match="middle"):
        DicomOptions(frames="last")


def test_multi_frame_policies_pick_the_right_frames():
    path = shipped("rtdose.dcm")  # 15 frames of 10x10, 32-bit, no window: each frame's full range
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert raw.shape == (15, 10, 10)
    expected = [to_8bit((f - f.min()) / (f.max() - f.min())) for f in raw]
    every = read_dicom_frames(path, {"frames": "all"})
    assert len(every) == 15
    for got, want in zip(every, expected):
        np.testing.assert_array_equal(grey(got), want)
    np.testing.assert_array_equal(grey(read_dicom(path)), expected[7])  # middle is the default
    np.testing.assert_array_equal(grey(read_dicom(path, frames="first")), expected[0])
    assert not np.array_equal(expected[0], expected[7])
    with pytest.raises(ValueError, match="read_dicom_frames"):
        read_dicom(path, frames="all")


def test_rgb_and_ybr_dicoms_stay_in_colour():
    rgb_path = shipped("examples_rgb_color.dcm")
    np.testing.assert_array_equal(np.asarray(read_dicom(rgb_path)), pydicom.dcmread(rgb_path).pixel_array)
    # The same test card stored as RGB (8 bits), 16-bit RGB and YBR_FULL_422 renders the same.
    rgb8 = np.asarray(read_dicom(shipped("SC_rgb_rle.dcm"))).astype(int)
    rgb16 = np.asarray(read_dicom(shipped("SC_rgb_rle_16bit.dcm"))).astype(int)
    ybr = np.asarray(read_dicom(shipped("SC_ybr_full_422_uncompressed.dcm"))).astype(int)
    np.testing.assert_array_equal(rgb16, rgb8)
    # YBR quantisation and 4:2:2 chroma: within a few levels, under one level on average
    assert np.abs(ybr - rgb8).max() <= 6 and np.abs(ybr - rgb8).mean() < 1.0
    assert (rgb8[..., 0] != rgb8[..., 1]).mean() > 0.3  # really colour
    raw16 = pydicom.dcmread(shipped("SC_rgb_rle_16bit.dcm")).pixel_array
    np.testing.assert_array_equal(rgb16, np.rint(raw16 / 65535.0 * 255.0))


def test_palette_colour_goes_through_its_lut():
    from pydicom.pixels import apply_color_lut

    path = shipped("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    expected = np.rint(apply_color_lut(ds.pixel_array, ds) / 65535.0 * 255.0).astype(np.uint8)
    got = np.asarray(read_dicom(path))
    np.testing.assert_array_equal(got, expected)
    assert (got[..., 0] != got[..., 2]).any()


def test_no_pixel_data_names_the_file(tmp_path):
    def drop(ds):
        del ds.PixelData
    path = modified(tmp_path, "CT_small.dcm", "header_only.dcm", drop)
    with pytest.raises(DicomError, match=r"header_only\.dcm' has no pixel data \(PixelData missing\)") as info:
        read_dicom(path)
    assert info.value.kind == "no_pixels"
    with pytest.raises(DicomError, match=r"test-SR\.dcm' has no pixel data") as info:  # a real structured report
        read_dicom(shipped("test-SR.dcm"))
    assert info.value.kind == "no_pixels"


def test_truncated_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm' pixel data cannot be decoded") as info:
        read_dicom(shipped("MR_truncated.dcm"))  # shipped by pydicom: pixel data cut short
    assert info.value.kind == "truncated"
    whole = Path(shipped("CT_small.dcm")).read_bytes()
    for at in (1000, 5000):  # inside a header element; inside the private block before the pixels
        cut = tmp_path / f"cut_at_{at}.dcm"
        cut.write_bytes(whole[:at])
        with pytest.raises(DicomError, match=rf"cut_at_{at}\.dcm' ends in the middle of an element") as info:
            read_dicom(cut)
        assert info.value.kind == "truncated"
    cut = tmp_path / "cut_in_pixels.dcm"
    cut.write_bytes(whole[:-1000])
    with pytest.raises(DicomError, match=r"cut_in_pixels\.dcm' pixel data cannot be decoded") as info:
        read_dicom(cut)
    assert info.value.kind == "truncated"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file")
    with pytest.raises(DicomError, match=r"junk\.dcm' cannot be parsed") as info:
        read_dicom(junk)
    assert info.value.kind == "unreadable"
    assert isinstance(info.value, ValueError)  # the data processor turns ValueErrors into record errors


def test_load_image_finds_dicom_by_magic_and_from_bytes(tmp_path):
    expected = np.asarray(read_dicom(shipped("MR_small.dcm")))
    no_extension = tmp_path / "IM0001"
    no_extension.write_bytes(Path(shipped("MR_small.dcm")).read_bytes())
    np.testing.assert_array_equal(np.asarray(load_image(no_extension)), expected)
    in_memory = io.BytesIO(no_extension.read_bytes())
    np.testing.assert_array_equal(np.asarray(load_image(in_memory)), expected)
    assert len(load_frames(shipped("rtdose.dcm"), {"frames": "all"})) == 15
    with pytest.raises(ValueError, match="15 frames"):
        load_image(shipped("rtdose.dcm"), {"frames": "all"})

