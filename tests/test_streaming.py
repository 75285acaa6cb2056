"""Streaming prepared shards: units from the manifest, sharding, shuffling, mixing, exact resume.

Shards are written with the real ShardWriter from MedSynth records (images embedded as their PNG
bytes); loaders are real DataLoaders with 0 and 2 worker processes, and one test trains with a
real Lightning Trainer through the composed Hydra configs (data=prepared).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.prepared import PreparedDataModule
from medgpt_oss.data.processor import ModelInputSpec, record_images
from medgpt_oss.data.shards import PreparedRecord, ShardWriter, write_manifest
from medgpt_oss.data.streaming import ShardIndex, StreamingConversations, _SourceStream
from medgpt_oss.harmony import IMAGE_TOKEN
from medgpt_oss.train import train
from tests.conftest import compose_train


def medsynth_records(medsynth_dir: Path, split: str, tasks: set[str] | None = None) -> list[PreparedRecord]:
    """MedSynth JSONL records as prepared records, image files read as bytes."""
    root = medsynth_dir / "medsynth"
    out = []
    for r in read_jsonl(root / f"{split}.jsonl"):
        if tasks is None or r["task"] in tasks:
            names = record_images(r)
            out.append(PreparedRecord(r["id"], r["task"], r["conversations"], [(root / n).read_bytes() for n in names],
                                      names, {}))
    return out


def write_prepared(out: Path, splits: dict[str, list[PreparedRecord]], row_group_records: int = 4,
                   shard_records: int = 16) -> Path:
    """A prepared folder, as `python -m medgpt_oss.prepare` writes it."""
    entries = {}
    for split, records in splits.items():
        writer = ShardWriter(out, split, shard_records=shard_records, row_group_records=row_group_records)
        for record in records:
            writer.write(record)
        entries[split] = writer.close()
    write_manifest(out, "test", entries, {"written": {s: len(r) for s, r in splits.items()}})
    return out


def input_spec(tokenizer, image_size: int = 32) -> ModelInputSpec:
    return ModelInputSpec(tokenizer, IMAGE_TOKEN, tokens_per_image=4, image_size=image_size,
                          image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def prepared(medsynth_dir, tmp_path_factory) -> Path:
    """103 caption + 106 closed train records in 53 row groups of <= 4; 8-record-ish val split."""
    records = medsynth_records(medsynth_dir, "train", {"caption", "closed"})
    val = medsynth_records(medsynth_dir, "val", {"caption", "closed"})
    return write_prepared(tmp_path_factory.mktemp("prepared"), {"train": records, "val": val})


@pytest.fixture(scope="module")
def second_source(medsynth_dir, tmp_path_factory) -> Path:
    records = medsynth_records(medsynth_dir, "train", {"open"})
    for r in records:
        r.task = "caption"  # so the align stage's task filter takes it: ids still say where it came from
    return write_prepared(tmp_path_factory.mktemp("second"), {"train": records, "val": records[:4]})


def module(tokenizer, sources, **kw) -> PreparedDataModule:
    args = dict(input_spec=input_spec(tokenizer), batch_size=4, seed=7, shuffle_buffer=8, max_length=2048)
    args.update(kw)
    if isinstance(sources, Path):
        return PreparedDataModule(root=str(sources), **args)
    return PreparedDataModule(sources=[{"root": str(r), "weight": w} for r, w in sources], **args)


def take(dm: PreparedDataModule, count: int) -> list[list[str]]:
    """Iterate the train loader as the Trainer does: each used batch advances the data position."""
    ids = []
    loader = iter(dm.train_dataloader())
    for _ in range(count):
        batch = next(loader)
        dm.batches_consumed += 1  # what on_after_batch_transfer does for every batch the loop uses
        ids.append(list(batch["ids"]))
    del loader
    return ids


def test_units_come_from_the_manifest_one_array_entry_per_row_group(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    index = ShardIndex.open(prepared, "train")
    shards = manifest["splits"]["train"]["shards"]
    assert len(index) == sum(s["row_groups"] for s in shards) == 53  # ceil(209 / 4)
    assert index.records == manifest["splits"]["train"]["records"] == 209
    for array in (index.unit_shard, index.unit_group, index.unit_rows):
        assert array.dtype == np.int32 and array.shape == (53,)  # 12 bytes per row group, nothing per record
    assert index.unit_rows.tolist() == [4] * 52 + [1]


def test_each_pass_yields_every_record_once_in_a_new_order(prepared, tiny_tokenizer):
    dm = module(tiny_tokenizer, prepared, tasks=["caption", "closed"], batch_size=11)
    ids = [i for batch in take(dm, 38) for i in batch]  # 418 = two passes of 209
    first, second = ids[:209], ids[209:]
    file_order = read_jsonl_ids(prepared, "train")
    assert len(set(first)) == 209 and set(first) == set(second) == set(file_order)
    assert first != second and first != file_order  # reshuffled per pass, not the order on disk


def test_workers_and_ranks_share_out_each_pass_without_overlap(prepared):
    index = ShardIndex.open(prepared, "train")
    for workers in (1, 3, 4):
        seen = []
        for g in range(workers):
            stream = _SourceStream(index, 0, g, workers, seed=7, buffer=8, tasks=None)
            n = int(index.unit_rows[stream.units].sum())
            seen += [next(stream) for _ in range(n)]  # (unit, row) references: nothing is read
        assert len(seen) == len(set(seen)) == 209, workers
    with pytest.raises(ValueError, match="54 data loader workers"):
        _SourceStream(index, 0, 0, 54, seed=7, buffer=8, tasks=None)


def test_ranks_draw_disjoint_records_and_resume_by_rank(prepared, tiny_tokenizer):
    dm = module(tiny_tokenizer, prepared)

    def rank_batches(rank: int, start: int, count: int) -> list[list[str]]:
        dataset = StreamingConversations([(prepared, 1.0)], dm.processor, 4, seed=7, shuffle_buffer=8,
                                         world_size=2, rank=rank)
        dataset.start_batches = start
        batches = iter(dataset)
        return [list(next(batches)["ids"]) for _ in range(count)]

    rank0, rank1 = rank_batches(0, 0, 20), rank_batches(1, 0, 20)
    ids0, ids1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert len(ids0) == len(ids1) == 80 and not ids0 & ids1  # 80 < each rank's ~104 records per pass
    assert rank_batches(1, 12, 8) == rank1[12:]


def test_task_filter_and_validation_is_one_finite_pass(prepared, tiny_tokenizer):
    dm = module(tiny_tokenizer, prepared, tasks=["caption"])
    ids = [i for batch in take(dm, 26) for i in batch]  # 104 = 103 captions + 1 of the next pass
    assert all("-caption-" in i for i in ids) and len(set(ids[:103])) == 103
    val_records = read_jsonl_ids(prepared, "val")
    for workers in (0, 2):
        dm = module(tiny_tokenizer, prepared, num_workers=workers)
        val = [i for batch in dm.val_dataloader() for i in batch["ids"]]
        assert sorted(val) == sorted(val_records)


def read_jsonl_ids(root: Path, split: str) -> list[str]:
    index = ShardIndex.open(root, split)
    return [r["id"] for u in range(len(index)) for r in index.load(u, range(index.unit_rows[u]))]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_stream_neither_repeats_nor_skips(workers, prepared, second_source, tiny_tokenizer):
    sources = [(prepared, 3.0), (second_source, 1.0)]
    straight = take(module(tiny_tokenizer, sources, tasks=["caption"], num_workers=workers), 30)
    for stop in (7, 13):  # mid-pass, and with workers at different offsets
        first = module(tiny_tokenizer, sources, tasks=["caption"], num_workers=workers)
        head = take(first, stop)
        state = first.state_dict()
        resumed = module(tiny_tokenizer, sources, tasks=["caption"], num_workers=workers)
        resumed.load_state_dict(state)
        assert head + take(resumed, 30 - stop) == straight, stop
    flat = [i for batch in straight for i in batch]
    from_second = sum(i.endswith("-open") or "-open" in i for i in flat)
    assert abs(from_second - 30) <= 15  # weight 1/4 of 120 draws: 30 +- 2.8 sigma
    assert len(set(map(tuple, straight))) == 30


def test_resume_skips_without_decoding_images(prepared, tiny_tokenizer, tmp_path):
    """The records before the resume point have corrupt images: a strict resume never touches them."""
    straight = take(module(tiny_tokenizer, prepared, tasks=["caption"]), 10)
    before = {i for batch in straight[:6] for i in batch}
    records = medsynth_records_from(prepared, "train")
    for r in records:
        if r.id in before:
            r.images = [b[: len(b) // 3] for b in r.images]  # truncated PNG
    corrupt = write_prepared(tmp_path / "corrupt", {"train": records, "val": records[:4]})
    first = module(tiny_tokenizer, corrupt, tasks=["caption"], strict=True)
    first.load_state_dict({**first.state_dict(), "batches_consumed": 6})
    assert take(first, 4) == straight[6:]
    with pytest.raises(Exception, match=straight[0][0].split("-caption")[0]):
        take(module(tiny_tokenizer, corrupt, tasks=["caption"], strict=True), 1)


def medsynth_records_from(root: Path, split: str) -> list[PreparedRecord]:
    index = ShardIndex.open(root, split)
    return [PreparedRecord(r["id"], r["task"], r["conversations"], r["image_bytes"], r["image"], r["meta"])
            for u in range(len(index)) for r in index.load(u, range(index.unit_rows[u]))]


def test_resume_with_other_settings_is_refused(prepared, tiny_tokenizer):
    first = module(tiny_tokenizer, prepared, num_workers=0)
    take(first, 2)
    other = module(tiny_tokenizer, prepared, num_workers=2)
    other.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match=r"num_workers: checkpoint 0, now 2"):
        other.train_dataloader()


def test_packing_keeps_the_same_samples(prepared, tiny_tokenizer):
    plain = next(iter(module(tiny_tokenizer, prepared, tasks=["caption"]).train_dataloader()))
    packed = next(iter(module(tiny_tokenizer, prepared, tasks=["caption"], pack_length=512).train_dataloader()))
    assert sorted(packed["ids"]) == sorted(plain["ids"])
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # 4 samples share rows
    assert int((packed["labels"] != -100).sum()) == int((plain["labels"] != -100).sum())
    assert torch.allclose(packed["pixel_values"].sum(), plain["pixel_values"].sum())


class RecordIds(Callback):
    """Records the sample ids of every trained batch."""

    def __init__(self) -> None:
        self.ids: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids.append(list(batch["ids"]))


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_trainer_resume_from_checkpoint_continues_the_stream(prepared, medsynth_dir, tmp_path):
    """Real configs, real Trainer: stop at step 3, resume from its checkpoint, same batches as straight 6."""
    common = ["+stage=align", "scale=tiny", "trainer.accelerator=cpu", "logger=csv", "data=prepared",
              f"data.root={prepared}", "data.batch_size=4", "trainer.max_steps=6", "trainer.limit_val_batches=0",
              "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              "callbacks.model_checkpoint.every_n_train_steps=1"]

    def fit(out: Path, *extra: str, stop: int | None = None) -> RecordIds:
        cfg = compose_train(common + list(extra), out, medsynth_dir)
        with open_dict(cfg):
            cfg.callbacks.recorder = {"_target_": "tests.test_streaming.RecordIds"}
            if stop:
                cfg.callbacks.stop = {"_target_": "tests.test_streaming.StopAt", "step": stop}
        trainer, _ = train(cfg)
        return next(c for c in trainer.callbacks if isinstance(c, RecordIds)), trainer

    # Validation every 2 steps (one finite pass over val) must not disturb the training stream.
    straight, trainer = fit(tmp_path / "straight", "trainer.val_check_interval=2",
                            "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=null")
    assert trainer.global_step == 6 and len(straight.ids) == 6
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    head, _ = fit(tmp_path / "stopped", stop=3)
    assert head.ids == straight.ids[:3]
    tail, trainer = fit(tmp_path / "resumed", f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'step000003.ckpt'}")
    assert trainer.global_step == 6
    assert tail.ids == straight.ids[3:]


def test_an_endless_stream_needs_max_steps(prepared, medsynth_dir, tmp_path):
    cfg = compose_train(["+stage=align", "scale=tiny", "trainer.accelerator=cpu", "logger=csv", "data=prepared",
                         f"data.root={prepared}", "trainer.enable_progress_bar=false"], tmp_path, medsynth_dir)
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        train(cfg)


def test_a_folder_written_by_prepare_trains_the_instruct_stage(medsynth_dir, tiny_tokenizer, tmp_path):
    """prepare (VQA-RAD in its published layout) -> data=prepared -> instruct: 6 steps of batch 1 = 2 passes."""
    from medgpt_oss.data.conversation import HarmonyFormatter
    from medgpt_oss.data.sources.vqa_rad import VQARAD
    from medgpt_oss.prepare import prepare
    from tests.fixtures_formats import write_vqa_rad

    out = tmp_path / "vqa_rad"
    prepare(VQARAD(write_vqa_rad(tmp_path / "src")), out, HarmonyFormatter(tiny_tokenizer, IMAGE_TOKEN, 16))
    cfg = compose_train(["+stage=instruct", "scale=tiny", "trainer.accelerator=cpu", "logger=csv", "data=prepared",
                         f"data.root={out}", "data.val_split=null", "data.batch_size=1", "trainer.max_steps=6",
                         "data.pack_length=null",  # one sample a batch: 6 steps are two passes over the 3 records
                         "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                         "trainer.enable_model_summary=false"], tmp_path / "run", medsynth_dir)
    with open_dict(cfg):
        cfg.callbacks.recorder = {"_target_": "tests.test_streaming.RecordIds"}
    trainer, _ = train(cfg)
    ids = [i for batch in next(c for c in trainer.callbacks if isinstance(c, RecordIds)).ids for i in batch]
    assert sorted(ids[:3]) == sorted(ids[3:]) == ["vqa_rad-1", "vqa_rad-2", "vqa_rad-3"]
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_planned_packing_streams_full_rows_and_resumes_to_the_same_rows(prepared, second_source, tiny_tokenizer,
                                                                        num_workers):
    sources = [(prepared, 0.7), (second_source, 0.3)]
    settings = dict(tasks=["caption", "closed", "report"], pack_length=1024, max_length=1024, pack_lookahead=64,
                    pack_rows=2, num_workers=num_workers)
    straight = module(tiny_tokenizer, sources, **settings)
    loader = iter(straight.train_dataloader())
    batches = [next(loader) for _ in range(6)]
    del loader
    for batch in batches:
        assert batch["input_ids"].shape[0] == 2
        real = int((batch["input_ids"] != tiny_tokenizer.pad_token_id).sum())
        assert real > 0.9 * 2 * 1024  # rows planned over the window are full
    first = module(tiny_tokenizer, sources, **settings)
    assert take(first, 3) == [b["ids"] for b in batches[:3]]
    resumed = module(tiny_tokenizer, sources, **settings)
    resumed.load_state_dict(first.state_dict())
    loader = iter(resumed.train_dataloader())
    for want in batches[3:]:
        got = next(loader)
        assert got["ids"] == want["ids"] and torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])
    other = module(tiny_tokenizer, sources, **{**settings, "pack_rows": 3})
    other.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match=r"pack_rows: checkpoint 2, now 3"):
        other.train_dataloader()


def test_planned_packing_on_a_stream_caps_samples_at_the_row(prepared, tiny_tokenizer):
    dm = module(tiny_tokenizer, prepared, pack_length=1024, pack_lookahead=64, max_length=2048)
    with pytest.raises(ValueError, match="needs data.max_length <= data.pack_length=1024"):
        dm.train_dataloader()
