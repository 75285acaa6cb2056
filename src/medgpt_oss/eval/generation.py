"""Batched greedy decoding for a MedVLM: left padding, KV cache, stop where a harmony reply ends.

Prompts are built by the training ``SampleProcessor`` (``for_generation=True`` ends them at
``<|start|>assistant``, as the official template does: the model writes the channel itself),
images are spliced into the embeddings by ``MedVLM.embed``, and the LLM's own ``generate``
decodes from ``inputs_embeds`` -- so evaluation sees exactly the input layout training saw.
The answer is the reply's ``final`` channel; a reply without one is unparseable (``None``),
never read from the analysis channel. Left padding keeps every prompt's last token at the
same position, which is what batched decoding with a KV cache needs; tests check that a batch
decodes to the same text as one item at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import StoppingCriteria, StoppingCriteriaList

from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.harmony import END, FINAL_HEADER, STOP_TOKENS, final_answer

log = logging.getLogger(__name__)
IMAGE_OPTIONS = ("max_tiles", "dicom")
IMAGE_MODES = ("normal", "blank", "both")  # images.mode of conf/eval.yaml


class EvalProcessor(SampleProcessor):
    """The training processor, plus ``blank_images``: every image is read, tiled and counted as usual (so
    the prompt's tokens are unchanged, an unreadable file still fails), then each of its encoder inputs is
    replaced by the same black image (``ImageTransform.blank``). Generation and likelihood scoring both
    build their inputs here, so both see the blanked pixels."""

    blank_images = False

    def load_pixels(self, record_id: str, image_paths: list[str],
                    image_bytes: list[bytes] | None = None) -> tuple[torch.Tensor, list[int]]:
        pixels, views_per_image = super().load_pixels(record_id, image_paths, image_bytes)
        if self.blank_images and pixels.numel():
            pixels = self.transform.blank().expand_as(pixels).clone()
        return pixels, views_per_image


class HarmonyReplyEnd(StoppingCriteria):
    """Stops a row at a stop token (``<|return|>``, ``<|call|>``, ``<|endoftext|>``) or at an ``<|end|>``
    that closes a final-channel message; an analysis message's ``<|end|>`` lets the reply go on."""

    def __init__(self, tokenizer: Any) -> None:
        vocab = tokenizer.get_vocab()
        self.stop_ids = [int(vocab[t]) for t in STOP_TOKENS if t in vocab]
        self.end_id = int(tokenizer.convert_tokens_to_ids(END))
        self.final_header = tokenizer(FINAL_HEADER, add_special_tokens=False)["input_ids"]

    def after_final_header(self, row: list[int]) -> bool:
        n = len(self.final_header)
        return any(row[i:i + n] == self.final_header for i in range(len(row) - n + 1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = torch.isin(input_ids[:, -1], torch.tensor(self.stop_ids, device=input_ids.device))
        for i in torch.nonzero(input_ids[:, -1] == self.end_id).flatten().tolist():
            # Given inputs_embeds alone, generate's input_ids hold the new tokens only: the reply so far.
            done[i] = self.after_final_header(input_ids[i, :-1].tolist())
        return done


def load_vlm(ckpt: str, device: str = "cpu", trusted_targets: Sequence[str] = ()):
    """A MedVLM in eval mode from a Lightning checkpoint of any stage, or from an export folder.

    ``trusted_targets``: classes outside this project a checkpoint may name (``medgpt_oss.trust``)."""
    path = Path(ckpt)
    if path.is_dir():
        from medgpt_oss.models.load_export import medvlm_from_export

        return medvlm_from_export(path).to(device).eval()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt}' does not exist")
    from medgpt_oss.contract import NoContractRule, check_agreement, input_spec_from_config
    from medgpt_oss.stages.base import load_stage

    stage = load_stage(str(path), map_location="cpu", trusted_targets=trusted_targets)
    # The prompts are built from the model's own input_spec(): it must be the contract of the config the
    # checkpoint saved, as training's data module had it.
    try:
        config_spec = input_spec_from_config(stage.hparams["model"])
    except NoContractRule as exc:  # a class of the user's own that states none: training used input_spec() too
        log.info("%s; the prompts follow the model's own input_spec() unchecked", exc)
    else:
        check_agreement(config_spec, stage.vlm.input_spec())
    return stage.vlm.to(device).eval()


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
                 max_tiles: int | None = None, dicom: dict[str, Any] | None = None,
                 allow_outside_root: bool = False) -> None:
        self.vlm = vlm
        self.processor = EvalProcessor(vlm.input_spec(), root, system_prompt=system_prompt, max_tiles=max_tiles,
                                         dicom=dicom, allow_outside_root=allow_outside_root)
        self.tokenizer = vlm.tokenizer
        self.max_new_tokens = max_new_tokens
        self.stop = HarmonyReplyEnd(self.tokenizer)

    @property
    def blank_images(self) -> bool:
        """True: every image the model sees is black (the images-blanked ablation, ``images.mode``)."""
        return self.processor.blank_images

    @blank_images.setter
    def blank_images(self, value: bool) -> None:
        self.processor.blank_images = bool(value)

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    def prepare(self, record: dict[str, Any]) -> dict[str, Any]:
        """Tokenize + load images (raises ConversationError naming the record if it cannot)."""
        return self.processor(record, for_generation=True)

    @torch.no_grad()
    def replies(self, samples: Sequence[dict[str, Any]], streamer: Any = None) -> list[str]:
        """The decoded replies, special tokens kept (channel headers and all)."""
        batch = self.processor.collate(list(samples), padding_side="left")
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        pixels = batch["pixel_values"].to(self.device) if batch["pixel_values"].numel() else None
        embeds = self.vlm.embed(input_ids, pixels)
        out = self.vlm.llm.model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=self.max_new_tokens,
            do_sample=False, eos_token_id=self.stop.stop_ids, stopping_criteria=StoppingCriteriaList([self.stop]),
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, streamer=streamer,
        )
        # Given only inputs_embeds, generate returns the new tokens alone.
        return [self.decode_reply(row) for row in out.tolist()]

    def generate(self, samples: Sequence[dict[str, Any]], streamer: Any = None) -> list[str | None]:
        """The final-channel answers (``None`` for a reply without a final channel)."""
        return [final_answer(reply) for reply in self.replies(samples, streamer)]

    def decode_reply(self, ids: list[int]) -> str:
        """A row of generated ids up to where the reply ended (rows that ended early are padded)."""
        stop = self.stop
        for i, tok in enumerate(ids):
            if tok in stop.stop_ids or (tok == stop.end_id and stop.after_final_header(ids[:i])):
                ids = ids[:i + 1]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=False)
