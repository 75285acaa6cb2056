"""Train one curriculum stage.

    python -m medgpt_oss.train +stage=align encoder=medsiglip            # real weights
    python -m medgpt_oss.train +stage=align encoder=medsiglip scale=tiny # tiny, CPU, offline
    python -m medgpt_oss.train -m +stage=align scale=tiny encoder=clip,siglip,biomedclip,medsiglip
    python -m medgpt_oss.train +stage=align scale=tiny ckpt_path=<run>/checkpoints/last.ckpt  # resume
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from medgpt_oss.config import CONF_DIR, MissingExtraError, available_stages, model_config
from medgpt_oss.contract import NoContractRule, check_agreement, input_spec_from_config
from medgpt_oss.models.hub import MissingWeightsError, resolve_pretrained
from medgpt_oss.provenance import RESUME
from medgpt_oss.provenance import check as check_provenance
from medgpt_oss.trust import load_checkpoint

log = logging.getLogger("medgpt_oss.train")


def check_pretrained(cfg: DictConfig) -> None:
    """Fail in seconds, before any model or data work, if full-scale weights are missing."""
    if cfg.scale != "full":
        return
    problems = []
    for part in ("encoder", "llm"):
        try:
            resolve_pretrained(cfg[part].pretrained, f"{part}.pretrained")
        except MissingWeightsError as exc:
            problems.append(f"[{part}] {exc}")
    if problems:
        raise MissingWeightsError("\n\n".join(problems))


class BrokenCheckpointError(ValueError):
    """A checkpoint file that cannot be a complete checkpoint (empty, truncated, not a torch zip archive)."""


def check_checkpoint_file(path: Any, option: str) -> None:
    """Fail with the file's name and ``option`` (``ckpt_path``, ``init_from``) if ``path`` is a local file that
    is not a complete torch checkpoint: zero bytes, cut short (a copy or download that stopped, a disk that
    filled), or no zip archive at all. Reads only the archive's directory at its end, not the weights.
    """
    file = Path(str(path))
    if not file.is_file():
        return  # missing files and URLs: the loader's own error names them
    size = file.stat().st_size
    if size == 0:
        raise BrokenCheckpointError(f"{option}: checkpoint '{file}' is empty (0 bytes) -- a save or copy that never "
                                    f"completed; use another checkpoint, e.g. an earlier step*.ckpt next to it")
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            end = max((info.header_offset + info.compress_size for info in archive.infolist()), default=0)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BrokenCheckpointError(
            f"{option}: checkpoint '{file}' ({size:,} bytes) is truncated or corrupt, not a complete torch checkpoint "
            f"({type(exc).__name__}: {exc}); use another checkpoint, e.g. an earlier step*.ckpt next to it") from None
    if not any(name.endswith("data.pkl") for name in names) or end > size:
        raise BrokenCheckpointError(
            f"{option}: checkpoint '{file}' ({size:,} bytes) is not a complete torch checkpoint (no data.pkl, or its "
            f"entries run past the end of the file); use another checkpoint, e.g. an earlier step*.ckpt next to it")


def choose_strategy(cfg: DictConfig) -> Any:
    """The ``strategy/`` group's choice, instantiated from its file before any model work (a strategy whose
    optional package is missing stops the run here, in seconds): a Lightning strategy, Lightning's own name
    for one (``auto``), or -- FSDP -- a factory that takes the model's blocks (:func:`with_model_blocks`).

    Precision is not set here: it is the trainer's (`trainer.precision`), and Lightning hands it to
    the strategy (FSDP MixedPrecision, DeepSpeed bf16), so `trainer=gpu strategy=fsdp` trains bf16-mixed.
    """
    if "_target_" not in cfg.strategy:
        return cfg.strategy.name
    try:
        return hydra.utils.instantiate(cfg.strategy, _convert_="all")
    except InstantiationException as exc:  # Hydra wraps what the factory raised: a missing extra is said as it is
        if isinstance(exc.__cause__, MissingExtraError):
            raise exc.__cause__ from None
        raise


def with_model_blocks(strategy: Any, vlm: Any) -> Any:
    """A strategy factory still waiting for the model (strategy=fsdp: its FSDP and recompute units are the
    model's own blocks) called with them; any other strategy as it is."""
    if isinstance(strategy, functools.partial):
        return strategy(model_blocks=vlm.fsdp_wrap_modules())
    return strategy


def _one_run_folder_for_all_ranks() -> None:
    """Make the processes Lightning starts for DDP/FSDP ranks write into this job's run folder.

    Lightning re-runs the command for ranks > 0 with ``hydra.run.dir=<HydraConfig.run.dir>``
    appended. In a single run that is already this folder (Hydra caches ``${now:}``), but in a
    multirun the job's folder is the sweep subdir, and ``sys.argv`` holds ``-m`` and the whole
    sweep, so each child would start its own sweep in new folders. Point ``run.dir`` at the
    job's real output folder and give the children this job's own overrides, as a single run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if hydra_cfg.mode == RunMode.MULTIRUN:
        keep, args = [], iter(sys.argv[1:])
        for arg in args:  # Hydra's own flags (config path/name/dir) stay; -m and the sweep go
            if arg.split("=", 1)[0] in _HYDRA_VALUE_FLAGS:
                keep += [arg] if "=" in arg else [arg, next(args, "")]
        sys.argv[1:] = keep + list(hydra_cfg.overrides.task)


_HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
# What Lightning's launcher sets in the launching process's own environment.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def _job_leaves_no_distributed_state() -> Iterator[None]:
    """Let the next job of a multirun start its own ranks (Hydra runs the jobs in one process).

    After a DDP/FSDP job the process group is still up (Lightning destroys it only at exit) and
    the launcher left ``LOCAL_RANK`` & co. in ``os.environ``, so the next job would take itself for
    an externally launched rank and wait for peers that have exited. Undo both, and ``sys.argv``.
    """
    argv, env = list(sys.argv), {key: os.environ.get(key) for key in _LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv[:] = argv


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def train(cfg: DictConfig) -> tuple[Any, Any]:
    """Build stage, data and trainer from a composed config and fit. Returns (trainer, stage)."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    check_pretrained(cfg)
    strategy = choose_strategy(cfg)
    # An empty or cut-short checkpoint file is named here, in seconds, not deep inside torch.load.
    check_checkpoint_file(cfg.get("ckpt_path"), "ckpt_path")
    check_checkpoint_file(cfg.stage.get("init_from") or cfg.get("init_from"), "init_from")
    # QLoRA (lora.quantize): CUDA + bitsandbytes and the LoRA/quantization combination, before any model work.
    from medgpt_oss.models.quantize import QuantizationUnavailableError, check_quantization
    try:
        check_quantization(cfg)
    except QuantizationUnavailableError as exc:
        raise MissingExtraError(str(exc)) from exc
    # The data side needs only the model's input contract, computed from the config without building the model
    # (contract.py): a data config that cannot work fails here, before the (20B) model is loaded.
    try:
        input_spec = input_spec_from_config(cfg)
    except NoContractRule as exc:  # an encoder/projector class of the user's own that states no contract
        input_spec = None
        log.info("%s; the data module is built from the model's own input_spec(), after the model", exc)
    datamodule = hydra.utils.instantiate(cfg.data, input_spec=input_spec) if input_spec is not None else None
    # Plain dicts (not DictConfig) so checkpoints hold only primitive hparams and load with weights_only.
    stage = hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")
    if input_spec is None:
        datamodule = hydra.utils.instantiate(cfg.data, input_spec=stage.vlm.input_spec())
    else:
        check_agreement(input_spec, stage.vlm.input_spec())  # the model tokenizes and splices as the data was told
    # weights_only: a resumed checkpoint is data -- a pickle payload is refused, for local and http(s) paths
    # (a local file is read here first, so the refusal names it). A resume must rebuild the model the checkpoint
    # saved: checked before any data is read or trainer work (provenance.py; a URL is checked as Lightning loads it).
    ckpt_path = cfg.get("ckpt_path")
    start_step = None
    if ckpt_path and Path(str(ckpt_path)).is_file():
        checkpoint = load_checkpoint(ckpt_path)
        check_provenance(checkpoint, stage, RESUME, ckpt_path)
        start_step = checkpoint.get("global_step")
        del checkpoint
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=_instantiate_all(cfg.get("logger")) or False,
        callbacks=_with_step_progress_bar(cfg, _instantiate_all(cfg.get("callbacks"))),
        strategy=with_model_blocks(strategy, stage.vlm),
    )
    if trainer.is_global_zero:
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(trainer.default_root_dir) / "config.yaml", resolve=True)
    with warnings.catch_warnings():
        # Lightning warns "your dataloader is not resumable" on every mid-epoch resume because it looks for
        # state_dict() on the DataLoader itself. Our data modules keep the exact position in their own state_dict
        # (samples or batches consumed, restored before the loader is built; tests/test_train.py and
        # test_streaming.py check a resume sees exactly the uninterrupted run's batches), so the warning is wrong here.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(stage, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if start_step is not None and trainer.global_step == start_step:
        _say_why_nothing_trained(trainer, ckpt_path, start_step)
    return trainer, stage


