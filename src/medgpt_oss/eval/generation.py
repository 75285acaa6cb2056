"""Batched greedy decoding for a MedVLM: left padding, KV cache, stop at harmony end tokens.

Prompts are built by the training ``SampleProcessor`` (``for_generation=True``
ends them in ``<|start|>assistant<|channel|>final<|message|>``), images are
spliced into the embeddings by ``MedVLM.embed``, and the LLM's own
``generate`` decodes from ``inputs_embeds`` -- so evaluation sees exactly the
input layout training saw. Left padding keeps every prompt's last token at the
same position, which is what batched decoding with a KV cache needs; tests
check that a batch decodes to the same text as one item at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import re

import torch
from omegaconf import OmegaConf

from medgpt_oss.data.processor import SampleProcessor

IMAGE_OPTIONS = ("max_tiles", "dicom")

STOP_TOKENS = ("<|return|>", "<|end|>", "<|call|>")
FINAL_HEADER = "<|channel|>final<|message|>"
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def final_channel_text(text: str) -> str:
    """The ``final`` channel's text of a decoded harmony reply (analysis channels dropped)."""
    if FINAL_HEADER in text:
        text = text.rsplit(FINAL_HEADER, 1)[1]
    for stop in STOP_TOKENS:
        text = text.split(stop, 1)[0]
    return _SPECIAL.sub("", text).strip()  # stray control tokens are never part of an answer


def load_vlm(ckpt: str, device: str = "cpu"):
    """A MedVLM in eval mode from a Lightning checkpoint of any stage, or from an export folder."""
    path = Path(ckpt)
    if path.is_dir():
        from medgpt_oss.models.hf import medvlm_from_export

        return medvlm_from_export(path).to(device).eval()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt}' does not exist")
    from medgpt_oss.stages.base import load_stage

    return load_stage(str(path), map_location="cpu").vlm.to(device).eval()


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        import os

        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def training_image_options(ckpt: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data.max_tiles`` and ``data.dicom`` of the run that wrote a Lightning checkpoint, read from its run
    folder's ``config.yaml`` (``<run>/checkpoints/x.ckpt``), so a model trained on tiles is evaluated on
    tiles; none when there is no such file (exports, checkpoints moved elsewhere). Non-null ``overrides``
    (``images.*`` in conf/eval.yaml) win."""
    options: dict[str, Any] = {}
    run_config = Path(ckpt).resolve().parent.parent / "config.yaml" if ckpt and Path(ckpt).is_file() else None
    if run_config is not None and run_config.is_file():
        data = OmegaConf.load(run_config).get("data") or {}
        options = {key: data[key] for key in IMAGE_OPTIONS if key in data}
    options.update({key: value for key, value in (overrides or {}).items()
                    if key in IMAGE_OPTIONS and value is not None})
    return {key: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for key, v in options.items()}


class Generator:
    """Turns LLaVA-style records into answers, ``batch_size`` prompts per ``generate`` call.

    ``max_tiles`` and ``dicom`` feed images as training did (see ``SampleProcessor``)."""

    def __init__(self, vlm, root: str | Path, max_new_tokens: int = 256, system_prompt: str | None = None,
                 max_tiles: int | None = None, dicom: dict[str, Any] | None = None) -> None:
        self.vlm = vlm
        self.processor = SampleProcessor(vlm.input_spec(), root, system_prompt=system_prompt, max_tiles=max_tiles,
                                         dicom=dicom)
        self.tokenizer = vlm.tokenizer
        self.max_new_tokens = max_new_tokens
        self.stop_ids = [int(self.tokenizer.convert_tokens_to_ids(t)) for t in STOP_TOKENS]

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    def prepare(self, record: dict[str, Any]) -> dict[str, Any]:
        """Tokenize + load images (raises ConversationError naming the record if it cannot)."""
        return self.processor(record, for_generation=True)

    @torch.no_grad()
    def generate(self, samples: Sequence[dict[str, Any]], streamer: Any = None) -> list[str]:
        batch = self.processor.collate(list(samples), padding_side="left")
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        pixels = batch["pixel_values"].to(self.device) if batch["pixel_values"].numel() else None
        embeds = self.vlm.embed(input_ids, pixels)
        out = self.vlm.llm.model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=self.max_new_tokens,
            do_sample=False, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True, streamer=streamer,
        )
        # Given only inputs_embeds, generate returns the new tokens alone.
        return [self.decode(row) for row in out.tolist()]

    def decode(self, ids: list[int]) -> str:
        for i, tok in enumerate(ids):
            if tok in self.stop_ids:
                ids = ids[:i]
                break
        return final_channel_text(self.tokenizer.decode(ids, skip_special_tokens=False))
