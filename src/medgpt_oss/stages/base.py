"""The LightningModule every curriculum stage shares.

A stage is a policy over one :class:`MedVLM`: which components train, at which
learning rates, on which data. The model is built from the config dict held in
``hparams``, so ``Stage.load_from_checkpoint(path)`` rebuilds it with no other
arguments. Checkpoints keep only trainable parameters (a 20B run's checkpoint
stays small); the frozen rest comes back from the same base weights -- the
pretrained folder, or at tiny scale the same seeded random init.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from transformers import get_cosine_schedule_with_warmup

from medgpt_oss.models.vlm import COMPONENTS, MedVLM


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class VLMStage(L.LightningModule):
    """Subclasses call ``self.save_hyperparameters()`` with their own ``__init__`` arguments."""

    def __init__(
        self,
        model: dict[str, Any],
        train: dict[str, bool],
        optim: dict[str, Any],
    ) -> None:
        super().__init__()
        model, train, optim = _plain(model), _plain(train), _plain(optim)
        self.optim_cfg = optim
        self.vlm = MedVLM.from_config(model)
        self.vlm.set_trainable(**{name: bool(train.get(name, False)) for name in COMPONENTS})
        # Frozen weights are left out of checkpoints (see module docstring), so loading is non-strict;
        # on_load_checkpoint checks that exactly the trainable weights are present.
        self.strict_loading = False

    # -- steps ----------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.vlm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
        )
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)

    # -- what trains, and with what --------------------------------------------------------------

    def on_fit_start(self) -> None:
        lines = ["component   trainable / total parameters"]
        counts_to_log = {}
        for name, counts in self.vlm.parameter_summary().items():
            state = "TRAINS" if counts["trainable"] else "frozen"
            lines.append(f"{name:<11} {counts['trainable']:>12,} / {counts['total']:>14,}  {state}")
            counts_to_log[f"params/{name}_trainable"] = counts["trainable"]
            counts_to_log[f"params/{name}_total"] = counts["total"]
        rank_zero_info("\n".join(lines))
        for logger in self.loggers:
            logger.log_hyperparams(counts_to_log)

    def configure_optimizers(self):
        """AdamW over trainable parameters only, one group (and learning rate) per component."""
        optim = self.optim_cfg
        groups = []
        for name in COMPONENTS:
            params = [p for p in getattr(self.vlm, name).parameters() if p.requires_grad]
            if params:
                lr = optim.get(f"{name}_lr") or optim["lr"]
                groups.append({"params": params, "lr": lr, "name": name})
        if not groups:
            raise ValueError("nothing to train: every component is frozen; check the stage's `train` switches")
        optimizer = torch.optim.AdamW(
            groups, weight_decay=optim.get("weight_decay", 0.0), betas=tuple(optim.get("betas", (0.9, 0.999)))
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(optim.get("warmup_ratio", 0.0) * total)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints keep only what trains -------------------------------------------------------

    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.trainable_state_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")


def load_stage(ckpt_path: str, map_location: str | None = "cpu") -> VLMStage:
    """Reload any stage's checkpoint without knowing its class: the checkpoint names it."""
    import importlib

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module_name, _, class_name = checkpoint["stage_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location)
