"""What a user sees while training: a progress bar counting optimizer steps, and metric lines in train.log.

Lightning's bars count the batches of the current epoch (``Epoch 0/-2`` with ``max_epochs=-1``, and no sensible
total for an endless stream). A run here is as long as its optimizer steps, so the train bar counts
``trainer.global_step`` toward :func:`total_optimizer_steps` -- the same total the learning-rate schedule
spans -- with its ETA from the steps/s of this process (a resumed run starts at the restored step). The
validation bars stay Lightning's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE, RichProgressBar

METRICS_LOGGER = "medgpt_oss.metrics"


def total_optimizer_steps(trainer: L.Trainer) -> int:
    """The optimizer steps this fit ends at: ``trainer.max_steps`` for an endless stream (which refuses -1),
    else Lightning's estimate from ``max_steps``, ``max_epochs``, the loader and gradient accumulation.

    For an endless stream Lightning is not asked: it would set up (and start) the train loader to estimate,
    and strategies that restore checkpoints after ``configure_optimizers`` (FSDP) would then stream from the
    start, not the saved position.
    """
    if getattr(trainer.datamodule, "endless", False):
        return int(trainer.max_steps)
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) else -1


def _description(trainer: L.Trainer, total: int) -> str:
    return f"step {trainer.global_step}/{total if total > 0 else '?'}"


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, counting optimizer steps: ``step 12/500 ━━━━━ 0:01:10 • 0:45:03 2.1it/s train/loss: ...``.

    One bar for the whole fit (not one per epoch), so its rate and ETA run across epoch boundaries.
    """

    def __init__(self, refresh_rate: int = 1, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.total_steps = -1

    def configure_columns(self, trainer: L.Trainer) -> list:
        from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn

        # The description already reads "step N/total"; the batches column would repeat it.
        return [c for c in super().configure_columns(trainer) if not isinstance(c, BatchesProcessedColumn)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.total_steps = total_optimizer_steps(trainer)
        self.on_train_epoch_start(trainer, pl_module)  # now: a mid-epoch resume starts no epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is not None:
            return  # one bar for the whole fit: never reset at an epoch boundary
        total = self.total_steps if self.total_steps > 0 else None
        self.train_progress_bar_id = self.progress.add_task(_description(trainer, self.total_steps), total=total,
                                                            completed=trainer.global_step)
        self.refresh()

    def _initialize_train_progress_bar_id(self) -> None:  # Lightning's path for a mid-epoch restart
        self.on_train_epoch_start(self.trainer, self.trainer.lightning_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step,
                                 description=_description(trainer, self.total_steps))
        self._update_metrics(trainer, pl_module)
        self.refresh()


class StepTQDMProgressBar(TQDMProgressBar):
    """The same for tqdm (used when ``rich`` is not installed): ``step 12/500: 2%|▏ | 12/500 [01:10<45:03, ...]``."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.total_steps = total_optimizer_steps(trainer)
        bar = self.train_progress_bar
        bar.reset(total=self.total_steps if self.total_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step
        bar.set_description(_description(trainer, self.total_steps))

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole fit

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable or bar.n == trainer.global_step:
            return
        bar.n = trainer.global_step
        bar.set_description(_description(trainer, self.total_steps), refresh=False)
        bar.set_postfix(self.get_metrics(trainer, pl_module))


def step_progress_bar() -> RichProgressBar | TQDMProgressBar:
    """Rich when installed, else tqdm -- Lightning's own choice, counting steps."""
    return StepProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()


class MetricsLog(Callback):
    """One line per logging step (``trainer.log_every_n_steps``), at the last step and after each validation,
    written to the ``medgpt_oss.metrics`` logger: what the progress bar shows, kept in the run's ``train.log``.

    ``step 20/500  lr/projector=0.000981  train/loss=2.3141``
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger(METRICS_LOGGER)  # not `log`: Lightning sets that on callbacks
        self._last_logged = -1
        self._total = -1
        self._rates: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total = total_optimizer_steps(trainer)

    def _line(self, trainer: L.Trainer, metrics: dict[str, Any], prefix: str = "") -> str:
        values = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items()))
        return f"{prefix}{_description(trainer, self._total)}  {values}".rstrip()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The rates this step trains with: by its batch end the scheduler has already set the next step's.
        self._rates = {f"lr/{group.get('name', i)}": group["lr"]
                       for optimizer in trainer.optimizers for i, group in enumerate(optimizer.param_groups)}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        every = trainer.log_every_n_steps or 0
        due = (every > 0 and step % every == 0) or 0 < trainer.max_steps <= step
        if step == self._last_logged or not due or not trainer.is_global_zero:
            return
        self._last_logged = step
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items() if not k.startswith("val/")}
        metrics.update(self._rates)
        self._logger.info(self._line(trainer, metrics))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            self._logger.info(self._line(trainer, metrics, prefix="validation at "))


def _fmt(value: Any) -> str:
    value = float(value.item() if hasattr(value, "item") else value)
    return f"{value:.6g}"
