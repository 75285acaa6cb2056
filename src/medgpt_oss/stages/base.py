"""The LightningModule every curriculum stage shares: Lightning's hooks, each handing its work to the module
that owns it.

A stage is a policy over one :class:`MedVLM`: which components train, at which
learning rates, on which data. The model is built from the config dict held in
``hparams``, so ``Stage.load_from_checkpoint(path)`` rebuilds it with no other
arguments. Checkpoints keep only the weights this stage trains or received from
the previous stage (a 20B run's checkpoint stays small); the rest comes back from
the same base weights -- the pretrained folder, or at tiny scale the same seeded
random init.

Hand-off from the previous stage: :mod:`~medgpt_oss.stages.handoff`; the loss as a token mean over ranks and
micro-batches: :mod:`~medgpt_oss.stages.collectives`; optimizer and schedule: :mod:`~medgpt_oss.stages.optim`;
what a checkpoint holds: :mod:`~medgpt_oss.stages.checkpoint_state`; the parameter report:
:mod:`~medgpt_oss.stages.param_report`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from medgpt_oss import provenance
from medgpt_oss.models.vlm import COMPONENTS, MedVLM
from medgpt_oss.progress import total_optimizer_steps
from medgpt_oss.stages import collectives
from medgpt_oss.stages.checkpoint_state import (
    ADDED_ROWS_KEY, RNG_KEY, SCHEDULE_TOTAL_KEY, check_trainable_weights, restore_rng_states, rng_states,
    saved_weights,
)
from medgpt_oss.stages.handoff import HANDOFF_LORA, read_previous_stage
from medgpt_oss.stages.optim import adamw, continue_schedule_after_resume, cosine_schedule
from medgpt_oss.stages.param_report import parameter_counts, parameter_table
from medgpt_oss.trust import check_checkpoint, check_class_path, load_checkpoint


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class VLMStage(L.LightningModule):
    """Subclasses call ``self.save_hyperparameters()`` with their own ``__init__`` arguments."""

    def __init__(
        self,
        model: dict[str, Any],
        train: dict[str, bool],
        optim: dict[str, Any],
        init_from: str | None = None,
        handoff_lora: str = "merge",
    ) -> None:
        super().__init__()
        model, train, optim = _plain(model), _plain(train), _plain(optim)
        if handoff_lora not in HANDOFF_LORA:
            raise ValueError(f"stage.handoff_lora must be one of {HANDOFF_LORA}, got {handoff_lora!r}")
        self.optim_cfg = optim
        self.init_from = init_from
        self.handoff_lora = handoff_lora
        self.vlm = MedVLM.from_config(model)
        self.vlm.set_trainable(**{name: bool(train.get(name, False)) for name in COMPONENTS})
        # What the model is built from, beyond its config (tokenizer contents, base-weight fingerprints): saved in
        # every checkpoint and compared on resume and hand-off (medgpt_oss/provenance.py).
        self.provenance = provenance.record(self.vlm)
        # Weights that differ from the base weights: what trains here plus what the previous stage
        # handed over. Only these go into checkpoints, so loading is non-strict and checked by hand.
        self.saved_keys = self.trainable_state_keys()
        self.strict_loading = False

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, map_location: Any = None,
                             hparams_file: str | Path | None = None, strict: bool | None = None,
                             weights_only: bool | None = True, trusted_targets: Iterable[str] = (), **kwargs: Any):
        """Lightning's loader, made safe for checkpoints from elsewhere: weights-only unpickling (no code in
        pickles), and the stored config's ``_target_`` s must be this project's classes (or in
        ``trusted_targets``), checked before the model is built. ``kwargs`` override hyper-parameters."""
        if weights_only is not True:
            raise ValueError("medgpt-oss loads checkpoints with weights_only=True only: a pickle can run any code")
        if hparams_file is not None:
            raise ValueError("hparams_file is not supported: the checkpoint holds its own hyper-parameters")
        checkpoint = load_checkpoint(checkpoint_path)
        # kwargs replace stored hyper-parameters (the caller's own values): only what comes from the file is checked.
        check_checkpoint({key: ({k: v for k, v in value.items() if k not in kwargs} if isinstance(value, dict)
                                else value) for key, value in checkpoint.items()}, trusted_targets)
        with warnings.catch_warnings():
            # Lightning lists every key the checkpoint lacks: here every frozen base weight, by design (checkpoints
            # keep only what differs from the base weights). on_load_checkpoint refuses a checkpoint that lacks a
            # trainable weight, so the list says nothing; keys the model lacks still warn.
            warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in the "
                                                      "checkpoint")
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location, strict=strict,
                                                weights_only=True, **kwargs)

    # -- stage hand-off ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Applied on every fit; when resuming, the checkpoint restore that follows overwrites it with
        # identical values (the handed-over weights are saved in every checkpoint of this stage).
        if stage == "fit" and self.init_from:
            self.load_previous_stage(self.init_from)

    def load_previous_stage(self, ckpt_path: str) -> None:
        """Start from the weights another stage trained (its checkpoint holds only those).

        The previous stage may have used no LoRA or another one (stages/handoff.py): full weights land in this
        model's base weights (under its adapters, if any); the previous adapters are merged into them
        (``stage.handoff_lora=merge``) or continue as this stage's own (``keep``). Everything loaded here differs
        from the base weights, so it goes into this stage's checkpoints too.
        """
        state, added_rows = read_previous_stage(ckpt_path, self)
        self.vlm.llm.load_added_rows(added_rows)
        self.load_state_dict(state, strict=False)
        self.saved_keys |= set(state)
        rank_zero_info(f"initialised {len(state)} tensors from previous stage {ckpt_path} "
                       f"(its LoRA adapters: {self.handoff_lora})")

    # -- steps ----------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.vlm(
            input_ids=batch["input_ids"],
            # Packed rows carry position ids that restart per sample and no 2D mask: transformers
            # then builds a block-diagonal causal mask, so samples never attend to each other.
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            use_cache=False,
        )
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if "skipped_total" in batch:  # the data module's running totals, summed over ranks already
            self.log("data/skipped", float(batch["skipped_total"]), reduce_fx="max")
            self.log("data/skipped_batches", float(batch["empty_batches_total"]), reduce_fx="max")
        supervised = collectives.supervised_tokens(batch["labels"])
        world = self.trainer.world_size
        total = collectives.tokens_on_all_ranks(self.trainer.strategy, world, supervised, self.device)
        self._step_tokens = getattr(self, "_step_tokens", 0) + total
        if supervised == 0:
            # Last guard (the processor already rejects such samples): nothing to learn from this batch.
            if world == 1:
                return None
            zero = collectives.empty_rank_loss(self.vlm, self.device)  # the other ranks' collectives still run
            self.log("train/loss", zero.detach(), prog_bar=True, batch_size=1, sync_dist=True)
            return zero
        loss = self._loss(batch)  # this rank's token mean
        # Logged: the micro-batch's token mean over all ranks (sync_dist averages the rank-weighted losses).
        self.log("train/loss", collectives.rank_weighted(loss, supervised, world, total).detach(), prog_bar=True,
                 batch_size=len(batch["ids"]), sync_dist=True)
        if not collectives.rescales_gradients(self.trainer.strategy):
            # DeepSpeed keeps the gradients itself: weight by this micro-batch only.
            return collectives.rank_weighted(loss, supervised, world, total)
        # Trained: the token *sum*; on_before_optimizer_step divides the step's gradient by the supervised tokens of
        # all its micro-batches on all ranks, so the step is the token mean over everything it saw.
        return loss * supervised

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The step's gradient as the token mean over all its micro-batches on all ranks
        (:func:`~medgpt_oss.stages.collectives.to_token_mean`). Runs before gradient clipping, so clipping sees the
        true gradient."""
        tokens, self._step_tokens = getattr(self, "_step_tokens", 0), 0
        if tokens == 0 or not collectives.rescales_gradients(self.trainer.strategy):
            return
        collectives.to_token_mean(optimizer, tokens, self.trainer.world_size, self.trainer.accumulate_grad_batches)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["ids"]:  # every sample of this batch was bad and skipped: nothing to score
            return
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)

    # -- what trains, and with what --------------------------------------------------------------

    def on_fit_start(self) -> None:
        summary = self.vlm.parameter_summary()
        rank_zero_info(parameter_table(summary))
        for logger in self.loggers:
            logger.log_hyperparams(parameter_counts(summary))

    def configure_optimizers(self):
        """AdamW over trainable parameters only, one group (and learning rate) per component."""
        optimizer = adamw(self.vlm, self.optim_cfg)
        # The schedule spans this fit's total steps (the progress bar's too). configure_optimizers runs on every
        # fit, a resume included, and a checkpoint restores only the scheduler's step count: resuming with another
        # trainer.max_steps runs the schedule defined over the new total (on_train_start puts its rate in place).
        self._schedule_total = total_optimizer_steps(self.trainer)
        scheduler = cosine_schedule(optimizer, self.optim_cfg, self._schedule_total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints keep only what differs from the base weights (trained or handed over) ---------

    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[provenance.PROVENANCE_KEY] = self.provenance
        checkpoint["state_dict"] = saved_weights(checkpoint["state_dict"], self.saved_keys)
        # Embedding rows the LLM had to add for the image token (a tokenizer without spare rows): seeded, and
        # saved anyway, so a reload never depends on how they were initialised.
        checkpoint[ADDED_ROWS_KEY] = self.vlm.llm.added_rows_state()
        # The steps the learning-rate schedule spans, to tell a resume with another total (plain int: weights_only).
        checkpoint[SCHEDULE_TOTAL_KEY] = int(getattr(self, "_schedule_total", 0))
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # resuming (train.py checks local files before any work; this covers URLs)
            provenance.check(checkpoint, self, provenance.RESUME, self._trainer.ckpt_path)
        check_trainable_weights(checkpoint["state_dict"], self.trainable_state_keys())
        self.vlm.llm.load_added_rows(checkpoint.get(ADDED_ROWS_KEY, {}))  # before the state dict, which may train them
        self.saved_keys |= set(checkpoint["state_dict"])
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        self._restored_schedule_total = checkpoint.get(SCHEDULE_TOTAL_KEY) or None

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # optimizer and scheduler states are restored by now
            continue_schedule_after_resume(self.trainer.lr_scheduler_configs, self._schedule_total,
                                           getattr(self, "_restored_schedule_total", None))
            self._restored_schedule_total = None
        # Restored here, after Lightning's own seeding and loader setup, just before the first step.
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            restore_rng_states(rng)
            self._rng_to_restore = None


def load_stage(ckpt_path: str, map_location: str | None = "cpu", trusted_targets: Iterable[str] = ()) -> VLMStage:
    """Reload any stage's checkpoint without knowing its class: the checkpoint names it.

    The checkpoint is data: its stage class and every ``_target_`` in its hyper-parameters must be
    classes of this project (or listed in ``trusted_targets``), checked before anything is imported
    or built (:mod:`medgpt_oss.trust`).
    """
    checkpoint = load_checkpoint(ckpt_path)
    if "stage_class" not in checkpoint:
        raise KeyError(f"'{ckpt_path}' names no stage_class: not a medgpt-oss stage checkpoint")
    cls = check_class_path(checkpoint["stage_class"], "checkpoint stage_class", trusted_targets, VLMStage)
    # load_from_checkpoint checks the stored hyper-parameters before it builds anything.
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location, trusted_targets=trusted_targets)


class TunedStage(VLMStage):
    """A stage whose components train by switch (stages 2 and 3; the report trains everything).

    With ``lora=`` set, ``train_llm`` trains the LLM's adapters; without it, all LLM weights.
    """

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], train_encoder: bool = False,
                 train_projector: bool = True, train_llm: bool = True, init_from: str | None = None,
                 handoff_lora: str = "merge") -> None:
        super().__init__(model, train={"encoder": train_encoder, "projector": train_projector, "llm": train_llm},
                         optim=optim, init_from=init_from, handoff_lora=handoff_lora)
        self.save_hyperparameters()
