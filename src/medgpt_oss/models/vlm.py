"""MedVLM: vision encoder -> projector -> LLM, composed from config.

Images enter the text as runs of the image token; :meth:`MedVLM.embed` overwrites
those positions with the projected patch features, in order
(:mod:`medgpt_oss.models.image_splicing`).
"""

from __future__ import annotations

from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medgpt_oss.contract import ModelInputSpec
from medgpt_oss.models.encoders import VisionEncoder
from medgpt_oss.models.image_splicing import ImageSplicing
from medgpt_oss.models.llm import LanguageModelBase
from medgpt_oss.models.projectors import Projector

COMPONENTS = ("encoder", "projector", "llm")


class MedVLM(ImageSplicing, nn.Module):
    def __init__(self, encoder: VisionEncoder, projector: Projector, llm: LanguageModelBase) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.tokens_per_image = projector.output_tokens(encoder.num_tokens)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | DictConfig) -> MedVLM:
        """Build from ``{encoder, projector, llm, lora}`` config dicts (the Hydra groups)."""
        cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
        encoder = hydra.utils.instantiate(cfg.encoder)
        lora = OmegaConf.to_container(cfg.lora, resolve=True) if cfg.get("lora") else None
        llm = hydra.utils.instantiate(cfg.llm, lora=lora)
        projector = hydra.utils.instantiate(cfg.projector)(in_dim=encoder.hidden_size, out_dim=llm.hidden_size)
        return cls(encoder, projector, llm)

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def image_token_id(self) -> int:
        return self.llm.image_token_id

    def input_spec(self) -> ModelInputSpec:
        """The model's own statement of its input contract: what ``contract.input_spec_from_config`` gives for
        the config it was built from (``contract.check_agreement`` compares the two)."""
        return ModelInputSpec(
            tokenizer=self.llm.tokenizer,
            image_token=self.llm.image_token,
            tokens_per_image=self.tokens_per_image,
            image_size=self.encoder.image_size,
            image_mean=tuple(self.encoder.image_mean),
            image_std=tuple(self.encoder.image_std),
            chat=self.llm.chat,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    # -- what trains ---------------------------------------------------------------------------

    def set_trainable(self, encoder: bool, projector: bool, llm: bool) -> None:
        """Freeze/unfreeze per component. With LoRA, training the LLM means training its adapters."""
        for p in self.encoder.parameters():
            p.requires_grad_(encoder)
        for p in self.projector.parameters():
            p.requires_grad_(projector)
        lora = self.llm.lora_config is not None
        for name, p in self.llm.named_parameters():
            p.requires_grad_(llm and (not lora or self.llm.is_adapter_param(name)))

    def parameter_summary(self) -> dict[str, dict[str, int]]:
        summary = {}
        for name in COMPONENTS:
            params = list(getattr(self, name).parameters())
            summary[name] = {
                "trainable": sum(p.numel() for p in params if p.requires_grad),
                "total": sum(p.numel() for p in params),
            }
        return summary

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        return self.encoder.fsdp_wrap_modules() | self.llm.fsdp_wrap_modules()
