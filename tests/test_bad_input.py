"""Bad records at training time, in JSONL folders and in prepared shards, through the real configs.

The corpus: good MedSynth captions plus a truncated image, an image count mismatch, an empty
assistant turn and a sample longer than data.max_length (JSONL adds a missing and a zero-byte
image file). Each run draws exactly one pass over its records, so every bad record is drawn once:
the default mode must train and log ``data/skipped`` equal to the number of bad records; strict
mode must stop on the first bad record drawn, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medgpt_oss.data.conversation import ConversationError, HarmonyFormatter, TokenizedConversation
from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.data.shards import PreparedRecord
from medgpt_oss.train import train
from tests.conftest import compose_train
from tests.test_streaming import input_spec, write_prepared

GOOD = 20
LONG_TEXT = "word " * 3000  # > data.max_length=2048 tokens


def caption(i: int, image: str, answer: str = "A frontal chest radiograph.") -> dict:
    return {"id": f"good-{i:02d}", "task": "caption", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": answer}]}


def bad_records(png: bytes) -> list[tuple[dict, list[bytes]]]:
    """(record, image bytes) for each kind of bad record both formats can hold."""
    two = [{"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "Same."}]
    return [
        ({**caption(0, "bad/truncated.png"), "id": "bad-truncated-image"}, [png[: len(png) // 3]]),
        ({**caption(0, "bad/one.png"), "id": "bad-image-count", "conversations": two}, [png]),
        ({**caption(0, "bad/empty.png", answer=""), "id": "bad-empty-answer"}, [png]),
        ({**caption(0, "bad/long.png", answer=LONG_TEXT.strip()), "id": "bad-too-long"}, [png]),
    ]


@pytest.fixture(scope="module")
def png(medsynth_dir) -> bytes:
    first = read_jsonl(medsynth_dir / "medsynth" / "train.jsonl")[0]
    return (medsynth_dir / "medsynth" / first["image"]).read_bytes()


@pytest.fixture(scope="module")
def jsonl_corpus(png, tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("bad_jsonl")
    (root / "img").mkdir()
    (root / "bad").mkdir()
    records = []
    for i in range(GOOD + 2):  # 22 good + 6 bad = 28 = 7 batches of 4
        (root / "img" / f"{i}.png").write_bytes(png)
        records.append(caption(i, f"img/{i}.png"))
    for record, images in bad_records(png):
        (root / record["image"]).write_bytes(images[0])
        records.append(record)
    records.append({**caption(0, "bad/does-not-exist.png"), "id": "bad-missing-file"})
    (root / "bad" / "zero.png").write_bytes(b"")
    records.append({**caption(0, "bad/zero.png"), "id": "bad-zero-bytes"})
    for split, rows in (("train", records), ("val", records[:4])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, {r["id"] for r in records if r["id"].startswith("bad-")}


@pytest.fixture(scope="module")
def shard_corpus(png, tmp_path_factory) -> tuple[Path, set[str]]:
    good = [PreparedRecord(f"good-{i:02d}", "caption", caption(i, "x.png")["conversations"], [png], [f"{i}.png"])
            for i in range(GOOD)]
    bad = [PreparedRecord(r["id"], "caption", r["conversations"], images, [f"{r['id']}.png"])
           for r, images in bad_records(png)]
    root = write_prepared(tmp_path_factory.mktemp("bad_shards"), {"train": good + bad, "val": good[:4]})
    return root, {r.id for r in bad}


RUN = ["+stage=align", "scale=tiny", "trainer.accelerator=cpu", "logger=csv", "trainer.limit_val_batches=0",
       "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def overrides(kind: str, root: Path) -> list[str]:
    if kind == "jsonl":  # 28 records, batch 4: one epoch of 7 steps
        return [f"data.root={root}", "data.synth=null", "data.batch_size=4", "trainer.max_steps=7"]
    # 24 records, batch 1: one pass of 24 steps; a bad record leaves an empty batch the stage skips
    return ["data=prepared", f"data.root={root}", "data.batch_size=1", "trainer.max_steps=24"]


@pytest.mark.parametrize("kind", ["jsonl", "shards"])
def test_default_mode_skips_counts_and_logs_every_bad_record(kind, jsonl_corpus, shard_corpus, tmp_path):
    root, bad = {"jsonl": jsonl_corpus, "shards": shard_corpus}[kind]
    trainer, _ = train(compose_train(RUN + overrides(kind, root), tmp_path))
    # A skipped empty batch still counts as a step (Lightning steps the scheduler; AdamW has no gradient to apply).
    assert trainer.global_step == (7 if kind == "jsonl" else 24)
    assert trainer.callback_metrics["data/skipped"].item() == len(bad) == (6 if kind == "jsonl" else 4)
    assert trainer.datamodule.skipped_total == len(bad)
    reported = {line.split(":")[0] for line in trainer.datamodule.skipped_examples}
    assert reported == bad
    if kind == "shards":
        assert trainer.callback_metrics["data/skipped_batches"].item() == len(bad)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("kind", ["jsonl", "shards"])
def test_strict_mode_stops_at_the_first_bad_record_drawn(kind, jsonl_corpus, shard_corpus, tmp_path):
    root, bad = {"jsonl": jsonl_corpus, "shards": shard_corpus}[kind]
    trainer, _ = train(compose_train(RUN + overrides(kind, root), tmp_path / "default"))
    first_bad = trainer.datamodule.skipped_examples[0].split(":")[0]
    with pytest.raises(ConversationError) as info:
        train(compose_train(RUN + overrides(kind, root) + ["data.strict=true"], tmp_path / "strict"))
    assert info.value.record_id == first_bad and first_bad in bad
    assert f"record '{first_bad}'" in str(info.value) and "fix:" in str(info.value)


class MasksEverything(HarmonyFormatter):
    """A formatter with a bug that masks every label (LLaVA's silent failure mode)."""

    def tokenize(self, *args, **kwargs) -> TokenizedConversation:
        tokens = super().tokenize(*args, **kwargs)
        return TokenizedConversation(tokens.input_ids, torch.full_like(tokens.labels, -100), tokens.num_images)


def test_a_sample_with_no_supervised_token_is_rejected(tiny_tokenizer, png, tmp_path):
    (tmp_path / "a.png").write_bytes(png)
    processor = SampleProcessor(input_spec(tiny_tokenizer), tmp_path)
    record = caption(0, "a.png")
    assert int((processor(record)["labels"] != -100).sum()) > 0
    processor.formatter.__class__ = MasksEverything
    with pytest.raises(ConversationError, match="no token of the sample is supervised"):
        processor(record)
    assert processor.process(record) == {"id": "good-00", "skipped": "no token of the sample is supervised"}
    # prepared records carry the image bytes: decoded from memory, same pixels as the file
    processor.formatter.__class__ = HarmonyFormatter
    embedded = processor({**record, "image": ["elsewhere.png"], "image_bytes": [png]})
    assert torch.equal(embedded["pixel_values"], processor(record)["pixel_values"])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_count_skips_globally_and_resume_exactly(strategy, shard_corpus, tmp_path):
    """2 CPU ranks x batch 1 over the 24-record shard corpus: 12 steps draw every record once.

    The four bad records share one row group, so one rank gets all of them: its empty batches take
    the zero-loss path (a one-token forward, so FSDP's all-gathers line up) while the other rank trains
    (no hang), and ``data/skipped`` sums both ranks.
    Resuming the step-6 checkpoint on 2 ranks gives the same losses and the same final count.
    """
    import csv
    import os
    import subprocess
    import sys

    root, bad = shard_corpus
    args = ["+stage=align", "scale=tiny", "trainer.accelerator=cpu", "trainer.devices=2", f"strategy={strategy}",
            "logger=csv", "data=prepared", f"data.root={root}", "data.batch_size=1", "trainer.max_steps=12",
            "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "callbacks.model_checkpoint.every_n_train_steps=3",
            f"paths.root_dir={tmp_path}"]

    def fit(run: Path, *extra: str) -> dict[int, dict[str, str]]:
        proc = subprocess.run([sys.executable, "-m", "medgpt_oss.train", *args, *extra, f"hydra.run.dir={run}"],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(run / "csv" / "metrics.csv") as f:
            return {int(r["step"]): r for r in csv.DictReader(f) if r.get("data/skipped")}

    straight = fit(tmp_path / "straight")
    assert float(straight[11]["data/skipped"]) == len(bad) == 4
    resumed = fit(tmp_path / "resumed", f"ckpt_path={tmp_path / 'straight' / 'checkpoints' / 'step000006.ckpt'}")
    assert sorted(resumed) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed[step]["data/skipped"] == straight[step]["data/skipped"]
        assert resumed[step].get("train/loss") == straight[step].get("train/loss")
