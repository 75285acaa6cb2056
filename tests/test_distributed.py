"""More than one process: DDP and FSDP on CPU (gloo) give the losses of one process with the same
global batch; a mid-epoch DDP checkpoint resumes exactly (on 2 ranks and on 1); one run folder per job.

Every run goes through the real CLI (`python -m medgpt_oss.train`) in a subprocess, so Lightning
launches the second rank by re-running the command (as on a GPU node) and no process group leaks
into the test process.

Tolerance: both sides compute in fp32 on the same samples; they differ only in summation order
(one batch of 4 vs two batches of 2 whose gradients gloo all-reduces and averages, or FSDP
reduce-scatters), a relative error of a few fp32 ulps (2**-23 ~ 1.2e-7) per reduction. Four
Adam steps carry that into the weights, and Adam divides by sqrt(v), so a near-zero gradient entry
can turn rounding noise into a larger update: we allow 1e-5 relative on each logged loss (~80 ulps;
measured: at most 3 ulps, 1.8e-7), while a wrong or missing sample, a missed all-reduce or a step
off moves the loss by 1e-2 or more.

The runs train on MedSynth captions of different lengths, so the ranks' batches hold different
numbers of supervised tokens: equality then needs each rank's loss weighted by its share of the
step's tokens (stages/collectives.py), not a plain mean of per-rank means (which fails at 8e-3 relative).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgpt_oss.data.datamodule import ResumableShuffleSampler
from tests.conftest import small_data_overrides

RTOL = 1e-5
STEPS = 4
PER_DEVICE_BATCH = 2


def cli(root: Path, data_dir: Path, *overrides: str, devices: int = 1, run_dir: Path | None = None,
        timeout: int = 600, stage: str = "align") -> subprocess.CompletedProcess:
    """`python -m medgpt_oss.train` on the tiny model; global batch = devices x per-device batch."""
    args = [
        f"+stage={stage}", "scale=tiny", "trainer.accelerator=cpu", f"trainer.devices={devices}", "logger=csv",
        f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.model_checkpoint.every_n_train_steps=2", f"paths.root_dir={root}", f"paths.data_dir={data_dir}",
        *small_data_overrides(), *(o for o in overrides if not o.startswith("-")),
    ]
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags (-m) go before the overrides
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medgpt_oss.train", *flags, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


def assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    steps = sorted(want)
    torch.testing.assert_close(torch.tensor([got[s] for s in steps]), torch.tensor([want[s] for s in steps]),
                               rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, medsynth_dir) -> dict[int, float]:
    """One process, global batch 4."""
    run = tmp_path_factory.mktemp("one_process") / "run"
    cli(run.parent, medsynth_dir, f"data.batch_size={2 * PER_DEVICE_BATCH}", run_dir=run)
    got = losses(run)
    assert sorted(got) == list(range(STEPS))
    return got


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory, medsynth_dir) -> Path:
    """Two DDP ranks x batch 2, in the default `${now:}` run folder (what users get)."""
    root = tmp_path_factory.mktemp("ddp")
    cli(root, medsynth_dir, "strategy=ddp", f"data.batch_size={PER_DEVICE_BATCH}", devices=2)
    return root


def the_run_folder(root: Path) -> Path:
    runs = list((root / "outputs" / "align" / "runs").iterdir())
    assert len(runs) == 1, f"expected one run folder, got {runs}"
    return runs[0]


@pytest.mark.slow
def test_ddp_two_processes_write_one_run_folder(ddp_root):
    run = the_run_folder(ddp_root)
    # rank 1 logs beside rank 0 (Lightning names its Hydra job train_ddp_process_1) and writes nothing else
    assert {"train.log", "train_ddp_process_1.log", "config.yaml", "csv", "checkpoints"} <= {
        p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt", "step000002.ckpt", "step000004.ckpt"]


@pytest.mark.slow
def test_ddp_multirun_gives_each_job_one_folder_and_its_own_overrides(medsynth_dir, tmp_path):
    """Lightning re-runs the command for rank 1; in a sweep that must be this job, not the whole sweep."""
    cli(tmp_path, medsynth_dir, "-m", "strategy=ddp", f"data.batch_size={PER_DEVICE_BATCH}", "trainer.max_steps=1",
        "seed=1,2", devices=2)
    sweeps = list((tmp_path / "outputs" / "align" / "multiruns").iterdir())
    assert len(sweeps) == 1 and not (tmp_path / "outputs" / "align" / "runs").exists()
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        child_log = (sweeps[0] / job / "train_ddp_process_1.log").read_text()
        assert f"[rank: 1] Seed set to {seed}\n" in child_log  # rank 1 ran this job's overrides
        assert (sweeps[0] / job / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_matches_one_process_with_the_same_global_batch(ddp_root, reference):
    assert_same_losses(losses(the_run_folder(ddp_root)), reference)
    checkpoint = torch.load(the_run_folder(ddp_root) / "checkpoints" / "step000002.ckpt", weights_only=True)
    # the data position is global: 2 steps x 2 ranks x 2 samples
    assert checkpoint["ConversationDataModule"]["train_samples_consumed"] == 2 * 2 * PER_DEVICE_BATCH


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 1])
def test_ddp_mid_epoch_checkpoint_resumes_exactly_on_any_number_of_ranks(devices, ddp_root, medsynth_dir, tmp_path):
    """Resume the 2-rank run's step-2 checkpoint on 2 ranks, and on 1 rank with the same global batch."""
    ckpt = the_run_folder(ddp_root) / "checkpoints" / "step000002.ckpt"
    run = tmp_path / "resumed"
    cli(tmp_path, medsynth_dir, "strategy=ddp" if devices > 1 else "strategy=auto",
        f"data.batch_size={2 * PER_DEVICE_BATCH // devices}", f"ckpt_path={ckpt}", devices=devices, run_dir=run)
    uninterrupted = losses(the_run_folder(ddp_root))
    resumed = losses(run)
    assert sorted(resumed) == [2, 3]
    assert_same_losses(resumed, {s: uninterrupted[s] for s in (2, 3)})


