"""Eager attention computed per packed sample: packed rows without the cross-sample score matrix.

transformers' eager attention builds a [row, row] score matrix for every head and masks the
cross-sample blocks away, so a packed row of N tokens costs N^2 however short its samples are
(on CPU, a 8,192-token row of 160-token samples spends 98% of its attention work on blocks that
are masked out). Here each packed sample runs through the model's own eager attention function
on its own span, with its causal (and sliding-window) mask: the same softmax rows, O(sum n_i^2).

Registered with transformers as ``attn_implementation="eager_packed"``: packed rows get
:class:`SampleSpans` as their mask (``LanguageModel.packed_attention_masks``); everything else
(unpacked batches, padding, generation with a cache) is the model's eager attention unchanged.
It is the CPU training path for packed rows; on CUDA, ``flex`` does the same inside one kernel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

EAGER_PACKED = "eager_packed"


@dataclass(frozen=True)
class SampleSpans:
    """The packed samples of every row, as (start, end) token spans, and the layer type's window."""

    spans: tuple[tuple[tuple[int, int], ...], ...]
    sliding_window: int | None = None

    @classmethod
    def from_positions(cls, position_ids: torch.Tensor, sliding_window: int | None = None) -> SampleSpans:
        """Samples start where position ids do not advance by one (as ``pack`` lays rows out)."""
        rows = []
        for row in position_ids.tolist():
            starts = [i for i in range(len(row)) if i == 0 or row[i] != row[i - 1] + 1]
            rows.append(tuple(zip(starts, starts[1:] + [len(row)])))
        return cls(tuple(rows), sliding_window)

    def mask(self, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive [1, 1, n, n] causal (sliding) mask of one sample, as eager attention adds it."""
        q = torch.arange(length, device=device)[:, None]
        keep = q >= q.T
        if self.sliding_window:
            keep &= q - q.T < self.sliding_window  # a query sees itself and window - 1 keys before it
        mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
        return mask[None, None]


def _model_eager_attention(module: nn.Module):
    """The eager attention function of the module's own model (GPT-oss's folds in its sinks)."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise ValueError(f"{type(module).__name__} has no eager attention function; "
                         f"attn_implementation={EAGER_PACKED!r} needs one (use eager)")
    return function


def eager_packed_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                   attention_mask: SampleSpans | torch.Tensor | None, scaling: float,
                                   dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface: [B, H, S, D] in, [B, S, H, D] out (as eager)."""
    eager = _model_eager_attention(module)
    if not isinstance(attention_mask, SampleSpans):
        return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if key.shape[-2] != query.shape[-2]:  # cached keys: spans are in query coordinates and would miss them
        raise ValueError(f"attn_implementation={EAGER_PACKED!r}: packed rows (position ids restarting, no attention "
                         "mask) cannot extend a KV cache; pass an attention_mask or no past_key_values")
    rows = []
    for b, spans in enumerate(attention_mask.spans):
        pieces = []
        for start, end in spans:
            mask = attention_mask.mask(end - start, query.dtype, query.device)
            out, _ = eager(module, query[b:b + 1, :, start:end], key[b:b + 1, :, start:end],
                           value[b:b + 1, :, start:end], mask, scaling=scaling, dropout=dropout, **kwargs)
            pieces.append(out)
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(EAGER_PACKED, eager_packed_attention_forward)
AttentionMaskInterface.register(EAGER_PACKED, eager_mask)
