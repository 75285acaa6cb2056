"""Distribution strategies that need more than Lightning's defaults (conf/strategy/ picks them).

``TrainedOnlyFSDPStrategy`` is Lightning's FSDPStrategy with three differences:

- Our checkpoints hold only the weights a stage trains or received (``VLMStage.on_save_checkpoint``);
  frozen weights come back from the base weights. Lightning's sharded load asks the distributed
  checkpoint for *every* weight and DCP fails on the frozen ones ("Missing key in checkpoint
  state_dict"), so it loads just the weights the checkpoint folder holds.
- ``gradient_clip_val`` works (clip by the global norm over all shards; Lightning's FSDP refuses it).
- It runs on CPU (gloo), which current torch FSDP refuses unless told the device explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.fsdp import (
    _distributed_checkpoint_load,
    _get_sharded_state_dict_context,
    _is_sharded_checkpoint,
    _setup_activation_checkpointing,
)
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.plugins.precision import FSDPPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn


class NormClippingFSDPPrecision(FSDPPrecision):
    """FSDPPrecision that supports ``gradient_clip_val`` (clip by norm), which Lightning's refuses.

    The norm must be the global one over all shards, which only the root FSDP module can compute
    (``FullyShardedDataParallel.clip_grad_norm_``); the strategy hands it over once it has wrapped the model.
    """

    root: torch.nn.Module | None = None

    def clip_grad_by_norm(self, optimizer: Any, clip_val: float) -> None:
        if self.root is None:
            raise RuntimeError("gradient clipping before the FSDP model was set up")
        self.root.clip_grad_norm_(clip_val)


class TrainedOnlyFSDPStrategy(FSDPStrategy):
    """FSDPStrategy whose sharded checkpoints may hold a subset of the model's weights.

    Sharded checkpoints (``state_dict_type="sharded"``) are torch.distributed.checkpoint folders;
    DCP reshards on load, so a run saved on N ranks resumes on M.
    """

    @property
    def precision_plugin(self) -> NormClippingFSDPPrecision:
        if self._precision_plugin is None:
            self._precision_plugin = NormClippingFSDPPrecision("32-true")
        return self._precision_plugin

    @precision_plugin.setter
    def precision_plugin(self, plugin: Precision | None) -> None:
        if plugin is not None and not isinstance(plugin, FSDPPrecision):
            raise TypeError(f"the FSDP strategy needs an FSDPPrecision plugin, got {plugin}")
        if plugin is not None and not isinstance(plugin, NormClippingFSDPPrecision):
            plugin = NormClippingFSDPPrecision(plugin.precision, scaler=plugin.scaler)
        self._precision_plugin = plugin

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = self._wrap(model)
        self.precision_plugin.root = model
        return model

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu" or self._is_wrapped(model):
            return super()._setup_model(model)
        # Lightning passes device_id=None on CPU, and FSDP then looks for an accelerator and refuses to
        # run; naming the CPU device keeps FSDP usable with gloo (the 2-process CPU tests).
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    @staticmethod
    def _is_wrapped(model: torch.nn.Module) -> bool:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        reader = FileSystemReader(path=path)
        saved = {key.split(".", 1)[1] for key in reader.read_metadata().state_dict_metadata if key.startswith("model.")}
        with _get_sharded_state_dict_context(self.model):
            module_state = {"model": {k: v for k, v in self.model.state_dict().items() if k in saved}}
            missing = saved - set(module_state["model"])
            if missing:
                raise KeyError(
                    f"sharded checkpoint '{path}' has {len(missing)} weights this model lacks, "
                    f"e.g. {sorted(missing)[:3]}"
                )
            _distributed_checkpoint_load(module_state, path)
            self.model.load_state_dict(module_state["model"], strict=False)
            if self.lightning_module.trainer.state.fn == TrainerFn.FITTING and self.optimizers:
                for idx, optim in enumerate(self.optimizers):
                    optim_state = load_sharded_optimizer_state_dict(
                        model_state_dict=module_state["model"], optimizer_key=f"optimizer_{idx}", storage_reader=reader
                    )
                    optim.load_state_dict(
                        FSDP.optim_state_dict_to_load(
                            optim_state_dict=optim_state[f"optimizer_{idx}"], model=self.model, optim=optim
                        )
                    )
        metadata = torch.load(path / _METADATA_FILENAME, weights_only=weights_only)
        # The weights are loaded already (FSDPStrategy.load_model_state_dict is a no-op); the stage's
        # on_load_checkpoint still checks which ones the checkpoint held.
        metadata["state_dict"] = module_state["model"]
        return metadata
