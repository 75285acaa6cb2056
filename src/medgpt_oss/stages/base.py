"""The LightningModule every curriculum stage shares.

A stage is a policy over one :class:`MedVLM`: which components train, at which
learning rates, on which data. The model is built from the config dict held in
``hparams``, so ``Stage.load_from_checkpoint(path)`` rebuilds it with no other
arguments. Checkpoints keep only the weights this stage trains or received from
the previous stage (a 20B run's checkpoint stays small); the rest comes back from
the same base weights -- the pretrained folder, or at tiny scale the same seeded
random init.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from transformers import get_cosine_schedule_with_warmup

from medgpt_oss import provenance
from medgpt_oss.data.conversation import IGNORE_INDEX
from medgpt_oss.models.vlm import COMPONENTS, MedVLM
from medgpt_oss.progress import total_optimizer_steps
from medgpt_oss.stages.handoff import HANDOFF_LORA, LLM_PREFIX, handoff_state
from medgpt_oss.trust import check_checkpoint, check_class_path, load_checkpoint


ADDED_ROWS_KEY = "added_token_rows"


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _numpy_state_to_plain(state: tuple) -> list:
    # Plain types only, so checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


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
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from checkpoint '{ckpt_path}' does not exist")
        checkpoint = load_checkpoint(path)  # weights only: a pickle payload is refused, naming the file
        provenance.check(checkpoint, self, provenance.INIT_FROM, ckpt_path)  # before any weight moves
        previous_lora = (provenance.hyper_parameters(checkpoint).get("model") or {}).get("lora")
        trained_llm = [k for k in checkpoint["state_dict"] if k.startswith(LLM_PREFIX)]
        if trained_llm and (self.vlm.llm.lora_config or {}).get("quantize"):
            # 4-bit base weights can take neither trained weights nor merged adapters.
            raise ValueError(f"init_from '{ckpt_path}' trained the LLM ({len(trained_llm)} weights, e.g. "
                             f"{trained_llm[0]}), and this stage stores it in 4-bit (lora.quantize), which cannot "
                             "take trained weights or merge adapters: train this stage with a bf16 base (e.g. "
                             "lora=r16), or start QLoRA from a stage that kept the LLM frozen")
        state = handoff_state(
            checkpoint["state_dict"], self.state_dict(), previous_lora=previous_lora,
            own_lora=self.vlm.llm.lora_config, mode=self.handoff_lora, hf_config=self.vlm.llm.model.config,
            ckpt_path=str(ckpt_path), lora_option=provenance.option_name("lora", previous_lora),
        )
        self.vlm.llm.load_added_rows(checkpoint.get(ADDED_ROWS_KEY, {}))
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
        supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # predicted positions (shifted by one)
        world = self.trainer.world_size
        total = supervised
        if world > 1:  # the micro-batch's supervised tokens on all ranks
            total = int(self.trainer.strategy.reduce(torch.tensor(supervised, device=self.device), reduce_op="sum"))
        self._step_tokens = getattr(self, "_step_tokens", 0) + total
        if supervised == 0:
            # Last guard (the processor already rejects such samples): nothing to learn from this batch.
            if world == 1:
                return None
            # Every rank must run the same modules (FSDP all-gathers in forward, DDP all-reduces every trained
            # weight's gradient) and the loss sync: a one-token forward times zero (it adds no tokens to the
            # step's token mean); MedVLM.embed runs a blank image through the vision side.
            pad = self.vlm.llm.tokenizer.pad_token_id or 0
            zero = self.vlm(input_ids=torch.tensor([[pad]], device=self.device), use_cache=False).logits.sum() * 0.0
            self.log("train/loss", zero.detach(), prog_bar=True, batch_size=1, sync_dist=True)
            return zero
        loss = self._loss(batch)  # this rank's token mean
        # Logged: the micro-batch's token mean over all ranks (each rank's share weighted by its tokens; sync_dist
        # averages over ranks).
        self.log("train/loss", (loss * supervised * world / max(total, 1)).detach(), prog_bar=True,
                 batch_size=len(batch["ids"]), sync_dist=True)
        if not self._rescales_gradients:  # DeepSpeed keeps the gradients itself: weight by this micro-batch only
            return loss * supervised * world / max(total, 1)
        # Trained: the token *sum*; on_before_optimizer_step divides the step's gradient by the supervised tokens of
        # all its micro-batches on all ranks, so the step is the token mean over everything it saw.
        return loss * supervised

    @property
    def _rescales_gradients(self) -> bool:
        """Whether the gradients are ours to scale before the optimizer steps (not under DeepSpeed's engine)."""
        return not type(self.trainer.strategy).__name__.startswith("DeepSpeed")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the accumulated gradient of token sums into the gradient of the step's token mean.

        Gradients arrive averaged over ranks (DDP/FSDP) and each micro-batch's loss divided by
        ``accumulate_grad_batches`` (Lightning), so ``world x k / tokens`` makes them the mean over every
        supervised token of the step: k micro-batches on N ranks equal one batch of the same samples,
        however the tokens fall (a plain mean of micro-batch means weights a short batch's tokens more).
        Runs before gradient clipping, so clipping sees the true gradient.
        """
        tokens, self._step_tokens = getattr(self, "_step_tokens", 0), 0
        if tokens == 0 or not self._rescales_gradients:
            return
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches / tokens
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["ids"]:  # every sample of this batch was bad and skipped: nothing to score
            return
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
        # The schedule spans this fit's total steps (the progress bar's too). configure_optimizers runs on every
        # fit, a resume included, and a checkpoint restores only the scheduler's step count: resuming with another
        # trainer.max_steps runs the schedule defined over the new total (on_train_start puts its rate in place).
        self._schedule_total = total = total_optimizer_steps(self.trainer)
        if total <= 0:
            raise ValueError(f"the learning-rate schedule needs a run of known length, got {total} steps: set "
                             "trainer.max_steps (or a positive trainer.max_epochs)")
        warmup = int(optim.get("warmup_ratio", 0.0) * total)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _apply_schedule_after_resume(self) -> None:
        """Give the first resumed step the rate this run's schedule has at the restored step.

        The optimizer state a checkpoint restores carries the rate its own schedule set last: for a finished
        run extended with a larger ``trainer.max_steps`` that is the schedule's end, 0, and the first resumed
        step would train at lr 0 before the schedule (now over the new total) rose again. With an unchanged
        total the two rates are equal and nothing changes.
        """
        saved_total = getattr(self, "_restored_schedule_total", None)
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                continue
            step = scheduler.last_epoch
            rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            before = [group["lr"] for group in scheduler.optimizer.param_groups]
            for group, rate in zip(scheduler.optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates
            if saved_total is not None and saved_total != self._schedule_total:
                rank_zero_info(f"resumed at step {step} with a schedule over {self._schedule_total} steps (the "
                               f"checkpoint's ran over {saved_total}): the learning rate continues at {rates[0]:.3g} "
                               f"(the checkpoint's next rate was {before[0]:.3g}) and decays to 0 at step "
                               f"{self._schedule_total}")
        self._restored_schedule_total = None

    # -- checkpoints keep only what differs from the base weights (trained or handed over) ---------

    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[provenance.PROVENANCE_KEY] = self.provenance
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self.saved_keys}
        # Embedding rows the LLM had to add for the image token (a tokenizer without spare rows): seeded, and
        # saved anyway, so a reload never depends on how they were initialised.
        checkpoint[ADDED_ROWS_KEY] = self.vlm.llm.added_rows_state()
        # The steps the learning-rate schedule spans, to tell a resume with another total (plain int: weights_only).
        checkpoint["lr_schedule_total"] = int(getattr(self, "_schedule_total", 0))
        # Lightning does not save RNG states; dropout (e.g. LoRA's) must continue the same stream.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # resuming (train.py checks local files before any work; this covers URLs)
            provenance.check(checkpoint, self, provenance.RESUME, self._trainer.ckpt_path)
        missing = self.trainable_state_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")
        self.vlm.llm.load_added_rows(checkpoint.get(ADDED_ROWS_KEY, {}))  # before the state dict, which may train them
        self.saved_keys |= set(checkpoint["state_dict"])
        self._rng_to_restore = checkpoint.get("rng_states")
        self._restored_schedule_total = checkpoint.get("lr_schedule_total") or None

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # optimizer and scheduler states are restored by now
            self._apply_schedule_after_resume()
        # Restored here, after Lightning's own seeding and loader setup, just before the first step.
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            np.random.set_state(_numpy_state_from_plain(rng["numpy"]))
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