@pytest.mark.slow
def test_fsdp_matches_one_process_and_its_sharded_checkpoint_resumes_on_one_rank(reference, medsynth_dir, tmp_path):
    run = tmp_path / "run"
    cli(tmp_path, medsynth_dir, "strategy=fsdp", f"data.batch_size={PER_DEVICE_BATCH}", devices=2, run_dir=run)
    assert_same_losses(losses(run), reference)
    sharded = run / "checkpoints" / "step000002.ckpt"
    assert sharded.is_dir() and (sharded / "meta.pt").is_file()
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # a shard per rank
    # The folder holds only the trained projector; the frozen weights come from the seeded base init.
    from torch.distributed.checkpoint import FileSystemReader

    saved = {k for k in FileSystemReader(sharded).read_metadata().state_dict_metadata if k.startswith("model.")}
    assert saved and all(k.startswith("model.vlm.projector.") for k in saved), sorted(saved)[:5]

    resumed = tmp_path / "resumed_on_one_rank"
    cli(tmp_path, medsynth_dir, "strategy=fsdp", f"data.batch_size={2 * PER_DEVICE_BATCH}", f"ckpt_path={sharded}",
        devices=1, run_dir=resumed)
    assert_same_losses(losses(resumed), {s: reference[s] for s in (2, 3)})


