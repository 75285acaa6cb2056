"""Runs never lose work, can be extended, and tell the user what they do (checkpoints, schedule, bar, train.log)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from medgpt_oss.checkpointing import RunCheckpoint
from medgpt_oss.progress import StepProgressBar
from medgpt_oss.train import BrokenCheckpointError, train
from tests.conftest import compose_train, small_data_overrides
from tests.test_train import TINY_RUN, cli, logged

LR = "lr-AdamW/projector"  # LearningRateMonitor, logged at each step's start: the rate that step trains with
ALIGN_LR = 1.0e-3


def fit(out: Path, medsynth_dir: Path, *overrides: str, progress_bar: bool = False):
    base = [o for o in TINY_RUN if not (progress_bar and o.startswith("trainer.enable_progress_bar"))]
    return train(compose_train(base + small_data_overrides() + ["trainer.log_every_n_steps=1",
                                                                "trainer.limit_val_batches=0", *overrides],
                               out, medsynth_dir))


class SeeLastCkpt(Callback):
    """At each step's start: the step last.ckpt holds (None before the first save), and the bar's description."""

    def __init__(self) -> None:
        self.last_steps: list[int | None] = []
        self.bar: list[tuple[str, float | None, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        self.last_steps.append(torch.load(last, weights_only=True)["global_step"] if last.exists() else None)
        bar = trainer.progress_bar_callback
        if isinstance(bar, StepProgressBar) and bar.train_progress_bar_id is not None:
            task = bar.train_progress_bar
            self.bar.append((task.description, task.total, task.completed))


def _with_recorder(out: Path, medsynth_dir: Path, *overrides: str, progress_bar: bool = False):
    trainer, stage = fit(out, medsynth_dir, "+callbacks.see._target_=tests.test_runs.SeeLastCkpt", *overrides,
                         progress_bar=progress_bar)
    return trainer, next(c for c in trainer.callbacks if isinstance(c, SeeLastCkpt))


# ------------------------------------------------------------------------------------------ checkpoints
def test_one_callback_refreshes_last_ckpt_every_n_steps_and_keeps_numbered_snapshots(tmp_path, medsynth_dir):
    trainer, seen = _with_recorder(tmp_path, medsynth_dir, "trainer.max_steps=7", "trainer.max_epochs=-1",
                                   "callbacks.model_checkpoint.every_n_train_steps=3",
                                   "callbacks.model_checkpoint.last_every_n_train_steps=2",
                                   "callbacks.model_checkpoint.last_every_n_minutes=null")
    # One checkpoint callback: nothing else writes last.ckpt.
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelCheckpoint)] == [RunCheckpoint]
    # Before steps 1..7: last.ckpt as saved after steps 2 (every 2), 3 (snapshot), 4, 6.
    assert seen.last_steps == [None, None, 2, 3, 4, 4, 6]
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000003.ckpt", "step000006.ckpt",
                                                       "step000007.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 7


def test_last_ckpt_is_refreshed_every_m_minutes_on_an_endless_run(tmp_path, medsynth_dir):
    # A minute bound far below a step's time: every step is due. No epoch end, no step rule.
    _, seen = _with_recorder(tmp_path, medsynth_dir, "trainer.max_steps=5", "trainer.max_epochs=-1",
                             "callbacks.model_checkpoint.last_every_n_train_steps=null",
                             "callbacks.model_checkpoint.last_every_n_minutes=1e-9")
    assert seen.last_steps == [None, 1, 2, 3, 4]


@pytest.mark.slow
def test_kill_9_loses_at_most_n_steps_and_resumes_from_last_ckpt(tmp_path, medsynth_dir):
    n = 2
    args = [o for o in TINY_RUN if o != "logger=csv"] + small_data_overrides() + [
        "trainer.max_steps=14", "trainer.max_epochs=-1", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
        f"callbacks.model_checkpoint.last_every_n_train_steps={n}", f"paths.data_dir={medsynth_dir}"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medgpt_oss.train", *args, f"hydra.run.dir={killed}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def steps_logged() -> list[int]:  # train.log gets a metrics line per step as it happens
        log = killed / "train.log"
        return [int(s) for s in re.findall(r"step (\d+)/14", log.read_text())] if log.exists() else []

    deadline = time.monotonic() + 300
    while max(steps_logged(), default=0) < 7 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no final checkpoint
    proc.wait()
    done = max(steps_logged())
    assert 7 <= done < 14
    last = killed / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["global_step"]
    assert done - n <= saved <= done, (done, saved)
    assert not list((killed / "checkpoints").glob("step*.ckpt"))  # snapshots: none asked for in between

    resumed = tmp_path / "resumed"
    result = cli(*args, f"hydra.run.dir={resumed}", f"ckpt_path={last}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.findall(r"step (\d+)/14", (resumed / "train.log").read_text()) == [str(s) for s in range(saved + 1, 15)]
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14


# ------------------------------------------------------------------------- extending a finished run
def test_a_finished_run_resumed_with_more_max_steps_trains_them_on_the_new_schedule(tmp_path, medsynth_dir):
    # 48 records / batch 4 = 12 batches per epoch and trainer.max_epochs=1 (the default): the 4-step run ends mid-epoch.
    trainer, _ = fit(tmp_path / "four", medsynth_dir, "trainer.max_steps=4")
    assert trainer.global_step == 4
    last = tmp_path / "four" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["lr_schedule_total"] == 4
    straight, _ = fit(tmp_path / "straight", medsynth_dir, "trainer.max_steps=8")

    trainer, seen = _with_recorder(tmp_path / "eight", medsynth_dir, "trainer.max_steps=8", f"ckpt_path={last}",
                                   progress_bar=True)
    assert trainer.global_step == 8
    lrs = logged(tmp_path / "eight", LR)
    assert len(lrs) == 4  # steps 5..8
    # The schedule over the new total (warmup int(0.03 * 8) = 0): the rates a straight 8-step run used there,
    # positive, non-increasing, never 0 before the last step -- not the finished schedule's 0 and a rise after it.
    torch.testing.assert_close(lrs, logged(tmp_path / "straight", LR)[4:])
    assert lrs[0] == pytest.approx(ALIGN_LR * 0.5)  # cos at 4/8
    assert all(lr > 0 for lr in lrs) and lrs == sorted(lrs, reverse=True)
    # The bar counts optimizer steps toward max_steps, from the restored step.
    assert seen.bar[0] == ("step 4/8", 8, 4)
    assert [d for d, _, _ in seen.bar] == [f"step {s}/8" for s in range(4, 8)]
    bar = trainer.progress_bar_callback
    assert (bar.train_progress_bar.description, bar.train_progress_bar.completed) == ("step 8/8", 8)

    with pytest.warns(UserWarning, match=r"nothing was trained: checkpoint .* is at step 8, where "
                                         r"trainer.max_steps=8 ends this run"):
        trainer, _ = fit(tmp_path / "again", medsynth_dir, "trainer.max_steps=8",
                         f"ckpt_path={tmp_path / 'eight' / 'checkpoints' / 'last.ckpt'}")
    assert trainer.global_step == 8


def test_the_bar_counts_steps_not_epochs(tmp_path, medsynth_dir):
    # 12 batches per epoch, 2 accumulated per step: 15 steps span 2.5 epochs; max_epochs=-1 once showed "Epoch 0/-2".
    trainer, seen = _with_recorder(tmp_path, medsynth_dir, "trainer.max_steps=15", "trainer.max_epochs=-1",
                                   "trainer.accumulate_grad_batches=2", progress_bar=True)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    assert {total for _, total, _ in seen.bar} == {15}
    assert [d for d, _, _ in seen.bar][::2] == [f"step {s}/15" for s in range(15)]  # one bar across epochs
    assert not any("Epoch" in d for d, _, _ in seen.bar)
    assert (bar.train_progress_bar.description, bar.train_progress_bar.completed) == ("step 15/15", 15)


# ------------------------------------------------------------------------------- broken checkpoints
@pytest.mark.parametrize("option", ["ckpt_path", "init_from"])
def test_an_empty_or_truncated_checkpoint_is_named(option, tmp_path, medsynth_dir):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 1}, good)
    empty, cut = tmp_path / "empty.ckpt", tmp_path / "cut.ckpt"
    empty.touch()
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for broken, what in ((empty, "is empty"), (cut, "truncated or corrupt")):
        with pytest.raises(BrokenCheckpointError, match=f"{option}: checkpoint '{re.escape(str(broken))}'.*{what}"):
            fit(tmp_path / broken.stem, medsynth_dir, f"{option}={broken}")
    assert not (tmp_path / "empty").exists(), "refused before any run folder, model or data work"


# --------------------------------------------------------------------------------------- train.log
def test_train_log_gets_metrics_warnings_and_errors(tmp_path, medsynth_dir):
    args = [o for o in TINY_RUN if o != "logger=csv"] + small_data_overrides() + [
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=2", f"paths.data_dir={medsynth_dir}"]
    first, second, again = tmp_path / "first", tmp_path / "second", tmp_path / "again"
    assert cli(*args, "trainer.max_steps=4", f"hydra.run.dir={first}", cwd=tmp_path).returncode == 0
    # Mid-epoch resume (12 batches per epoch): exact, so no "dataloader is not resumable" warning.
    result = cli(*args, "trainer.max_steps=6", f"hydra.run.dir={second}",
                 f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (second / "train.log").read_text()
    assert re.search(r"\[medgpt_oss.metrics\]\[INFO\] - step 6/6 .*lr/projector=\S+ .*train/loss=\d", log), log
    assert "resumed at step 4 with a schedule over 6 steps" in log  # Lightning's and our info lines
    assert "not resumable" not in log + result.stderr
    assert "dirpath has changed" not in log + result.stderr

    # A warning: on the console and in train.log.
    result = cli(*args, "trainer.max_steps=6", f"hydra.run.dir={again}",
                 f"ckpt_path={second / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert result.returncode == 0
    assert "nothing was trained" in result.stderr
    assert re.search(r"\[py.warnings\]\[WARNING\] - .*nothing was trained", (again / "train.log").read_text())

    # An error: on the console and in train.log.
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    broken = tmp_path / "broken"
    result = cli(*args, f"hydra.run.dir={broken}", f"ckpt_path={empty}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"ckpt_path: checkpoint '{empty}' is empty" in result.stderr
    assert f"[ERROR] - error: ckpt_path: checkpoint '{empty}' is empty" in (broken / "train.log").read_text()


def test_loading_a_checkpoint_lists_no_frozen_keys(tmp_path, medsynth_dir):
    from medgpt_oss.stages.base import load_stage

    fit(tmp_path, medsynth_dir, "trainer.max_steps=1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_stage(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert not [w for w in caught if "Found keys" in str(w.message)]


def test_missing_weights_say_hf_download_and_which_models_are_gated():
    from medgpt_oss.models.hub import missing_weights_message

    gated = missing_weights_message("google/medsiglip-448", "encoder.pretrained")
    assert "hf download google/medsiglip-448" in gated and "huggingface-cli" not in gated
    assert "--local-dir /local/dir/medsiglip-448" in gated
    assert "gated" in gated and "https://huggingface.co/google/medsiglip-448" in gated and "licence" in gated
    open_model = missing_weights_message("openai/gpt-oss-20b", "llm.pretrained")
    assert "hf download openai/gpt-oss-20b --local-dir" in open_model and "gated" not in open_model
