"""Training curves as a picture: ``curves.png`` in the run folder when fit ends.

Whatever logger a run uses (or none), this callback keeps the step-level ``train/loss``, every
``val/loss`` and each parameter group's learning rate, and draws them with matplotlib: loss per
optimizer step (validation as points) above the learning rate of each parameter group. Rank 0
draws; a run that stops early (``kill -9`` aside) still gets its picture from ``on_exception``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class TrainingCurves(Callback):
    def __init__(self, path: str, title: str | None = None) -> None:
        self.path, self.title = Path(path), title
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.lr: dict[str, list[tuple[int, float]]] = {}
        self._micro = 0  # micro-batches averaged into the last train point
        self._step = 0

    def state_dict(self) -> dict[str, Any]:  # a resumed run's picture shows the whole run
        return {"train": self.train, "val": self.val, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train, self.val = [tuple(p) for p in state["train"]], [tuple(p) for p in state["val"]]
        self.lr = {k: [tuple(p) for p in v] for k, v in state["lr"].items()}

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step = trainer.global_step + 1  # the optimizer step this (micro-)batch counts towards

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # callback_metrics holds every step's value (logged_metrics only every log_every_n_steps, and only with
        # a logger); micro-batches of one optimizer step (accumulation) are averaged into its point.
        step, loss = self._step, trainer.callback_metrics.get("train/loss")
        if loss is not None:
            if self.train and self.train[-1][0] == step:
                self._micro += 1
                previous = self.train[-1][1]
                self.train[-1] = (step, previous + (float(loss) - previous) / self._micro)
            else:
                self._micro = 1
                self.train.append((step, float(loss)))
        for optimizer in trainer.optimizers:  # read from the optimizer: loggers need not see learning rates
            for i, group in enumerate(optimizer.param_groups):
                points = self.lr.setdefault(f"{type(optimizer).__name__}/{group.get('name', i)}", [])
                if not points or points[-1][0] != step:
                    points.append((step, float(group["lr"])))

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and self.train:
            self.draw()

    def draw(self) -> Path | None:
        if not self.train and not self.val:
            return None
        from medgpt_oss.figures import pyplot

        plt = pyplot()
        fig, (loss_ax, lr_ax) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=[3, 1])
        finite = [(s, v) for s, v in self.train if math.isfinite(v)]
        if finite:
            loss_ax.plot(*zip(*finite), linewidth=0.8, label="train/loss")
        if self.val:
            loss_ax.plot(*zip(*self.val), "o-", markersize=4, label="val/loss")
        loss_ax.set_ylabel("loss")
        loss_ax.legend()
        loss_ax.grid(alpha=0.3)
        for group, points in sorted(self.lr.items()):
            lr_ax.plot(*zip(*points), linewidth=0.8, label=group)
        if any(v > 0 for points in self.lr.values() for _, v in points):
            lr_ax.set_yscale("log")  # groups' rates differ by orders of magnitude; zeros (schedule ends) are left out
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_xlabel("optimizer step")
        if self.lr:
            lr_ax.legend(fontsize=7)
        lr_ax.grid(alpha=0.3)
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=110)
        plt.close(fig)
        return self.path
