"""End to end through the real Hydra configs, real Lightning Trainers, real MedSynth files."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medgpt_oss.config import CONF_DIR, available_stages, group_options
from medgpt_oss.stages.align import AlignStage
from medgpt_oss.stages.base import load_stage
from medgpt_oss.train import train
from tests.conftest import ENCODERS, compose_train, small_data_overrides

TINY_RUN = [
    "+stage=align", "scale=tiny", "trainer.accelerator=cpu", "logger=csv", "data.batch_size=4",
    "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


def run(tmp: Path, medsynth_dir: Path, *overrides: str):
    cfg = compose_train(TINY_RUN + small_data_overrides() + list(overrides), tmp, medsynth_dir)
    return train(cfg)


def logged(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


GROUPS = [g for g in ("encoder", "projector", "llm", "lora", "strategy", "data", "trainer", "logger", "callbacks")]


@pytest.mark.parametrize("group", GROUPS + ["debug", "experiment"])
def test_every_option_of_every_group_composes(group, tmp_path):
    from omegaconf import OmegaConf

    options = group_options(group)
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = compose_train(["+stage=align", f"{group}={option}"], tmp_path)
        resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        assert resolved["stage"]["_target_"].endswith("AlignStage")


def test_every_stage_in_conf_is_listed():
    assert "align" in available_stages()
    assert set(available_stages()) == {p.stem for p in (CONF_DIR / "stage").glob("*.yaml")}


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu", "pixel_shuffle"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_few_step_fit_for_each_encoder_and_projector(encoder, projector, tmp_path, medsynth_dir):
    trainer, stage = run(tmp_path, medsynth_dir, f"encoder={encoder}", f"projector={projector}",
                         "trainer.max_steps=2")
    assert trainer.global_step == 2
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    summary = stage.vlm.parameter_summary()
    assert summary["projector"]["trainable"] > 0
    assert summary["encoder"]["trainable"] == 0 and summary["llm"]["trainable"] == 0


def test_optimizer_sees_only_trainable_parameters(tmp_path, medsynth_dir):
    trainer, stage = run(tmp_path, medsynth_dir, "trainer.max_steps=1", "stage.train_encoder=true")
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    trainable = {id(p) for p in stage.parameters() if p.requires_grad}
    assert optimised == trainable
    names = {group["name"]: group["lr"] for group in trainer.optimizers[0].param_groups}
    assert set(names) == {"encoder", "projector"}  # encoder unfrozen by config, LLM frozen
    assert stage.vlm.parameter_summary()["encoder"]["trainable"] > 0


def test_align_loss_goes_down_on_medsynth(tmp_path, medsynth_dir):
    run(tmp_path, medsynth_dir, "trainer.max_steps=60", "trainer.max_epochs=20", "data.batch_size=16",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=0")
    losses = logged(tmp_path, "train/loss")
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.15, (first, last)


class StopAt(Callback):
    """Ends a run after ``step`` optimizer steps without touching its config (a stand-in for a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("interrupt_at", [4, 7])  # mid-epoch, and exactly at the epoch boundary
def test_resume_continues_the_same_trajectory_and_checkpoints_reload(interrupt_at, tmp_path, medsynth_dir):
    # 103 caption records / batch 16 -> 7 steps per epoch; 14 steps = 2 epochs.
    common = ["data.batch_size=16", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
              "trainer.max_epochs=3", "trainer.max_steps=14", "callbacks.model_checkpoint.every_n_train_steps=1"]
    straight = tmp_path / "straight"
    trainer, _ = run(straight, medsynth_dir, *common)
    assert trainer.num_training_batches == 7
    interrupted = tmp_path / "interrupted"
    trainer, _ = run(interrupted, medsynth_dir, *common, "+callbacks.stop._target_=tests.test_train.StopAt",
                     f"+callbacks.stop.step={interrupt_at}")
    assert trainer.global_step == interrupt_at
    resumed = tmp_path / "resumed"
    ckpt = interrupted / "checkpoints" / f"step{interrupt_at:06d}.ckpt"
    trainer, stage = run(resumed, medsynth_dir, *common, f"ckpt_path={ckpt}")
    assert trainer.global_step == 14
    assert logged(resumed, "train/loss") == logged(straight, "train/loss")[interrupt_at:]

    # The checkpoint holds only what trains, and reloads into the complete model with no arguments.
    ckpt_path = resumed / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    assert set(checkpoint["state_dict"]) == {n for n, p in stage.named_parameters() if p.requires_grad}
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    for reloaded in (AlignStage.load_from_checkpoint(ckpt_path), load_stage(str(ckpt_path))):
        assert isinstance(reloaded, AlignStage)
        for (name, a), b in zip(stage.state_dict().items(), reloaded.state_dict().values()):
            assert torch.equal(a, b), name


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cwd / "empty-hf-cache")}
    env.pop("MEDGPT_ROOT", None)  # outputs go under cwd, as for a user who sets nothing
    return subprocess.run([sys.executable, "-m", "medgpt_oss.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_without_a_stage_the_program_lists_the_stages(tmp_path):
    result = cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "+stage=align" in result.stderr


def test_missing_real_weights_fail_fast_before_any_data_work(tmp_path):
    start = time.monotonic()
    result = cli("+stage=align", "encoder=medsiglip", cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert "google/medsiglip-448" in result.stderr and "encoder.pretrained=" in result.stderr
    assert "openai/gpt-oss-20b" in result.stderr and "llm.pretrained=" in result.stderr
    assert not (tmp_path / "data").exists(), "no data may be generated before the weights check"
    assert elapsed < 60, elapsed  # interpreter + imports; the check itself takes milliseconds


@pytest.mark.slow
def test_multirun_encoder_sweep_gives_each_job_its_own_folder_and_checkpoint(tmp_path, medsynth_dir):
    result = cli("-m", *[o for o in TINY_RUN if o != "logger=csv"], *small_data_overrides(),
                 "encoder=" + ",".join(ENCODERS), "trainer.max_steps=2",
                 f"paths.data_dir={medsynth_dir}", cwd=tmp_path, timeout=600)
    # No paths.root_dir: the default roots the sweep folder at the launch directory (resolved before
    # Hydra's runtime config exists, so it must not go through ${hydra:runtime.cwd}).
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = sorted((tmp_path / "outputs" / "align" / "multiruns").glob("*/*/checkpoints/last.ckpt"))
    assert len(ckpts) == len(ENCODERS)
    encoders = {torch.load(c, weights_only=False)["hyper_parameters"]["model"]["encoder"]["_target_"]
                + torch.load(c, weights_only=False)["hyper_parameters"]["model"]["encoder"]["pretrained"]
                for c in ckpts}
    assert len(encoders) == len(ENCODERS)


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run(tmp_path, medsynth_dir):
    """Instruct stage with LoRA dropout: weights, optimizer, scheduler, data position and RNG all resume."""
    args = [*TINY_RUN, *small_data_overrides(), "+stage=instruct", "lora=r16", "data.batch_size=8",
            "trainer.max_steps=8", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
            "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1",
            f"paths.data_dir={medsynth_dir}", "data.pack_length=512"]
    args = [a for a in args if a != "+stage=align"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight = tmp_path / "straight"
    assert cli(*args, f"hydra.run.dir={straight}", cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "medgpt_oss.train", *args, f"hydra.run.dir={killed}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "step000005.ckpt"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, no final checkpoint
    proc.wait()
    assert target.exists()
    step = max(int(p.stem[4:]) for p in (killed / "checkpoints").glob("step*.ckpt"))

    resumed = tmp_path / "resumed"
    result = cli(*args, f"hydra.run.dir={resumed}",
                 f"ckpt_path={killed / 'checkpoints' / f'step{step:06d}.ckpt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert logged(resumed, "train/loss") == logged(straight, "train/loss")[step:]


def test_next_stage_starts_from_the_previous_stages_weights(tmp_path, medsynth_dir):
    import hydra

    run(tmp_path / "align", medsynth_dir, "trainer.max_steps=2")
    align_ckpt = tmp_path / "align" / "checkpoints" / "last.ckpt"
    handed_over = torch.load(align_ckpt, weights_only=True)["state_dict"]
    cfg = compose_train([o for o in TINY_RUN if o != "+stage=align"] + small_data_overrides()
                        + ["+stage=instruct", f"init_from={align_ckpt}"], tmp_path / "instruct", medsynth_dir)
    from medgpt_oss.config import model_config

    stage = hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")
    before = {k: v.clone() for k, v in stage.state_dict().items() if k in handed_over}
    assert any(not torch.equal(before[k], handed_over[k]) for k in handed_over)
    stage.setup("fit")
    after = stage.state_dict()
    assert all(torch.equal(after[k], handed_over[k]) for k in handed_over)
    # Handed-over weights are part of this stage's checkpoints even where this stage freezes them.
    assert set(handed_over) <= stage.saved_keys
    assert stage.vlm.parameter_summary()["llm"]["trainable"] > 0  # instruct trains the LLM


def test_init_from_a_mismatched_model_says_what_to_change(tmp_path, medsynth_dir):
    run(tmp_path / "align", medsynth_dir, "trainer.max_steps=1", "projector=linear")
    from medgpt_oss.provenance import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="projector: checkpoint linear, this run mlp2x_gelu -> add "
                                                 "projector=linear"):
        run(tmp_path / "instruct", medsynth_dir, "trainer.max_steps=1",
            f"init_from={tmp_path / 'align' / 'checkpoints' / 'last.ckpt'}")


def test_a_crash_while_saving_never_destroys_the_last_good_checkpoint(tmp_path, medsynth_dir, monkeypatch):
    from fsspec.implementations.local import LocalFileOpener

    trainer, _ = run(tmp_path, medsynth_dir, "trainer.max_steps=2")
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = last.read_bytes()

    def write_half_then_die(self, data, *args, **kwargs):
        self.f.write(data[: len(data) // 2])
        raise OSError("disk full / process killed mid-write")

    monkeypatch.setattr(LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(OSError, match="mid-write"):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == good
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_rows_added_for_the_image_token_are_saved_and_restored(tmp_path, medsynth_dir):
    # llm=qwen2 at tiny scale has no spare embedding rows: the image token grows the embeddings (the one case
    # where GPT-oss's spare rows do not apply). The frozen LLM's new rows go into every checkpoint.
    from medgpt_oss.stages.base import load_stage
    from medgpt_oss.stages.checkpoint_state import ADDED_ROWS_KEY

    _, stage = run(tmp_path, medsynth_dir, "llm=qwen2", "trainer.max_steps=1", "trainer.limit_val_batches=0")
    llm = stage.vlm.llm
    first = llm.added_rows
    assert first is not None and llm.image_token_id == first
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    rows = ckpt[ADDED_ROWS_KEY]
    assert torch.equal(rows["0"], llm.model.get_input_embeddings().weight[first:].detach())
    # A reload takes the rows from the checkpoint, not from how they were drawn: altered rows come back altered.
    ckpt[ADDED_ROWS_KEY] = {k: torch.full_like(v, 0.25) for k, v in rows.items()}
    torch.save(ckpt, tmp_path / "altered.ckpt")
    torch.manual_seed(1234)
    loaded = load_stage(str(tmp_path / "altered.ckpt"))
    assert (loaded.vlm.llm.model.get_input_embeddings().weight[first:] == 0.25).all()
    assert torch.equal(load_stage(str(ckpt_path)).vlm.llm.model.get_input_embeddings().weight,
                       llm.model.get_input_embeddings().weight)


def test_accumulated_micro_batches_equal_one_batch_of_the_same_samples(tmp_path, medsynth_dir):
    # MedSynth captions differ in length, so the two micro-batches hold different numbers of supervised tokens:
    # only weighting them by tokens (not a mean of micro-batch means) gives the gradient of the whole batch.
    instruct = [o if o != "+stage=align" else "+stage=instruct" for o in TINY_RUN] + small_data_overrides()
    common = instruct + ["trainer.max_steps=3", "trainer.limit_val_batches=0", "data.pack_length=null",
                         "stage.optim.warmup_ratio=0"]
    _, whole = train(compose_train(common + ["data.batch_size=4"], tmp_path / "whole", medsynth_dir))
    _, accumulated = train(compose_train(common + ["data.batch_size=2", "trainer.accumulate_grad_batches=2"],
                                         tmp_path / "accumulated", medsynth_dir))
    assert whole.trainer.global_step == accumulated.trainer.global_step == 3
    got, want = accumulated.state_dict(), whole.state_dict()
    trained = [k for k in want if k in whole.saved_keys]
    assert trained
    for key in trained:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
