"""InternVL-style dynamic tiling: the grid choice, the tiles, and tiles flowing through tokens into a real tiny
model."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from medgpt_oss.data.conversation import IGNORE_INDEX
from medgpt_oss.data.dicom import CT_WINDOW_PRESETS
from medgpt_oss.data.images import ImageTransform
from medgpt_oss.harmony import FINAL_HEADER
from medgpt_oss.config import model_config
from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.data.tiling import RESAMPLE, candidate_grids, choose_grid, tile_image
from medgpt_oss.models.vlm import MedVLM
from tests.conftest import compose_train, small_data_overrides
from tests.test_vlm import tiny_vlm


def test_candidate_grids_are_every_grid_within_the_tile_budget():
    grids = candidate_grids(1, 12)
    assert len(grids) == len(set(grids)) == sum(12 // i for i in range(1, 13))  # 35 grids
    assert all(1 <= c * r <= 12 for c, r in grids)
    assert [c * r for c, r in grids] == sorted(c * r for c, r in grids)
    assert candidate_grids(3, 4) == [(1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    with pytest.raises(ValueError):
        candidate_grids(5, 4)


@pytest.mark.parametrize(
    ("width", "height", "max_tiles", "grid"),
    [
        (800, 600, 12, (4, 3)),  # 4:3 exists exactly
        (2000, 500, 12, (4, 1)),  # 4:1; 8x2 would also be 4:1 but exceeds 12 tiles
        (1000, 300, 12, (3, 1)),  # 3.33: 3x1 (diff .33) beats 4x1 (.67) and 7x2 (not allowed: 14 tiles)
        (300, 1000, 12, (1, 3)),  # the same, portrait
        (1000, 1000, 12, (3, 3)),  # square ties 1x1/2x2/3x3: 1e6 px > half of 3x3x448^2, so 3x3
        (700, 700, 12, (2, 2)),  # 490k px: enough for 2x2 (> 401k), not 3x3 (> 903k)
        (500, 500, 12, (1, 1)),  # 250k px: not enough to upgrade to 2x2
        (1000, 1000, 4, (2, 2)),  # budget caps the square at 2x2
        (1300, 1000, 12, (4, 3)),  # 1.3: 4x3 (1.33, diff .033) beats 3x2 (1.5) and 1x1
        (2000, 500, 1, (1, 1)),  # tiling with one tile is a plain resize
    ],
)
def test_grid_is_the_closest_aspect_ratio_with_internvl_tie_break(width, height, max_tiles, grid):
    assert choose_grid(width, height, 448, max_tiles=max_tiles) == grid


def test_tiles_reassemble_to_the_resized_image_and_the_thumbnail_follows():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (100, 300, 3), dtype=np.uint8), "RGB")  # 3:1
    tiles = tile_image(image, 32, max_tiles=4)  # 3x1 (with 12, 6x2 would tie and win: enough pixels)
    assert len(tiles) == 3 + 1 and all(t.size == (32, 32) for t in tiles)
    canvas = Image.new("RGB", (96, 32))
    for k, tile in enumerate(tiles[:3]):  # row-major: left to right
        canvas.paste(tile, (k * 32, 0))
    np.testing.assert_array_equal(np.asarray(canvas), np.asarray(image.resize((96, 32), RESAMPLE)))
    np.testing.assert_array_equal(np.asarray(tiles[-1]), np.asarray(image.resize((32, 32), RESAMPLE)))
    square = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    grid = tile_image(square, 32, max_tiles=12)  # 2x2, row-major: top-left, top-right, bottom-left, ...
    resized = np.asarray(square.resize((64, 64), RESAMPLE))
    assert len(grid) == 4 + 1
    np.testing.assert_array_equal(np.asarray(grid[1]), resized[:32, 32:])
    np.testing.assert_array_equal(np.asarray(grid[2]), resized[32:, :32])
    single = tile_image(Image.new("RGB", (20, 20)), 32, max_tiles=12)
    assert len(single) == 1  # one tile: no thumbnail


def test_formatter_expands_each_placeholder_by_its_own_tile_count(tiny_tokenizer):
    from medgpt_oss.data.conversation import HarmonyFormatter

    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", num_image_tokens=3)
    image_id = tiny_tokenizer.convert_tokens_to_ids("<|image|>")
    turns = [{"from": "human", "value": "<image> then <image>"}, {"from": "gpt", "value": "Two views."}]
    ids = fmt.tokenize("r", turns, 2, tiles_per_image=[4, 1]).input_ids.tolist()
    runs, length = [], 0
    for token in ids + [-1]:
        if token == image_id:
            length += 1
        elif length:
            runs, length = runs + [length], 0
    assert runs == [4 * 3, 1 * 3]  # first image: 4 tiles x 3 tokens; second: one
    assert fmt.tokenize("r", turns, 2).input_ids.tolist().count(image_id) == 6  # default: one tile each
    for bad in ([4], [4, 0]):
        with pytest.raises(ValueError, match="record 'r': tiles_per_image"):
            fmt.tokenize("r", turns, 2, tiles_per_image=bad)


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def write_record(root: Path) -> dict:
    rng = np.random.default_rng(1)
    # wide.png is 4:1 -> 4 tiles + thumbnail; small.png -> 1 tile
    Image.fromarray(rng.integers(0, 255, (64, 256, 3), dtype=np.uint8)).save(root / "wide.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "small.png")
    return {"id": "tiled-1", "image": ["wide.png", "small.png"], "conversations": [
        {"from": "human", "value": "<image>\nCompare with the prior <image>."},
        {"from": "gpt", "value": "The nodule in the right upper lobe is new."}]}


def test_tiled_sample_has_one_token_run_per_tile_and_trains(vlm, tmp_path):
    size, per_image = vlm.encoder.image_size, vlm.tokens_per_image
    record = write_record(tmp_path)
    plain = SampleProcessor(vlm.input_spec(), tmp_path)(record)
    tiled_processor = SampleProcessor(vlm.input_spec(), tmp_path, max_tiles=12)
    tiled = tiled_processor(record)

    assert plain["pixel_values"].shape[0] == 2 and tiled["pixel_values"].shape[0] == 5 + 1
    assert int((plain["input_ids"] == vlm.image_token_id).sum()) == 2 * per_image
    assert int((tiled["input_ids"] == vlm.image_token_id).sum()) == 6 * per_image
    assert len(tiled["input_ids"]) - len(plain["input_ids"]) == 4 * per_image
    # pixel_values hold the wide image's tiles in order, its thumbnail, then the small image.
    transform = ImageTransform(size, tiled_processor.transform.mean, tiled_processor.transform.std)
    wide = Image.open(tmp_path / "wide.png").convert("RGB")
    expected = [transform(t) for t in tile_image(wide, size, 12)] + [transform(Image.open(tmp_path / "small.png"))]
    torch.testing.assert_close(tiled["pixel_values"], torch.stack(expected))
    # The second <image> run starts right after 5 runs: the text between the two images sits there.
    slots = (tiled["input_ids"] == vlm.image_token_id).nonzero().flatten()
    assert bool((slots[1:] - slots[:-1] > 1).sum() == 1) and int(slots[5 * per_image] - slots[5 * per_image - 1]) > 1

    # Round trip: the supervised tokens are exactly the channel header, the answer and its end token.
    supervised = tiled["input_ids"][tiled["labels"] != IGNORE_INDEX]
    assert vlm.tokenizer.decode(supervised[:-1]) == FINAL_HEADER + record["conversations"][1]["value"]
    assert vlm.tokenizer.convert_ids_to_tokens(int(supervised[-1])) == "<|return|>"

    batch = tiled_processor.collate([tiled])
    out = vlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=batch["pixel_values"], labels=batch["labels"])
    assert torch.isfinite(out.loss)
    # The model scatters each tile's projected patches into its own run, in order.
    embeds = vlm.embed(batch["input_ids"], batch["pixel_values"])
    features = vlm.encode_images(batch["pixel_values"])
    torch.testing.assert_close(embeds[0][batch["input_ids"][0] == vlm.image_token_id],
                               features.reshape(-1, features.shape[-1]))


def test_dicom_frames_all_become_image_runs(vlm, tmp_path):
    from pydicom.data import get_testdata_file

    (tmp_path / "dose.dcm").write_bytes(Path(get_testdata_file("rtdose.dcm")).read_bytes())  # 15 frames
    record = {"id": "mf-1", "image": "dose.dcm", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A dose grid."}]}
    every = SampleProcessor(vlm.input_spec(), tmp_path, dicom={"frames": "all"})(record)
    middle = SampleProcessor(vlm.input_spec(), tmp_path)(record)
    assert every["pixel_values"].shape[0] == 15 and middle["pixel_values"].shape[0] == 1
    assert int((every["input_ids"] == vlm.image_token_id).sum()) == 15 * vlm.tokens_per_image
    torch.testing.assert_close(every["pixel_values"][7], middle["pixel_values"][0])


def test_config_switches_tiling_on_through_the_datamodule(tmp_path, medsynth_dir):
    cfg = compose_train(["+stage=align", "scale=tiny", "data.max_tiles=4", "data.dicom.frames=first",
                         "data.dicom.ct_windows=[[-600,1500],[40,400],[400,1800]]", *small_data_overrides()],
                        tmp_path, medsynth_dir)
    assert cfg.data.max_tiles == 4
    spec = MedVLM.from_config(model_config(cfg)).input_spec()
    datamodule = hydra.utils.instantiate(cfg.data, input_spec=spec)
    assert datamodule.processor.max_tiles == 4 and datamodule.processor.dicom.frames == "first"
    assert datamodule.processor.dicom.ct_windows == CT_WINDOW_PRESETS["lung_mediastinum_bone"]
    datamodule.prepare_data()
    datamodule.setup("fit")
    sample = datamodule.datasets["train"][0]
    # MedSynth images are 128 px and the tiny encoder's 64: a 2x2 grid plus the thumbnail.
    assert sample["pixel_values"].shape[0] == 5
    assert int((sample["input_ids"] == spec.tokenizer.convert_tokens_to_ids(spec.image_token)).sum()) == \
        5 * spec.tokens_per_image


def test_a_real_fit_trains_on_tiled_medsynth(tmp_path, medsynth_dir):
    from medgpt_oss.train import train
    from tests.test_train import TINY_RUN

    cfg = compose_train(TINY_RUN + small_data_overrides() + ["data.max_tiles=4", "trainer.max_steps=2"],
                        tmp_path, medsynth_dir)
    trainer, stage = train(cfg)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    batch = next(iter(trainer.datamodule.train_dataloader()))
    slots = int((batch["input_ids"] == stage.vlm.image_token_id).sum())
    assert batch["pixel_values"].shape[0] == 5 * len(batch["ids"])  # 2x2 tiles + thumbnail per image
    assert slots == batch["pixel_values"].shape[0] * stage.vlm.tokens_per_image
