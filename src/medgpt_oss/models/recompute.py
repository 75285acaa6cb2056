"""Speed/memory switches on the LLM's decoder layers: selective activation checkpointing and compilation.

``llm.activation_checkpointing`` recomputes, in backward, the activations of

* ``layers`` -- every decoder layer (the usual setting: least memory, ~1/3 more compute);
* ``every_<k>`` -- every k-th layer (``every_2``: half the layers; a memory/compute trade-off);
* ``attention`` -- only the attention blocks (cheap to recompute, large activations at long context);
* ``moe`` -- only the MoE blocks (GPT-oss's experts: the bulk of the FLOPs, so costly to recompute,
  but their router/expert buffers dominate memory at short context).

``llm.compile`` compiles each decoder layer with ``torch.compile`` (``inductor`` on the card;
``aot_eager`` checks the wiring without code generation).

Both act on the modules in place -- the forward is wrapped, no module is inserted -- so weight names,
checkpoints and exports do not change. Recomputation is exact (non-reentrant ``torch.utils.checkpoint``,
no dropout in GPT-oss's blocks); tests check loss and gradients against the plain path on CPU.
``strategy=fsdp`` recomputes every model block itself (``strategy.checkpoint_model_blocks``); set that
to false to use a selective mode under FSDP (asking for both is refused).
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODES = ("layers", "attention", "moe")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers causal LM (under a peft wrapper too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(base).__name__} has no decoder .layers to checkpoint or compile")
    return list(layers)


def _checkpointed(module: nn.Module) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed


def apply_activation_checkpointing(model: nn.Module, mode: str | None) -> list[str]:
    """Wrap the forward of the modules ``mode`` names; returns their names (for the run log)."""
    if not mode:
        return []
    every = re.fullmatch(r"every_(\d+)", mode)
    if mode not in MODES and not (every and int(every.group(1)) >= 1):
        raise ValueError(f"llm.activation_checkpointing={mode!r}: use one of {list(MODES)}, every_<k> or null")
    # A recomputed attention block would append its keys to a KV cache a second time: training runs without
    # one (generation asks for it explicitly), as transformers' own gradient checkpointing does.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = False
    chosen = []
    for i, layer in enumerate(decoder_layers(model)):
        if every and i % int(every.group(1)):
            continue
        if mode == "attention":
            targets = {"self_attn": layer.self_attn}
        elif mode == "moe":
            targets = {"mlp": layer.mlp}
        else:
            targets = {"": layer}
        for name, module in targets.items():
            _checkpointed(module)
            chosen.append(f"layers.{i}" + (f".{name}" if name else ""))
    return chosen


def compile_layers(model: nn.Module, backend: str | None) -> int:
    """``torch.compile`` every decoder layer in place with ``backend``; returns how many."""
    if not backend:
        return 0
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, dynamic=None)
    return len(layers)
