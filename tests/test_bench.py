"""`python -m medgpt_oss.bench` at tiny scale on CPU: it runs both sides and reports consistent figures.

The figures themselves (speed, memory) are measured by the script, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medgpt_oss.config import CONF_DIR


@pytest.mark.slow
def test_bench_tiny_prints_figures_for_ours_and_baseline():
    command = [sys.executable, "-m", "medgpt_oss.bench", "scale=tiny", "steps=2", "warmup_steps=1",
               "seq_len=256", "sample_tokens=128"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=CONF_DIR.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["scale"] == "tiny" and report["stage"] == "instruct" and report["seq_len"] == 256
    ours, baseline = report["ours"], report["baseline"]
    for side in (ours, baseline):
        for key in ("tok_s", "step_s", "mfu", "peak_mem_gib", "loss", "active_params"):
            assert side[key] > 0, key
        # Activation checkpointing is on: 4 x active parameters per token + 2 x for the recompute.
        assert side["flops_per_token"] == 6 * side["active_params"]
        assert side["tok_s"] == pytest.approx(256 / side["step_s"])
    assert ours["active_params"] == baseline["active_params"], "both sides must run the same LLM shape"
    assert ours["attn_implementation"] == "eager_packed" and ours["loss_chunk_size"] == 1024  # CPU: no flex backward
    assert baseline["loss_chunk_size"] is None
    assert report["speedup"] == pytest.approx(ours["tok_s"] / baseline["tok_s"])
