"""Checkpoints that never lose more than a bounded amount of work.

:class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` (numbered ``stepNNNNNN.ckpt`` snapshots every
``every_n_train_steps``, at epoch ends, ``save_top_k``) plus, from the same callback so that no two callbacks
ever write ``last.ckpt``:

* ``last.ckpt`` refreshed every ``last_every_n_train_steps`` optimizer steps and whenever
  ``last_every_n_minutes`` have passed since this callback last saved -- on any data module, an endless
  stream included (no epoch ever ends there). A ``kill -9`` loses at most that much work;
* a numbered snapshot and ``last.ckpt`` at the step that reaches ``trainer.max_steps``, taken at the batch
  end (mid-epoch state), so resuming it with a larger ``trainer.max_steps`` trains the extra steps. (Saved at
  the epoch end that ``max_steps`` forces instead, the checkpoint would mark the epoch as finished, and with
  ``max_epochs=1`` the resumed run would stop after 0 steps.)

Writes are atomic (Lightning writes the whole file, then renames), so a kill during a save leaves the
previous ``last.ckpt`` intact.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, *, last_every_n_train_steps: int | None = None, last_every_n_minutes: float | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(**kwargs)
        if (last_every_n_train_steps or last_every_n_minutes) and not self.save_last:
            raise ValueError("last_every_n_train_steps / last_every_n_minutes refresh last.ckpt: they need "
                             "save_last=true")
        if last_every_n_train_steps is not None and last_every_n_train_steps < 0:
            raise ValueError(f"last_every_n_train_steps must be >= 0 or null, got {last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps or 0
        self.last_every_n_minutes = last_every_n_minutes or 0.0
        self._last_save_time = time.monotonic()
        self._previous_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()
        self._previous_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # every_n_train_steps snapshots
        step = trainer.global_step
        stepped, self._previous_step = step != self._previous_step, step
        if not stepped:  # a micro-batch of gradient accumulation: the optimizer has not stepped
            return
        due_time = False
        if self.last_every_n_minutes > 0:  # clocks differ between ranks: rank 0 decides for all of them
            elapsed = time.monotonic() - self._last_save_time
            due_time = trainer.strategy.broadcast(elapsed >= 60 * self.last_every_n_minutes)
        if self._should_skip_saving_checkpoint(trainer):  # e.g. saved at this step already
            return
        final = 0 < trainer.max_steps <= step
        due_steps = self.last_every_n_train_steps > 0 and step % self.last_every_n_train_steps == 0
        if not (final or due_steps or due_time):
            return
        candidates = self._monitor_candidates(trainer)
        if final:  # the run's end, as an epoch end would keep it, but restartable mid-epoch
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import warnings

        with warnings.catch_warnings():
            # A resume writes into its own, new run folder (Hydra's), always: Lightning's "The dirpath has changed"
            # warning would say so on every resume.
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
            super().load_state_dict(state_dict)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._last_save_time = time.monotonic()
