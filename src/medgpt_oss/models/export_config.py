"""The config of our own export format (``model_type`` ``medgpt_oss_vlm``), and how a trained MedVLM is described by it.

The format of models that are not LLaVA (BiomedCLIP, ``linear``/``pixel_shuffle`` projectors, tiles;
LLaVA-shaped models export as transformers' own class, see :mod:`medgpt_oss.models.llava`).
:class:`MedVLMConfig` describes the architecture completely -- the encoder class and its full architecture
config (a ``CLIPVisionConfig``/``SiglipVisionConfig`` dict, or a timm model name + kwargs), the projector
class and kwargs, the LLM's own transformers config (``text_config``, e.g. ``gpt_oss``), the image token and
the number of tokens per image -- so :class:`medgpt_oss.models.export_model.MedVLMForConditionalGeneration`
rebuilds the model without touching any pretrained weights or tokenizer.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from medgpt_oss.harmony import IMAGE_TOKEN, STOP_TOKENS

MODEL_TYPE = "medgpt_oss_vlm"
ADAPTER_DIR = "lora_adapter"  # where an unmerged LoRA adapter goes inside an export folder


class MedVLMConfig(PreTrainedConfig):
    """Everything needed to rebuild a :class:`MedVLM` without its pretrained weights.

    Args:
        encoder: ``{"class", "pretrained", "architecture", "feature_layer", "image_size",
            "image_mean", "image_std", "hidden_size", "num_tokens"}``; ``architecture`` is what the
            encoder class builds from (its ``tiny`` dict format).
        projector: ``{"class", "kwargs", "in_dim", "out_dim"}``.
        text_config: the LLM's own transformers config (``model_type`` inside).
        image_token / image_token_id / tokens_per_image: how images enter the text.
        llm_attn_implementation: the attention the LLM trained with; used unless the caller
            asks for another one (``from_pretrained(..., attn_implementation=...)``).
        eos_token_id / pad_token_id: generation defaults (the tokenizer's stop and pad tokens).
        chat: the harmony system message's settings the model trained with (``ChatSettings``).
        source: provenance (stage, checkpoint, base models, LoRA); informational only.
    """

    model_type = MODEL_TYPE
    # The plain `sub_configs` form (transformers 5.0-5.2x); the dict -> config conversion is done
    # below rather than by newer versions' `sub_configs_defaults`, so both lines read the same file.
    sub_configs = {"text_config": AutoConfig}

    encoder: dict | None = None
    projector: dict | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token: str = IMAGE_TOKEN
    image_token_id: int | None = None
    tokens_per_image: int | None = None
    llm_attn_implementation: str | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    chat: dict | None = None
    source: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.text_config, dict):
            text = dict(self.text_config)
            self.text_config = AutoConfig.for_model(text.pop("model_type", "gpt_oss"), **text)
        elif self.text_config is None:
            self.text_config = AutoConfig.for_model("gpt_oss")
        super().__post_init__(**kwargs)


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def config_from_vlm(vlm: Any, model_cfg: dict[str, Any], source: dict[str, Any] | None = None) -> MedVLMConfig:
    """The :class:`MedVLMConfig` of a built ``MedVLM`` (LoRA merged or removed first) and its config dicts."""
    from peft import PeftModel

    llm_model = vlm.llm.model
    if isinstance(llm_model, PeftModel):
        raise ValueError("merge or unload the LoRA adapter before describing the model")
    encoder = vlm.encoder
    projector_kwargs = {k: v for k, v in (model_cfg.get("projector") or {}).items() if not k.startswith("_")}
    tokenizer = vlm.tokenizer
    stop_tokens = [t for t in STOP_TOKENS if t in tokenizer.get_vocab()]
    return MedVLMConfig(
        encoder={
            "class": _class_path(encoder),
            "pretrained": encoder.pretrained_id,
            "architecture": encoder.architecture(),
            "feature_layer": encoder.feature_layer,
            "image_size": encoder.image_size,
            "image_mean": list(encoder.image_mean),
            "image_std": list(encoder.image_std),
            "hidden_size": encoder.hidden_size,
            "num_tokens": encoder.num_tokens,
        },
        projector={
            "class": model_cfg["projector"]["_target_"] if model_cfg.get("projector") else _class_path(vlm.projector),
            "kwargs": projector_kwargs,
            "in_dim": encoder.hidden_size,
            "out_dim": vlm.llm.hidden_size,
        },
        text_config=llm_model.config.to_dict(),
        image_token=vlm.llm.image_token,
        image_token_id=vlm.image_token_id,
        tokens_per_image=vlm.tokens_per_image,
        llm_attn_implementation=llm_model.config._attn_implementation,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in stop_tokens] or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        chat=vlm.llm.chat.to_dict(),
        source=source,
    )
