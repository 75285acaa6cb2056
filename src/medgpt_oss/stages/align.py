"""Stage 1, alignment: image-caption pairs; projector trains, LLM frozen (encoder optional)."""

from __future__ import annotations

from typing import Any

from medgpt_oss.stages.base import VLMStage


class AlignStage(VLMStage):
    def __init__(self, model: dict[str, Any], optim: dict[str, Any], train_encoder: bool = False,
                 init_from: str | None = None, handoff_lora: str = "merge") -> None:
        super().__init__(model, train={"encoder": train_encoder, "projector": True, "llm": False}, optim=optim,
                         init_from=init_from, handoff_lora=handoff_lora)
        self.save_hyperparameters()