def test_deepspeed_without_the_package_names_the_extra(tmp_path, medsynth_dir):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here; the message is for installs without it")
    from medgpt_oss.train import MissingExtraError, train
    from tests.conftest import compose_train

    cfg = compose_train(["+stage=align", "scale=tiny", "strategy=deepspeed_zero3"], tmp_path, medsynth_dir)
    # train() stops before building any model or data; main() prints the message and exits 1
    with pytest.raises(MissingExtraError, match=r"pip install 'medgpt-oss\[deepspeed\]'"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


# -- fast checks: the sampler's sharding arithmetic and the SLURM launcher config ---------------------

def _stream(sampler: ResumableShuffleSampler) -> list[int]:
    return list(iter(sampler))


@pytest.mark.parametrize("replicas", [2, 3])
def test_sampler_ranks_together_take_the_one_process_batches(replicas):
    batch, length = 4, 50
    one = _stream(ResumableShuffleSampler(length, seed=3))
    ranks = [_stream(ResumableShuffleSampler(length, 3, num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert len({len(r) for r in ranks}) == 1 == len({len(ResumableShuffleSampler(length, 3, replicas, r))
                                                     for r in range(replicas)})  # equal counts: no DDP hang
    for k in range(length // (batch * replicas)):
        global_batch = one[k * batch * replicas:(k + 1) * batch * replicas]
        assert sorted(sum((r[k * batch:(k + 1) * batch] for r in ranks), [])) == sorted(global_batch)


def test_sampler_resumes_a_two_rank_position_on_three_ranks_and_skips_only_the_short_tail():
    length = 50
    one = _stream(ResumableShuffleSampler(length, seed=3))
    resumed = []
    for r in range(3):
        sampler = ResumableShuffleSampler(length, 3, num_replicas=3, rank=r)
        sampler.consumed = 12  # 3 steps of 2 ranks x 2 samples
        resumed.append(_stream(sampler))
    # the rest of the pass, minus the 38 % 3 = 2 samples that cannot be split evenly
    assert sorted(sum(resumed, [])) == sorted(one[12:12 + 36])
    # only the 2-sample tail of pass 0 is left: the ranks start pass 1, which one process would see next
    tails = []
    for r in range(3):
        sampler = ResumableShuffleSampler(length, 3, num_replicas=3, rank=r)
        sampler.consumed = 48
        tails.append(_stream(sampler))
        assert sampler.consumed == length
    one_next = ResumableShuffleSampler(length, seed=3)
    one_next.consumed = length
    assert sorted(sum(tails, [])) == sorted(_stream(one_next)[:48])


def test_slurm_launcher_config_composes_with_the_trainer_resources(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import hydra
    from omegaconf import OmegaConf

    from tests.conftest import compose_train

    cfg = compose_train(["+stage=align", "hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                         "trainer.num_nodes=2", "strategy=fsdp", "hydra.launcher.partition=gpu"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu" and launcher["signal_delay_s"] == 120  # plugin defaults kept
    assert type(hydra.utils.instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"  # submits nothing


def test_fsdp_with_trainer_gpu_gets_bf16_mixed_precision_and_wraps_the_models_blocks(tmp_path):
    """Precision is the trainer group's; Lightning turns bf16-mixed into FSDP MixedPrecision."""
    import hydra
    from lightning.pytorch import Trainer

    from medgpt_oss.config import model_config
    from medgpt_oss.strategies import NormClippingFSDPPrecision
    from medgpt_oss.train import choose_strategy, with_model_blocks
    from tests.conftest import compose_train

    cfg = compose_train(["+stage=align", "scale=tiny", "trainer=gpu", "strategy=fsdp"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.use_distributed_sampler is False
    stage = hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")
    strategy = with_model_blocks(choose_strategy(cfg), stage.vlm)
    # accelerator=cpu only so the Trainer can be built here; nothing runs
    trainer = Trainer(accelerator="cpu", devices=1, precision=cfg.trainer.precision, strategy=strategy, logger=False)
    plugin = trainer.strategy.precision_plugin
    assert isinstance(plugin, NormClippingFSDPPrecision)
    mp = plugin.mixed_precision_config
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16,) * 3
    assert trainer.strategy.sharding_strategy.name == "FULL_SHARD"
    blocks = stage.vlm.fsdp_wrap_modules()
    assert {b.__name__ for b in blocks} == {"GptOssDecoderLayer", "CLIPEncoderLayer"}
    assert trainer.strategy.kwargs["auto_wrap_policy"]._module_classes == blocks  # FSDP units
    assert trainer.strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == blocks  # recompute


@pytest.mark.parametrize("trainer_args", [["trainer.accelerator=cpu", "trainer.devices=2"],
                                          ["trainer=gpu", "trainer.devices=1"]])
def test_fsdp_hybrid_without_several_gpus_per_node_says_to_use_fsdp(trainer_args, tmp_path):
    """Measured on 2 CPU processes: HYBRID_SHARD over a 1-device 'node' left each rank on its own
    gradients (step-1 loss 8.1427 vs 8.2523 for one process), so this setup is refused."""
    import hydra

    from medgpt_oss.config import model_config
    from medgpt_oss.train import choose_strategy, with_model_blocks
    from tests.conftest import compose_train

    cfg = compose_train(["+stage=align", "scale=tiny", "strategy=fsdp_hybrid", *trainer_args], tmp_path)
    stage = hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")
    with pytest.raises(ValueError, match="Use strategy=fsdp"):
        with_model_blocks(choose_strategy(cfg), stage.vlm)
    cfg.trainer.devices, cfg.trainer.accelerator = 8, "gpu"
    hybrid = with_model_blocks(choose_strategy(cfg), stage.vlm)
    assert hybrid.sharding_strategy.name == "HYBRID_SHARD"  # 8 GPUs per node: fine


@pytest.mark.slow
def test_ddp_trains_batches_where_one_rank_has_no_image(medsynth_dir, tmp_path):
    """Instruct mixes text-only questions with image ones; with one sample per rank, some steps give one
    rank no image. Its vision tower and projector must still take part, or DDP stops waiting for their
    gradients (and FSDP's all-gathers would hang)."""
    run = tmp_path / "run"
    cli(tmp_path, medsynth_dir, "strategy=ddp", "data.tasks=[text_qa,closed]", "data.batch_size=1",
        "data.pack_length=null",  # one sample per rank and step, unpacked
        devices=2, run_dir=run, stage="instruct", timeout=300)  # a hang, not an error, without the fix
    assert sorted(losses(run)) == list(range(STEPS))


@pytest.mark.slow
def test_ddp_trains_planned_packed_rows_across_passes(medsynth_dir, tmp_path):
    """Two ranks split each planned global batch's rows; every rank gets as many batches (else DDP hangs),
    also where a pass ends and the next, differently long one begins."""
    run = tmp_path / "run"
    cli(tmp_path, medsynth_dir, "strategy=ddp", "data.tasks=[caption]", "data.pack_length=1024",
        "data.max_length=1024", "data.pack_lookahead=64", "data.pack_rows=1", "trainer.max_epochs=-1",
        "trainer.max_steps=12", devices=2, run_dir=run, stage="longctx", timeout=300)
    assert sorted(losses(run)) == list(range(12))
