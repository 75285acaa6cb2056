"""Likelihood scoring for closed-set questions: pick the option the model finds most likely.

Each candidate answer ("Yes"/"No", "A".."E") is put in the assistant turn and
tokenized by the training processor, whose label mask marks the channel header,
the answer tokens and its end token; the candidate's score is the summed
log-probability of those tokens (the header is the same for every candidate, so
it shifts all scores alike). One forward pass covers all candidates of an item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medgpt_oss.eval.benchmarks.base import EvalItem
from medgpt_oss.eval.prompts import to_record

DEFAULT_FORMATS = {"closed": "{label}", "mcq": "{letter}"}


def candidates(item: EvalItem, formats: Mapping[str, str] | None = None) -> list[str]:
    """The answer strings to score: capitalised labels for closed sets, letters for MCQ."""
    fmt = {**DEFAULT_FORMATS, **(formats or {})}
    if item.kind == "closed":
        return [fmt["closed"].format(label=c.capitalize()) for c in item.choices]
    if item.kind == "mcq":
        return [fmt["mcq"].format(letter=k, text=v) for k, v in (item.options or {}).items()]
    raise ValueError(f"item {item.id}: likelihood scoring needs a closed or mcq item, not {item.kind}")


@torch.no_grad()
def pick_by_likelihood(generator: Any, item: EvalItem, prompt: str,
                       formats: Mapping[str, str] | None = None) -> tuple[str, list[float]]:
    """(best candidate text, log-likelihood of each candidate)."""
    texts = candidates(item, formats)
    proc = generator.processor
    samples = [proc(to_record(item, prompt, answer=t)) for t in texts]
    batch = proc.collate(samples, padding_side="right")
    device = generator.device
    labels = batch["labels"].to(device)
    pixels = batch["pixel_values"].to(device) if batch["pixel_values"].numel() else None
    logits = generator.vlm(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           pixel_values=pixels).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    token_logp = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    scores = token_logp.sum(-1).tolist()
    return texts[max(range(len(texts)), key=scores.__getitem__)], scores
