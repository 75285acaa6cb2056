"""prepare: every bad record of the corpus reported by id and kind and none written; shards read back."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medgpt_oss.data.conversation import HarmonyFormatter
from medgpt_oss.data.shards import iter_row_group, read_manifest
from medgpt_oss.data.sources.captions import ROCOCaptions
from medgpt_oss.data.sources.llava import LLaVAConversations
from medgpt_oss.data.sources.mimic_cxr import MIMICCXR
from medgpt_oss.prepare import PrepareError, prepare
from tests.fixtures_formats import BAD_KINDS, GOOD_IDS, write_bad_corpus, write_mimic, write_roco, write_vqa_rad

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def formatter(tiny_tokenizer) -> HarmonyFormatter:
    # 16 tokens per image and 256 tokens in all: "effusion " * 400 is far over, every good record well under
    return HarmonyFormatter(tiny_tokenizer, "<|image|>", 16, max_length=256)


def read_back(out: Path) -> dict[str, dict]:
    """Every record in the prepared folder, by id, through the reader the data module uses."""
    manifest, records = read_manifest(out), {}
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            for group in range(shard["row_groups"]):
                for rec in iter_row_group(out, shard["path"], group):
                    assert rec["id"] not in records
                    records[rec["id"]] = {**rec, "split": split}
    return records


def test_bad_corpus_every_bad_record_reported_none_written(tmp_path, formatter):
    root = write_bad_corpus(tmp_path / "src")
    report = prepare(LLaVAConversations(root), tmp_path / "out", formatter, row_group_records=2, shard_records=4)
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"]: s["kind"] for s in skipped} == BAD_KINDS
    assert len(skipped) == len(BAD_KINDS)
    assert report["skipped"] == len(BAD_KINDS) and report["written"] == len(GOOD_IDS)
    assert {k: v["count"] for k, v in report["skip_reasons"].items()} == {k: 1 for k in BAD_KINDS.values()}
    assert report["skip_reasons"]["too_long"]["first_ids"] == ["bad-too-long"]
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert "truncated.jpg" in reasons["bad-truncated"] and "nowhere.png" in reasons["bad-missing-file"]
    assert "2 '<image>' placeholders" in reasons["bad-placeholders"]
    assert "exceed max_length=256" in reasons["bad-too-long"]

    records = read_back(tmp_path / "out")
    assert sorted(records) == sorted(GOOD_IDS)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["records"] == len(GOOD_IDS) and len(manifest["splits"]["train"]["shards"]) == 2
    assert manifest["report"] == report
    # PNG/JPEG are stored byte for byte; DICOM is rendered to a PNG that decodes to CT_small's 128x128
    assert records["good-jpeg"]["image_bytes"] == [(root / "images" / "ok.jpg").read_bytes()]
    assert records["good-two"]["image_bytes"] == [(root / "images" / n).read_bytes() for n in ("ok.png", "ok.jpg")]
    with Image.open(io.BytesIO(records["good-dicom"]["image_bytes"][0])) as dicom:
        assert (dicom.format, dicom.size) == ("PNG", (128, 128))
    assert records["good-text"]["image_bytes"] == [] and records["good-text"]["task"] == "text_qa"
    assert records["good-png"]["conversations"][1] == {"from": "gpt", "value": "A chest X-ray."}


def test_strict_fails_on_first_bad_record_with_id_reason_and_fix(tmp_path, formatter):
    root = write_bad_corpus(tmp_path / "src")
    with pytest.raises(PrepareError, match=r"record 'bad-truncated' \(train\): corrupt_image: .*-- fix: download"):
        prepare(LLaVAConversations(root), tmp_path / "out", formatter, strict=True)
    # A failed run leaves nothing half-written behind, so the same command runs again once the data is fixed.
    assert list((tmp_path / "out").iterdir()) == []
    assert prepare(LLaVAConversations(root), tmp_path / "out", formatter)["skipped"] > 0


def test_non_utf8_csv_row_skipped_alone(tmp_path, formatter):
    report = prepare(ROCOCaptions(write_roco(tmp_path / "src")), tmp_path / "out", formatter)
    assert report["skip_reasons"] == {"non_utf8": {"count": 1, "first_ids": ["roco-ROCOv2_2023_train_000002"]}}
    assert report["splits"] == {"test": 1, "train": 1, "val": 1} and report["tasks"] == {"caption": 3}


def test_mimic_counts_by_task_and_split(tmp_path, formatter):
    write_mimic(tmp_path / "src")
    report = prepare(MIMICCXR(tmp_path / "src"), tmp_path / "out", formatter)
    assert report["tasks"] == {"longitudinal": 2, "multiview_report": 2, "report": 4}
    assert report["splits"] == {"test": 2, "train": 5, "val": 1}
    assert {k: v["first_ids"] for k, v in report["skip_reasons"].items()} == {
        "no_report_section": ["mimic_cxr-s5"], "no_frontal_view": ["mimic_cxr-s6"]}
    longitudinal = read_back(tmp_path / "out")["mimic_cxr-s1-longitudinal"]
    assert len(longitudinal["image_bytes"]) == 2 and longitudinal["meta"]["prior_study_id"] == "3"


def test_out_folder_is_replaced_only_with_overwrite(tmp_path, formatter):
    root = write_vqa_rad(tmp_path / "src")
    from medgpt_oss.data.sources.vqa_rad import VQARAD

    prepare(VQARAD(root), tmp_path / "out", formatter)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare(VQARAD(root), tmp_path / "out", formatter)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no prepared data"):
        prepare(VQARAD(root), tmp_path / "other", formatter, overwrite=True)
    assert prepare(VQARAD(root), tmp_path / "out", formatter, overwrite=True)["written"] == 5


def test_cli_end_to_end_prints_counts_as_last_line(tmp_path):
    root = write_vqa_rad(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "medgpt_oss.prepare", "source=vqa_rad", f"source.root={root}",
         f"out={tmp_path / 'out'}", "max_length=256", "tokens_per_image=16"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["written"] == 5 and counts["splits"] == {"test": 2, "train": 3}
    assert counts["answer_types"] == {"closed": 3, "open": 2} and counts["tasks"] == {"closed": 3, "open": 2}
    assert counts["skip_reasons"] == {"missing_field": {"count": 1, "first_ids": ["vqa_rad-12"]}}
    assert "skip vqa_rad-12 [missing_field]" in result.stderr
    assert sorted(read_back(tmp_path / "out")) == ["vqa_rad-1", "vqa_rad-10", "vqa_rad-11", "vqa_rad-2", "vqa_rad-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no run folder, no .hydra copy
    # the contract the records were validated against, printed and in the manifest
    contract = counts["contract"]
    assert {k: contract[k] for k in ("scale", "encoder", "projector", "tokens_per_image", "image_size",
                                     "max_length")} == {
        "scale": "tiny", "encoder": "medgpt_oss.models.encoders.CLIPEncoder",
        "projector": "medgpt_oss.models.projectors.MLPProjector", "tokens_per_image": 16, "image_size": 64,
        "max_length": 256}
    from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR, load_tokenizer

    assert contract["tokenizer"] == str(TINY_TOKENIZER_DIR)
    assert contract["vocab_size"] == len(load_tokenizer(TINY_TOKENIZER_DIR, "<|image|>"))  # image token included
    assert read_manifest(tmp_path / "out")["report"]["contract"] == contract


@pytest.mark.parametrize("tokens", [16, 4])
def test_training_on_a_folder_prepared_for_another_token_count_warns_naming_both(tokens, tmp_path, formatter,
                                                                                 tiny_tokenizer, recwarn):
    from dataclasses import replace

    from medgpt_oss.data.prepared import PreparedDataModule
    from medgpt_oss.data.sources.vqa_rad import VQARAD
    from tests.test_streaming import input_spec

    contract = {"scale": "tiny", "encoder": "my.Encoder", "projector": "my.Projector", "tokens_per_image": 16}
    out = tmp_path / "out"
    prepare(VQARAD(write_vqa_rad(tmp_path / "src")), out, formatter, contract=contract)  # 16 tokens per image
    PreparedDataModule(replace(input_spec(tiny_tokenizer), tokens_per_image=tokens), root=str(out))
    warned = [str(w.message) for w in recwarn if "image tokens per image" in str(w.message)]
    if tokens == 16:
        assert not warned
        return
    assert len(warned) == 1, warned
    assert f"'{out}' was validated with 16 image tokens per image" in warned[0]
    assert "encoder my.Encoder, projector my.Projector" in warned[0] and "this model makes 4" in warned[0]
    assert "re-run python -m medgpt_oss.prepare with the scale=, encoder= and projector=" in warned[0]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "source").glob("*.yaml")))
def test_every_source_config_composes_and_instantiates(tmp_path, name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from medgpt_oss.config import CONF_DIR
    from medgpt_oss.data.sources.base import Source

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"source={name}", f"source.root={tmp_path}", f"out={tmp_path / 'out'}"])
    source = instantiate(cfg.source, _convert_="all")
    assert isinstance(source, Source) and source.root == tmp_path
    assert "docs/data.md#" in (REPO / "conf" / "source" / f"{name}.yaml").read_text()


def test_strict_counts_expected_skips_without_stopping(tmp_path, formatter):
    """IU X-ray's studies without findings are a property of the data set, not broken input."""
    from medgpt_oss.data.sources.iu_xray import IUXrayR2Gen
    from tests.fixtures_formats import write_iu_r2gen

    report = prepare(IUXrayR2Gen(write_iu_r2gen(tmp_path / "src")), tmp_path / "out", formatter, strict=True)
    assert report["skip_reasons"] == {"empty_findings": {"count": 1, "first_ids": ["iu_xray-CXR2_IM-0002"]}}
    assert report["tasks"] == {"multiview_report": 3}
    (tmp_path / "src" / "images" / "CXR3_IM-0003" / "1.png").unlink()
    with pytest.raises(PrepareError, match=r"record 'iu_xray-CXR3_IM-0003' \(val\): missing_image"):
        prepare(IUXrayR2Gen(tmp_path / "src"), tmp_path / "out", formatter, strict=True, overwrite=True)
