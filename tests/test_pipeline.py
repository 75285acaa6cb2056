"""The README's main job, shrunk: three stages hand off to each other, then the proof-of-learning eval."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import small_data_overrides


@pytest.mark.slow
def test_pipeline_trains_all_stages_in_order_and_writes_the_summary(tmp_path, medsynth_dir):
    out = tmp_path / "demo"
    overrides = ["trainer.max_steps=2", "data.batch_size=4", "trainer.limit_val_batches=1",
                 f"paths.data_dir={medsynth_dir}", *small_data_overrides()]
    result = subprocess.run(
        [sys.executable, "-m", "medgpt_oss.pipeline", "recipe=tiny_demo", f"out_dir={out}",
         "overrides=[" + ",".join(f"'{o}'" for o in overrides) + "]", "recipe.evaluate.limit=4", "recipe.evaluate.batch_size=4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("closed_accuracy", "closed_accuracy_images_blanked", "mcq_accuracy", "report_f1"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["n_closed"] == 4 and summary["n_mcq"] == 4
    # Each stage started from the one before: its config names the previous checkpoint.
    for stage, previous in (("longctx", "align"), ("instruct", "longctx")):
        ckpt = torch.load(out / stage / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["init_from"] == str(out / previous / "checkpoints" / "last.ckpt")
        assert ckpt["global_step"] == 2
    rows = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"closed", "mcq", "report"}
