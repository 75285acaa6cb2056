"""Distribution strategies that need more than Lightning's defaults, and the factories conf/strategy/ names.

The ``strategy/`` group's ``_target_`` is what ``train.py`` instantiates, with what the file holds:
:func:`deepspeed` (its package is an optional extra, checked when the run starts) and :func:`fsdp`, whose
wrap and recompute units are the model's own blocks: its files are partial, and ``train.py`` completes
them with ``model_blocks`` (``MedVLM.fsdp_wrap_modules()``) once the model is built.

``TrainedOnlyFSDPStrategy`` is Lightning's FSDPStrategy with three differences:

- Our checkpoints hold only the weights a stage trains or received (``VLMStage.on_save_checkpoint``);
  frozen weights come back from the base weights. Lightning's sharded load asks the distributed
  checkpoint for *every* weight and DCP fails on the frozen ones ("Missing key in checkpoint
  state_dict"), so it loads just the weights the checkpoint folder holds.
- ``gradient_clip_val`` works (clip by the global norm over all shards; Lightning's FSDP refuses it).
- It runs on CPU (gloo), which current torch FSDP refuses unless told the device explicitly.
"""

from __future__ import annotations

import importlib.util
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

from medgpt_oss.config import MissingExtraError


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


# -- the factories conf/strategy/ names -----------------------------------------------------------------

def deepspeed(stage: int = 3, offload_optimizer: bool = False, offload_parameters: bool = False) -> Any:
    """Lightning's DeepSpeedStrategy (ZeRO ``stage``), refused with the install line when DeepSpeed is not there."""
    if importlib.util.find_spec("deepspeed") is None:
        raise MissingExtraError(
            "strategy=deepspeed_zero3 needs the 'deepspeed' package, which is not installed: "
            "pip install 'medgpt-oss[deepspeed]' (or choose strategy=fsdp, which needs nothing extra)"
        )
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters)


def fsdp(model_blocks: set[type[torch.nn.Module]], sharding_strategy: str = "FULL_SHARD",
         state_dict_type: str = "sharded", wrap_model_blocks: bool = True, checkpoint_model_blocks: bool = True,
         llm_activation_checkpointing: str | None = None, accelerator: str | None = None,
         devices: Any = None) -> TrainedOnlyFSDPStrategy:
    """:class:`TrainedOnlyFSDPStrategy` whose FSDP units (``wrap_model_blocks``) and recomputed blocks
    (``checkpoint_model_blocks``) are ``model_blocks``.

    ``llm_activation_checkpointing`` (the llm group's own recompute setting) is refused together with
    ``checkpoint_model_blocks``: the two would recompute the same layers twice. ``accelerator`` and ``devices``
    (the trainer's) are checked for HYBRID_SHARD, which needs several GPUs per node.
    """
    if sharding_strategy.startswith("HYBRID"):
        _check_hybrid_has_a_node_to_shard(accelerator, devices)
    if checkpoint_model_blocks and llm_activation_checkpointing:
        raise ValueError("strategy=fsdp already recomputes every model block; set llm.activation_checkpointing=null, "
                         "or strategy.checkpoint_model_blocks=false to recompute only what "
                         f"llm.activation_checkpointing={llm_activation_checkpointing} names")
    return TrainedOnlyFSDPStrategy(
        sharding_strategy=sharding_strategy, state_dict_type=state_dict_type,
        auto_wrap_policy=model_blocks if wrap_model_blocks else None,
        activation_checkpointing_policy=model_blocks if checkpoint_model_blocks else None,
    )


def _check_hybrid_has_a_node_to_shard(accelerator: str | None, devices: Any) -> None:
    """HYBRID_SHARD shards over the GPUs FSDP counts on a node (CUDA's device count; 1 on CPU).

    With one device per node the shard group is a single rank, and we measured (2 CPU processes)
    that the ranks then train on their own halves of the batch: losses drift from one process's.
    """
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu or devices in (1, "1", [0]):
        raise ValueError(
            "strategy=fsdp_hybrid shards within a node and needs several GPUs per node "
            f"(here accelerator={accelerator}, devices={devices}); with one device per node FSDP "
            "shards over a single rank and, as measured on CPU, does not combine the ranks' gradients. "
            "Use strategy=fsdp (or ddp) instead."
        )