def _with_step_progress_bar(cfg: DictConfig, callbacks: list[Any]) -> list[Any]:
    """Lightning's bar counts the batches of an epoch (``Epoch 0/-2`` when epochs are unlimited): ours counts
    optimizer steps toward the run's total (medgpt_oss/progress.py), unless a progress bar is configured."""
    from lightning.pytorch.callbacks import ProgressBar

    from medgpt_oss.progress import step_progress_bar

    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks = [*callbacks, step_progress_bar()]
    return callbacks


def _say_why_nothing_trained(trainer: Any, ckpt_path: str, step: int) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    if 0 < trainer.max_steps <= step:
        why = f"trainer.max_steps={trainer.max_steps}"
        fix = f"raise trainer.max_steps above {step}"
    else:
        why = f"trainer.max_epochs={trainer.max_epochs}"
        fix = f"raise trainer.max_epochs above {trainer.max_epochs} (or set -1 and use trainer.max_steps)"
    rank_zero_warn(f"nothing was trained: checkpoint '{ckpt_path}' is at step {step}, where {why} ends this run. "
                   f"To train on from it, {fix}.")


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("stage") is None:
        print(
            "No stage chosen. Add one of: "
            + ", ".join(f"+stage={s}" for s in available_stages())
            + "\n  e.g. python -m medgpt_oss.train +stage=align scale=tiny",
            file=sys.stderr,
        )
        sys.exit(2)
    # Python warnings (Lightning's and ours) go to the console and, through the root logger, to the run's train.log
    # (conf/hydra/default.yaml routes the `py.warnings` logger).
    logging.captureWarnings(True)
    with _job_leaves_no_distributed_state():
        _one_run_folder_for_all_ranks()
        try:
            trainer, _ = train(cfg)
        except (MissingWeightsError, MissingExtraError, BrokenCheckpointError) as exc:
            if logging.getLogger().handlers:  # Hydra's job log (train.log); the console gets the line below
                log.error(f"error: {exc}")
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except Exception:
            if logging.getLogger().handlers:
                log.exception("training failed")  # the traceback Hydra prints to the console, in train.log too
            raise
    val_loss = trainer.callback_metrics.get("val/loss")
    return float(val_loss) if val_loss is not None else None  # the objective Hydra sweepers minimise


if __name__ == "__main__":
    main()
