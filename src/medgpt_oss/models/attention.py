"""GPT-oss attention through FlexAttention, with the learned per-head sinks folded in.

GPT-oss gives every head one learned logit (the "sink") that joins each softmax row, takes
probability mass and contributes no value. transformers' eager path concatenates it to a
materialised [q, k] score matrix. FlexAttention never builds that matrix but returns the row
log-sum-exp ``lse`` of the real scores, and

    softmax([s, sink])[:-1] @ v = softmax(s) @ v * exp(lse) / (exp(lse) + exp(sink))
                                = out * sigmoid(lse - sink)

so the sink is one elementwise gate on the output (differentiable through ``lse``).

Causal order, GPT-oss's 128-token sliding window (``config.layer_types`` alternates
sliding/full layers) and packed documents (position ids restart per sample) are one
``mask_mod``; the BlockMask built from it lets the kernel skip tiles that are fully masked.

Registered with transformers as ``attn_implementation="flex"`` (``llm.attn_implementation=flex``);
``eager`` stays the exact reference. What torch 2.14.1 offers on CPU (checked): flex_attention
runs the forward uncompiled (its math reference, returning lse); the backward raises
NotImplementedError compiled or not, and the compiled CPU forward cannot return lse. So on CPU
"flex" serves inference and checks, training there uses eager; on CUDA the kernel is compiled.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    add_offsets_to_mask_function,
    and_masks,
    causal_mask_function,
    padding_mask_function,
    prepare_padding_mask,
)

FLEX = "flex"
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sequence_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, S] position ids that restart per packed sample -> [B, S] sample index (0, 0, 1, 1, 1, 2, ...)."""
    return (torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1).cumsum(-1)


def document_mask_mod(sequence_ids: torch.Tensor | None = None, sliding_window: int | None = None) -> MaskMod:
    """Causal, optionally within a sliding window and within one packed sample, as one mask_mod.

    The window matches transformers' ``sliding_window_overlay``: a query sees itself and the
    ``sliding_window - 1`` keys before it.
    """

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        keep = q >= kv
        if sliding_window is not None:
            keep = keep & (q - kv < sliding_window)
        if sequence_ids is not None:
            keep = keep & (sequence_ids[b, q] == sequence_ids[b, kv])
        return keep

    return mask_mod


def _create_block_mask(mask_mod: MaskMod, batch: int | None, q_len: int, kv_len: int,
                       device: torch.device | str) -> BlockMask:
    # Compiling the mask builder pays off on CUDA (one kernel, reused every step); on CPU it only costs.
    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device,
                             _compile=torch.device(device).type == "cuda")


def block_mask(length: int, device: torch.device | str, sliding_window: int | None = None,
               sequence_ids: torch.Tensor | None = None) -> BlockMask:
    """BlockMask for rows of ``length`` tokens; per-row when ``sequence_ids`` [B, S] describe packing."""
    batch = None if sequence_ids is None else sequence_ids.shape[0]
    return _create_block_mask(document_mask_mod(sequence_ids, sliding_window), batch, length, length, device)


def packed_block_masks(config, position_ids: torch.Tensor) -> dict[str, BlockMask]:
    """One BlockMask per attention type of the model (``full_attention`` / ``sliding_attention``) for packed rows."""
    sequence_ids = sequence_ids_from_positions(position_ids)
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    windows = {"full_attention": None, "sliding_attention": getattr(config, "sliding_window", None)}
    return {kind: block_mask(position_ids.shape[-1], position_ids.device, windows[kind], sequence_ids)
            for kind in layer_types}


def fold_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention output without sinks [B, H, S, D] + its row lse [B, H, S] -> output with the per-head sinks [H]."""
    gate = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))
    return (out.float() * gate.unsqueeze(-1)).to(out.dtype)


@functools.cache
def _compiled_flex_attention() -> Callable:
    return torch.compile(flex_attention, dynamic=False)


def sink_flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sinks: torch.Tensor,
                        mask: BlockMask, scale: float) -> torch.Tensor:
    """[B, Hq, S, D] queries, [B, Hkv, S, D] keys/values (GQA), per-head sinks -> [B, Hq, S, D]."""
    with warnings.catch_warnings():
        # On CPU the uncompiled math reference is the only kernel that returns lse; torch warns it is slow.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        kernel = flex_attention if query.device.type == "cpu" else _compiled_flex_attention()
        out, aux = kernel(query, key, value, block_mask=mask, scale=scale, enable_gqa=True,
                          return_aux=AuxRequest(lse=True))
    return fold_sinks(out, aux.lse, sinks)


def flex_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: BlockMask | torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface (same arguments as GPT-oss's ``eager_attention_forward``)."""
    if dropout:
        raise ValueError(f"attn_implementation={FLEX!r} has no attention dropout; set the model's attention_dropout=0")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise RuntimeError(
            f"attn_implementation={FLEX!r} cannot train on CPU: torch {torch.__version__} has no FlexAttention "
            "backward there. Use llm.attn_implementation=eager on CPU (flex is for CUDA)."
        )
    if not isinstance(attention_mask, BlockMask):
        # Reached only without a mask from our mask interface (e.g. a model built with another one).
        if attention_mask is not None:
            raise ValueError(f"attn_implementation={FLEX!r} needs a BlockMask, got {type(attention_mask).__name__}")
        attention_mask = block_mask(query.shape[-2], query.device, sliding_window)
    sinks = s_aux if s_aux is not None else torch.full((query.shape[1],), float("-inf"), device=query.device)
    out = sink_flex_attention(query, key, value, sinks, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def flex_block_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    **kwargs,
) -> BlockMask:
    """transformers mask interface for ``flex``: its composed mask function (causal, sliding, padding) as a BlockMask.

    Packed rows bypass this: ``LanguageModel`` passes :func:`packed_block_masks` directly.
    """
    batch = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask_function = and_masks(mask_function, padding_mask_function(
            prepare_padding_mask(attention_mask, kv_length, kv_offset)))
        batch = batch_size
    mask_function = add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return _create_block_mask(mask_function, batch, q_length, kv_length, device)


AttentionInterface.register(FLEX, flex_attention_forward)
AttentionMaskInterface.register(FLEX, flex_block_mask)
