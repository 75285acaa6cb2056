"""Causal-LM cross-entropy in chunks of tokens: full-vocabulary logits never exist for a whole row.

GPT-oss's vocabulary has 201,088 entries, so fp32 logits for one 32,768-token row take 26 GB,
and their gradient as much again. Here only supervised positions (labels != -100, after the
same shift by one as transformers' ``ForCausalLMLoss``) go through the output head,
``chunk_size`` tokens at a time, each chunk under activation checkpointing: a chunk's logits
exist only while its loss is taken and, in backward, while its gradient is recomputed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden_states: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    chunk_size: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised positions, as ``ForCausalLMLoss`` computes it.

    ``hidden_states`` [B, S, H] are the decoder's final (normed) states, ``head`` the output
    projection (``lm_head``, with or without adapters), ``labels`` [B, S] unshifted. Like
    transformers, a batch without supervised tokens gives NaN (0 / 0).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    targets = labels[:, 1:]
    supervised = targets != ignore_index
    hidden = hidden_states[:, :-1][supervised]
    targets = targets[supervised]
    chunk_loss = functools.partial(_chunk_loss_sum, head)
    total = hidden_states.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk_size):
        stop = start + chunk_size
        total = total + checkpoint(chunk_loss, hidden[start:stop], targets[start:stop], use_reentrant=False)
    return total / supervised.sum()
