"""The optimizer and learning-rate schedule of a stage (its ``optim`` config).

AdamW over trainable parameters only, one group (and learning rate) per MedVLM component, and a cosine
schedule with warmup over the fit's total optimizer steps.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import get_cosine_schedule_with_warmup

from medgpt_oss.models.vlm import COMPONENTS

# Each component's own learning rate in the optim config; unset or null means optim.lr.
LR_KEYS = {"encoder": "encoder_lr", "projector": "projector_lr", "llm": "llm_lr"}


def param_groups(vlm: Any, optim: dict[str, Any]) -> list[dict[str, Any]]:
    """One group per component that has trainable parameters, named after it, at its learning rate."""
    groups = []
    for name in COMPONENTS:
        params = [p for p in getattr(vlm, name).parameters() if p.requires_grad]
        if params:
            lr = optim.get(LR_KEYS[name]) or optim["lr"]
            groups.append({"params": params, "lr": lr, "name": name})
    if not groups:
        raise ValueError("nothing to train: every component is frozen; check the stage's `train` switches")
    return groups


def adamw(vlm: Any, optim: dict[str, Any]) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(vlm, optim), weight_decay=optim.get("weight_decay", 0.0),
        betas=tuple(optim.get("betas", (0.9, 0.999))),
    )


def cosine_schedule(optimizer: torch.optim.Optimizer, optim: dict[str, Any],
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``optim.warmup_ratio`` of ``total`` steps, then cosine decay to 0 at ``total``."""
    if total <= 0:
        raise ValueError(f"the learning-rate schedule needs a run of known length, got {total} steps: set "
                         "trainer.max_steps (or a positive trainer.max_epochs)")
    warmup = int(optim.get("warmup_ratio", 0.0) * total)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


def continue_schedule_after_resume(scheduler_configs: list[Any], total: int, saved_total: int | None) -> None:
    """Give the first resumed step the rate this run's schedule has at the restored step.

    The optimizer state a checkpoint restores carries the rate its own schedule set last: for a finished
    run extended with a larger ``trainer.max_steps`` that is the schedule's end, 0, and the first resumed
    step would train at lr 0 before the schedule (now over the new ``total``) rose again. With an unchanged
    total (``saved_total``: the checkpoint's) the two rates are equal and nothing changes.
    """
    for config in scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            continue
        step = scheduler.last_epoch
        rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        before = [group["lr"] for group in scheduler.optimizer.param_groups]
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates
        if saved_total is not None and saved_total != total:
            rank_zero_info(f"resumed at step {step} with a schedule over {total} steps (the "
                           f"checkpoint's ran over {saved_total}): the learning rate continues at {rates[0]:.3g} "
                           f"(the checkpoint's next rate was {before[0]:.3g}) and decays to 0 at step "
                           f"{total}")
