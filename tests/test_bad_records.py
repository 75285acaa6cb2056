"""One bad record never stops prepare: records of the wrong shape or with fields of the wrong type are counted
skips naming the record, nothing is stringified into a training target, and a stopped run's folder is cleared
by overwrite=true."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgpt_oss.data.conversation import HarmonyFormatter
from medgpt_oss.data.sources.llava import LLaVAConversations
from medgpt_oss.data.sources.vqa_rad import VQARAD
from medgpt_oss.harmony import IMAGE_TOKEN
from medgpt_oss.prepare import RUN_MARKER, prepare
from tests.fixtures_formats import vqa_rad_entry, write_image
from tests.test_prepare import read_back


@pytest.fixture()
def formatter(tiny_tokenizer) -> HarmonyFormatter:
    return HarmonyFormatter(tiny_tokenizer, IMAGE_TOKEN, 16, max_length=256)


def write_raw(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def entry(qid, **fields) -> dict:
    return {**vqa_rad_entry(qid, "synpic1.jpg", "Is there a nodule?", "yes", "CLOSED"), **fields}


# VQA-RAD entries: record -> the skip kind it must become (None: a good record that is written).
VQA_RAD_CASES = [
    (None, "bad_record"),                                   # null instead of a record
    ([1, 2], "bad_record"),                                 # a list instead of a record
    (entry(0), None),                                       # id 0 is an id, not "no id"
    (entry(1, question=None), "bad_field"),                 # null question: never "None"
    (entry(2, question=5), "bad_field"),
    (entry(3, answer=True), "bad_field"),                   # never "True"
    (entry(4, answer=float("nan")), "bad_field"),           # never "nan"
    (entry(5, answer=["a", "b"]), "bad_field"),             # never "['a', 'b']"
    (entry(6, image_name=12), "bad_field"),
    (entry(7, image_name=None), "bad_field"),
    (entry(8, answer_type=3), "bad_field"),
    (entry(9, question="Is there a \ud800 nodule?"), "non_utf8"),  # a lone surrogate in valid JSON
    (entry(10), None),
]


def hostile_vqa_rad(root: Path) -> Path:
    write_image(root / "images" / "synpic1.jpg", "JPEG", 90)
    # json.dumps writes NaN and the lone surrogate as JSON does (NaN, "\ud800"): valid JSON for Python's reader.
    write_raw(root / "trainset.json", json.dumps([rec for rec, _ in VQA_RAD_CASES]))
    write_raw(root / "testset.json", "[]")
    return root


def skipped_kinds(out: Path) -> dict[str, str]:
    return {s["id"]: s["kind"] for s in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}


def test_every_bad_vqa_rad_record_is_a_named_skip_and_nothing_is_stringified(tmp_path, formatter):
    out = tmp_path / "out"
    report = prepare(VQARAD(hostile_vqa_rad(tmp_path / "src")), out, formatter)
    expected = {}
    for i, (rec, kind) in enumerate(VQA_RAD_CASES):
        if kind is not None:
            expected[f"vqa_rad-{rec['qid']}" if isinstance(rec, dict) else f"vqa_rad-trainset.json[{i}]"] = kind
    assert skipped_kinds(out) == expected
    records = read_back(out)
    assert sorted(records) == ["vqa_rad-0", "vqa_rad-10"]
    written = json.dumps([r["conversations"] for r in records.values()])
    assert not any(word in written for word in ("None", "True", "nan", "['a', 'b']"))
    assert report["written"] == 2 and report["skipped"] == len(expected)


def test_llava_records_of_the_wrong_shape_are_named_skips(tmp_path, formatter):
    root = tmp_path / "src"
    write_image(root / "images" / "a.png")
    good = {"id": "good", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                               {"from": "gpt", "value": "A chest film."}]}
    write_raw(root / "train.json", json.dumps([
        good, None, "text",
        {**good, "id": "task-number", "task": 5},
        {**good, "id": "image-number", "image": 7},
        {**good, "id": "image-list-null", "image": [None]},
        {"id": "no-conversations", "image": "a.png"},
        {**good, "id": "value-null", "conversations": [{"from": "human", "value": "<image>"},
                                                       {"from": "gpt", "value": None}]},
    ]))
    prepare(LLaVAConversations(root), tmp_path / "out", formatter)
    assert skipped_kinds(tmp_path / "out") == {
        "train.json[1]": "bad_record", "train.json[2]": "bad_record", "task-number": "bad_field",
        "image-number": "bad_field", "image-list-null": "bad_field", "no-conversations": "missing_field",
        "value-null": "bad_conversation"}
    assert sorted(read_back(tmp_path / "out")) == ["good"]


def test_overwrite_clears_what_a_stopped_run_left(tmp_path, formatter):
    out = tmp_path / "out"
    # What a run killed mid-way leaves: the marker, a split folder of shards, no manifest.
    (out / "train").mkdir(parents=True)
    (out / "train" / "shard-00000.parquet").write_bytes(b"PAR1 half a shard")
    (out / RUN_MARKER).write_text("running")
    (out / "skipped.jsonl").write_text("")
    src = hostile_vqa_rad(tmp_path / "src")
    with pytest.raises(FileExistsError, match="a prepare run that stopped; pass overwrite=true"):
        prepare(VQARAD(src), out, formatter)
    report = prepare(VQARAD(src), out, formatter, overwrite=True)
    assert report["written"] == 2 and not (out / RUN_MARKER).exists()
    assert sorted(read_back(out)) == ["vqa_rad-0", "vqa_rad-10"]
    # Only our files go: a manifest's split names are data (a split named like a path removes nothing outside),
    # and a user's file in a split folder or an empty folder of theirs survives.
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "shard-00000.parquet").write_text("not ours")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["../victim/keep"] = manifest["splits"]["train"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "train" / "mine.txt").write_text("keep")
    (out / "empty_mine").mkdir()
    (out / "empty_mine" / "notes.txt").write_text("keep")
    prepare(VQARAD(src), out, formatter, overwrite=True)
    assert (victim / "keep" / "shard-00000.parquet").read_text() == "not ours"
    assert (out / "train" / "mine.txt").read_text() == "keep" and (out / "empty_mine" / "notes.txt").is_file()
    # A folder that is not ours is never cleared, overwrite or not.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="holds no prepared data"):
        prepare(VQARAD(src), tmp_path / "mine", formatter, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


BAD_LINES = [
    b"{not json\n",
    b"null\n",
    b"[1, 2]\n",
    b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "x"}]}\n',
    b'{"id": "no-conversations", "task": "closed", "image": "x.png"}\n',
    b'{"id": "image-number", "task": "closed", "image": 5, "conversations": [{"from": "human", "value": "<image>"},'
    b' {"from": "gpt", "value": "Yes."}]}\n',
    b'{"id": "escaped-surrogate", "conversations": [{"from": "human", "value": "x \\ud800"},'
    b' {"from": "gpt", "value": "y"}]}\n',
]


def hostile_medsynth(medsynth_dir: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "medsynth"
    shutil.copytree(medsynth_dir / "medsynth", root)
    lines = (root / "train.jsonl").read_bytes().splitlines(keepends=True)
    (root / "train.jsonl").write_bytes(b"".join(lines[:3] + BAD_LINES + lines[3:]))
    return root


def test_jsonl_training_counts_bad_lines_at_setup_and_trains_on_the_rest(medsynth_dir, tmp_path):
    from medgpt_oss.train import train
    from tests.conftest import compose_train
    from tests.test_train import TINY_RUN

    root = hostile_medsynth(medsynth_dir, tmp_path)
    overrides = TINY_RUN + [f"data.root={root}", "data.synth=null", "trainer.max_steps=2",
                            "trainer.limit_val_batches=0"]
    trainer, _ = train(compose_train(overrides, tmp_path / "run", medsynth_dir))
    problems = trainer.datamodule.datasets["train"].problems
    assert len(problems) == len(BAD_LINES)
    assert any("train.jsonl:4: not valid JSON" in p for p in problems)
    assert any("bytes that are not UTF-8" in p for p in problems)
    assert any("record 'no-conversations'" in p for p in problems)
    assert any("record 'image-number'" in p and "'image' is 5" in p for p in problems)
    assert any("record 'escaped-surrogate'" in p and "lone surrogate" in p for p in problems)
    # Counted with the training-time skips (MedSynth's own records are all good: exactly these).
    assert trainer.global_step == 2 and trainer.datamodule.skipped_total == len(BAD_LINES)
    with pytest.raises(ValueError, match=r"train.jsonl:4: not valid JSON .*data.strict=false"):
        train(compose_train(overrides + ["data.strict=true"], tmp_path / "strict", medsynth_dir))


def test_a_truncated_shard_is_reported_with_its_file_name(tmp_path, formatter):
    from medgpt_oss.data.shards import ShardError, iter_row_group, read_manifest
    from medgpt_oss.data.streaming import ShardIndex

    out = tmp_path / "out"
    prepare(VQARAD(hostile_vqa_rad(tmp_path / "src")), out, formatter)
    shard = read_manifest(out)["splits"]["train"]["shards"][0]["path"]
    data = (out / shard).read_bytes()
    (out / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=rf"shard '.*{shard}' cannot be read .*prepare the folder again"):
        ShardIndex.open(out, "train")
    with pytest.raises(ShardError, match=shard):
        list(iter_row_group(out, shard, 0))


def write_llava(root: Path, images: dict[str, str]) -> None:
    write_raw(root / "train.json", json.dumps([
        {"id": rid, "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                      {"from": "gpt", "value": "A scan."}]}
        for rid, name in images.items()]))


def test_unusual_images_are_kept_and_the_report_says_what_was_done(tmp_path, formatter):
    import io

    import numpy as np
    from PIL import Image

    from medgpt_oss.data.images import load_image

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    ramp = np.linspace(-3.5, 900.25, 24 * 16, dtype=np.float32).reshape(24, 16)
    Image.fromarray(ramp, mode="F").save(root / "images" / "float.tif")
    Image.fromarray((ramp * 1e5).astype(np.int32), mode="I").save(root / "images" / "int32.tif")
    frames = [Image.new("L", (20, 20), shade) for shade in (30, 220)]
    frames[0].save(root / "images" / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (300, 200), (10, 200, 30)).save(root / "images" / "big.png")
    write_llava(root, {"float": "float.tif", "int32": "int32.tif", "anim": "anim.gif", "big": "big.png"})
    report = prepare(LLaVAConversations(root), tmp_path / "out", formatter, max_pixels=6_000)
    assert report["written"] == 4 and report["skipped"] == 0
    assert report["images_converted"] == {"animated_first_frame": 1, "high_bit_depth_to_8bit": 2,
                                          "reduced_to_pixel_limit": 1}
    stored = {rid: rec["image_bytes"][0] for rid, rec in read_back(tmp_path / "out").items()}
    for rid, name in (("float", "float.tif"), ("int32", "int32.tif")):  # what training would have read from the file
        assert np.array_equal(np.asarray(load_image(io.BytesIO(stored[rid]))),
                              np.asarray(load_image(root / "images" / name)))
    assert np.asarray(load_image(io.BytesIO(stored["anim"])))[0, 0, 0] == 30  # the first frame
    width, height = Image.open(io.BytesIO(stored["big"])).size
    assert width * height <= 6_000 and abs(width / height - 1.5) < 0.05


def test_duplicate_ids_are_counted_with_examples(tmp_path, formatter):
    root = tmp_path / "src"
    write_image(root / "images" / "a.png")
    write_raw(root / "train.json", json.dumps([
        {"id": rid, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                         {"from": "gpt", "value": "A film."}]}
        for rid in ("one", "dup", "two", "dup", "dup")]))
    report = prepare(LLaVAConversations(root), tmp_path / "out", formatter)
    assert report["duplicate_ids"] == {"count": 2, "first_ids": ["dup"]}  # kept, counted, named once


def test_a_benchmark_with_repeated_item_ids_fails_at_load_naming_them(tmp_path):
    from medgpt_oss.eval.benchmarks.vqa import VQARAD as VQARADBenchmark
    from medgpt_oss.eval.runner import DuplicateItemIds, RunOptions, run_benchmark

    root = tmp_path / "vqa_rad"
    write_image(root / "images" / "synpic1.jpg", "JPEG", 90)
    write_raw(root / "testset.json", json.dumps([entry(7), entry(8), entry(7)]))
    with pytest.raises(DuplicateItemIds, match=r"1 item ids used more than once, e.g. \['vqa_rad-7'\]"):
        run_benchmark(VQARADBenchmark(str(root)), RunOptions(out_dir=tmp_path / "eval", progress=False),
                      predictions={})


def test_csv_rows_with_empty_or_missing_cells_never_stop_prepare(tmp_path, formatter):
    import csv as csv_module

    from medgpt_oss.data.sources.iu_xray import IUXrayKaggle
    from medgpt_oss.data.sources.mimic_cxr import MIMICCXR
    from tests.fixtures_formats import write_iu_kaggle, write_mimic

    iu = write_iu_kaggle(tmp_path / "iu")
    with open(iu / "indiana_reports.csv", "a", newline="") as fh:
        fh.write(',,,,,,"A report without its uid.",\n')  # an empty uid cell
    with open(iu / "indiana_projections.csv", "a", newline="") as fh:
        fh.write("7\n")                                   # a short row: DictReader gives None for the rest
    report = prepare(IUXrayKaggle(iu), tmp_path / "iu_out", formatter)
    assert report["skip_reasons"]["missing_field"]["first_ids"] == ["iu_xray-row4"] and report["written"] == 2

    mimic = tmp_path / "mimic"
    write_mimic(mimic)
    with open(mimic / "mimic-cxr-2.0.0-metadata.csv", newline="") as fh:
        rows = list(csv_module.reader(fh))
    rows[1][8] = "not a time"  # one image row's StudyTime
    rows.append(["d9", "", "9"])  # a short row: no subject, no view, no date
    with open(mimic / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as fh:
        csv_module.writer(fh).writerows(rows)
    report = prepare(MIMICCXR(mimic), tmp_path / "mimic_out", formatter)
    assert report["written"] > 0 and "mimic_cxr-s9" in json.dumps(report["skip_reasons"])
