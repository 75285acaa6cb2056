"""Data stays inside its root: records that name files outside it (.., absolute paths, symlinks out) are
counted outside_root skips in prepare, training and evaluation, and the outside file's bytes go nowhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medgpt_oss.data.conversation import ConversationError, HarmonyFormatter
from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor
from medgpt_oss.data.sources.vqa_rad import VQARAD
from medgpt_oss.harmony import IMAGE_TOKEN
from medgpt_oss.prepare import prepare
from tests.fixtures_formats import image_bytes, vqa_rad_entry, write_image, write_json
from tests.test_prepare import read_back

# A JPEG outside the data root whose bytes must never reach a shard (a stand-in for ~/.ssh/id_rsa).
SECRET_SHADE = 201


def hostile_vqa_rad(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "vqa_rad"
    secret = write_image(tmp_path / "secret" / "private.jpg", "JPEG", SECRET_SHADE)
    write_image(root / "images" / "synpic1.jpg", "JPEG", 60)
    os.symlink(secret, root / "images" / "link.jpg")
    (root / "images" / "notes.jpg").write_text("not an image at all\n")
    (root / "images" / "folder.jpg").mkdir()
    write_json(root / "trainset.json", [
        vqa_rad_entry(1, "synpic1.jpg", "Is there a pneumothorax?", "Yes", "CLOSED"),
        vqa_rad_entry(2, "../../secret/private.jpg", "Is the heart enlarged?", "no", "CLOSED"),
        vqa_rad_entry(3, str(secret), "Is the heart enlarged?", "no", "CLOSED"),
        vqa_rad_entry(4, "link.jpg", "Is the heart enlarged?", "no", "CLOSED"),
        vqa_rad_entry(5, "notes.jpg", "Is the heart enlarged?", "no", "CLOSED"),
        vqa_rad_entry(6, "folder.jpg", "Is the heart enlarged?", "no", "CLOSED"),
    ])
    write_json(root / "testset.json", [])
    return root, secret


@pytest.fixture()
def formatter(tiny_tokenizer) -> HarmonyFormatter:
    return HarmonyFormatter(tiny_tokenizer, IMAGE_TOKEN, 16, max_length=256)


def test_prepare_skips_every_path_that_leaves_the_root_and_embeds_nothing_of_it(tmp_path, formatter):
    root, secret = hostile_vqa_rad(tmp_path)
    report = prepare(VQARAD(root), tmp_path / "out", formatter)
    skipped = {s["id"]: s for s in map(json.loads, (tmp_path / "out" / "skipped.jsonl").read_text().splitlines())}
    kinds = {rid: s["kind"] for rid, s in skipped.items()}
    assert kinds == {"vqa_rad-2": "outside_root", "vqa_rad-3": "outside_root", "vqa_rad-4": "outside_root",
                     "vqa_rad-5": "not_an_image", "vqa_rad-6": "not_a_file"}, kinds
    assert str(secret.resolve()) in skipped["vqa_rad-4"]["reason"]  # the symlink's target is named
    assert "source.allow_outside_root=true" in skipped["vqa_rad-2"]["fix"]
    assert report["skip_reasons"]["outside_root"]["count"] == 3 and report["written"] == 1
    secret_bytes = image_bytes("JPEG", SECRET_SHADE, "L")
    assert all(secret_bytes not in p.read_bytes() for p in (tmp_path / "out").rglob("*.parquet"))


def test_allow_outside_root_lets_a_trusted_folder_point_elsewhere(tmp_path, formatter):
    root, _ = hostile_vqa_rad(tmp_path)
    report = prepare(VQARAD(root, allow_outside_root=True), tmp_path / "out", formatter)
    records = read_back(tmp_path / "out")
    assert sorted(records) == ["vqa_rad-1", "vqa_rad-2", "vqa_rad-3", "vqa_rad-4"]
    assert report["skip_reasons"].keys() == {"not_an_image", "not_a_file"}


def test_the_prepare_cli_takes_source_allow_outside_root(tmp_path):
    import subprocess
    import sys

    root, _ = hostile_vqa_rad(tmp_path)
    base = [sys.executable, "-m", "medgpt_oss.prepare", "source=vqa_rad", f"source.root={root}"]
    counts = []
    for extra, out in (([], "strict_root"), (["source.allow_outside_root=true"], "anywhere")):
        result = subprocess.run(base + [f"out={tmp_path / out}"] + extra, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        counts.append(json.loads(result.stdout.strip().splitlines()[-1])["written"])
    assert counts == [1, 4]


def spec(tokenizer) -> ModelInputSpec:
    return ModelInputSpec(tokenizer, IMAGE_TOKEN, tokens_per_image=4, image_size=32, image_mean=(0.5, 0.5, 0.5),
                          image_std=(0.5, 0.5, 0.5))


def record(image: str) -> dict:
    return {"id": f"r-{Path(image).name}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nIs there a nodule?"},
                              {"from": "gpt", "value": "No."}]}


def test_training_and_evaluation_records_stay_inside_the_data_root(tmp_path, tiny_tokenizer):
    root = tmp_path / "data"
    secret = write_image(tmp_path / "private.png", "PNG", 7)
    write_image(root / "ok.png")
    os.symlink(secret, root / "link.png")
    processor = SampleProcessor(spec(tiny_tokenizer), root)
    assert processor.process(record("ok.png"))["pixel_values"].shape == (1, 3, 32, 32)
    for bad in ("../private.png", str(secret), "link.png"):
        skipped = processor.process(record(bad))  # training: a counted skip naming the record
        assert skipped["skipped"].startswith("outside_root") and skipped["id"] == f"r-{Path(bad).name}"
        with pytest.raises(ConversationError, match="outside the data root"):  # evaluation prompts: an error row
            processor(record(bad), for_generation=True)
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    for unresolvable in ("bad\x00name.png", "loop_a.png"):  # skipped like any other bad path, never a crash
        skipped = processor.process(record(unresolvable))
        assert skipped["skipped"].startswith("outside_root") and "cannot be resolved" in skipped["skipped"]
    trusting = SampleProcessor(spec(tiny_tokenizer), root, allow_outside_root=True)
    assert trusting.process(record("../private.png"))["pixel_values"].shape == (1, 3, 32, 32)


def test_the_data_module_setting_reaches_the_processor(tmp_path, tiny_tokenizer):
    from medgpt_oss.data.datamodule import ConversationDataModule

    module = ConversationDataModule(str(tmp_path), spec(tiny_tokenizer), allow_outside_root=True)
    assert module.processor.allow_outside_root is True
    assert ConversationDataModule(str(tmp_path), spec(tiny_tokenizer)).processor.allow_outside_root is False
