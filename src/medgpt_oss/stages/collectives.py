"""A step's loss as the mean over every supervised token it saw, on every rank, and ranks kept in lockstep.

Each micro-batch trains on its token *sum*; before the optimizer steps, the accumulated gradient is divided
by the supervised tokens of all the step's micro-batches on all ranks, so k micro-batches on N ranks equal
one batch of the same samples however the tokens fall (a plain mean of micro-batch means weights a short
batch's tokens more). A rank with nothing to learn from still runs every module and every collective.
"""

from __future__ import annotations

from typing import Any

import torch

from medgpt_oss.data.conversation import IGNORE_INDEX


def supervised_tokens(labels: torch.Tensor) -> int:
    """The positions a batch predicts (labels are shifted by one)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def tokens_on_all_ranks(strategy: Any, world_size: int, tokens: int, device: torch.device) -> int:
    """The micro-batch's supervised tokens summed over ranks."""
    if world_size == 1:
        return tokens
    return int(strategy.reduce(torch.tensor(tokens, device=device), reduce_op="sum"))


def rank_weighted(loss: torch.Tensor, tokens: int, world_size: int, total: int) -> torch.Tensor:
    """This rank's token-mean ``loss`` weighted by its share of the ``total`` tokens on all ranks: averaged over
    ranks (as DDP/FSDP gradients and ``sync_dist`` logging are), the mean over every token."""
    return loss * tokens * world_size / max(total, 1)


def empty_rank_loss(vlm: Any, device: torch.device) -> torch.Tensor:
    """A zero loss that runs the model like any batch: for a rank whose batch supervises nothing.

    Every rank must run the same modules (FSDP all-gathers in forward, DDP all-reduces every trained
    weight's gradient) and the loss sync: a one-token forward times zero (it adds no tokens to the step's
    token mean); ``MedVLM.embed`` runs a blank image through the vision side.
    """
    pad = vlm.llm.tokenizer.pad_token_id or 0
    return vlm(input_ids=torch.tensor([[pad]], device=device), use_cache=False).logits.sum() * 0.0


def rescales_gradients(strategy: Any) -> bool:
    """Whether the gradients are ours to scale before the optimizer steps (not under DeepSpeed's engine)."""
    return not type(strategy).__name__.startswith("DeepSpeed")


def to_token_mean(optimizer: torch.optim.Optimizer, tokens: int, world_size: int, accumulate: int) -> None:
    """Turn the accumulated gradient of token sums into the gradient of the step's token mean.

    Gradients arrive averaged over ranks (DDP/FSDP) and each micro-batch's loss divided by
    ``accumulate`` (Lightning's ``accumulate_grad_batches``), so ``world_size x accumulate / tokens`` makes
    them the mean over the step's ``tokens`` (every supervised token of every micro-batch on every rank).
    """
    scale = world_size * accumulate / tokens
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(scale)
