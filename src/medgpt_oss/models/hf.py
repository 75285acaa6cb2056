"""A MedVLM as a ``transformers`` model of our own: a config class and a ``PreTrainedModel``.

The export format of models that are not LLaVA (BiomedCLIP, ``linear``/``pixel_shuffle``
projectors, tiles; LLaVA-shaped models export as transformers' own class, see
:mod:`medgpt_oss.models.llava`). Importing this module registers both classes with the Auto
classes (:func:`register`, called at the bottom; no ``trust_remote_code``)::

    import medgpt_oss.models.hf  # noqa: F401
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained("<export dir>")

:class:`MedVLMConfig` describes the architecture completely -- the encoder class and
its full architecture config (a ``CLIPVisionConfig``/``SiglipVisionConfig`` dict, or a
timm model name + kwargs), the projector class and kwargs, the LLM's own
transformers config (``text_config``, e.g. ``gpt_oss``), the image token and the
number of tokens per image -- so :class:`MedVLMForConditionalGeneration` rebuilds the
model without touching any pretrained weights or tokenizer: the encoder through its
build-from-config (``scale="tiny"``) path, the LLM through
``AutoModelForCausalLM.from_config``. The module tree, and hence every weight name
(``encoder.*``, ``projector.*``, ``llm.*``), is the one :class:`MedVLM` has, and images
are spliced into the text by :meth:`MedVLM.embed` itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PreTrainedConfig,
    PreTrainedModel,
)

from medgpt_oss.harmony import IMAGE_TOKEN, STOP_TOKENS, ChatSettings
from medgpt_oss.models.llm import LanguageModel
from medgpt_oss.trust import check_class_path

MODEL_TYPE = "medgpt_oss_vlm"
ADAPTER_DIR = "lora_adapter"  # where an unmerged LoRA adapter goes inside an export folder

# Config fields of a vision tower that are bookkeeping, not architecture.
_NOT_ARCHITECTURE = {
    "_name_or_path", "architectures", "dtype", "transformers_version", "model_type", "id2label", "label2id",
    "problem_type", "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
    "is_encoder_decoder",
}


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


# -- rebuilding the parts from the config ------------------------------------------------------------


def build_encoder(desc: dict[str, Any]) -> nn.Module:
    """The encoder, built from its architecture config through the class's own build-from-config path."""
    from medgpt_oss.models.encoders import VisionEncoder

    # config.json is data: the class must be this project's (checked before any import) and a VisionEncoder.
    cls = check_class_path(desc["class"], "config.json encoder.class", base=VisionEncoder)
    # scale="tiny" is the "build this architecture from a config dict, load nothing" path; the
    # random init it makes is replaced by the exported weights.
    encoder = cls(pretrained=desc.get("pretrained") or "exported", scale="tiny", tiny=desc["architecture"],
                  feature_layer=desc["feature_layer"])
    encoder.image_mean = tuple(float(x) for x in desc["image_mean"])
    encoder.image_std = tuple(float(x) for x in desc["image_std"])
    for key in ("image_size", "hidden_size", "num_tokens"):
        if key in desc and getattr(encoder, key) != desc[key]:
            raise ValueError(f"rebuilt encoder has {key}={getattr(encoder, key)}, the config says {desc[key]}")
    return encoder


def build_projector(desc: dict[str, Any]) -> nn.Module:
    from medgpt_oss.models.projectors import Projector

    cls = check_class_path(desc["class"], "config.json projector.class", base=Projector)
    return cls(in_dim=desc["in_dim"], out_dim=desc["out_dim"], **desc.get("kwargs", {}))


class ExportedLanguageModel(LanguageModel):
    """:class:`LanguageModel` rebuilt from a transformers config: same module tree and weight names,
    same forward (packed-row masks included), but no tokenizer and no pretrained weights."""

    def __init__(self, text_config: PreTrainedConfig, image_token: str, image_token_id: int,
                 model: nn.Module | None = None, chat: dict[str, Any] | None = None) -> None:
        nn.Module.__init__(self)
        self.pretrained_id = getattr(text_config, "_name_or_path", "") or "exported"
        self.tokenizer = None
        self.image_token = image_token
        self._image_token_id = int(image_token_id)
        self.lora_config = None
        self.loss_chunk_size = None  # an export computes its loss the plain transformers way
        self.added_rows = None  # the export's embedding matrices hold every row
        self.chat = ChatSettings.of(chat)
        self.model = model if model is not None else AutoModelForCausalLM.from_config(text_config)

    @property
    def image_token_id(self) -> int:
        return self._image_token_id


def _outermost_pretrained_models(module: nn.Module, prefix: str = ""):
    """``(dotted name, model)`` of the PreTrainedModels inside ``module`` not nested in another one."""
    for name, child in module.named_children():
        if isinstance(child, PreTrainedModel):
            yield f"{prefix}{name}", child
        else:
            yield from _outermost_pretrained_models(child, f"{prefix}{name}.")


class MedVLMForConditionalGeneration(PreTrainedModel):
    """Encoder -> projector -> LLM with the image-splicing semantics of :class:`MedVLM`.

    ``forward(input_ids, attention_mask=None, pixel_values=None, labels=None, **kw)`` takes
    ``pixel_values`` ``[num_images, 3, H, W]`` for all images of the batch in order, and
    ``input_ids`` with ``tokens_per_image`` image tokens per image (the exported chat template
    writes them for each ``<image>``).
    """

    config_class = MedVLMConfig
    main_input_name = "input_ids"
    # The parts check what they support themselves (GPT-oss, for instance, has no SDPA).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: MedVLMConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config.encoder)
        self.projector = build_projector(config.projector)
        text_config = config.text_config
        if getattr(text_config, "_attn_implementation", None) is None and config.llm_attn_implementation:
            text_config._attn_implementation = config.llm_attn_implementation
        self.llm = ExportedLanguageModel(text_config, config.image_token, config.image_token_id, chat=config.chat)
        self.tokens_per_image = self.projector.output_tokens(self.encoder.num_tokens)
        if self.tokens_per_image != config.tokens_per_image:
            raise ValueError(f"rebuilt model makes {self.tokens_per_image} tokens per image, "
                             f"the config says {config.tokens_per_image}")
        self.post_init()

    def post_init(self) -> None:
        super().post_init()
        # The parts' PreTrainedModels sit below plain modules (encoder.model, llm.model), where
        # PreTrainedModel.post_init does not look: collect their tied weights and dtype/placement rules.
        for name, model in _outermost_pretrained_models(self):
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            self.all_tied_weights_keys.update({f"{name}.{k}": f"{name}.{v}" for k, v in tied.items()})
            self._keep_in_fp32_modules.update(getattr(model, "_keep_in_fp32_modules", None) or [])
            self._keep_in_fp32_modules_strict.update(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
            self._no_split_modules.update(getattr(model, "_no_split_modules", None) or [])

    # -- MedVLM's own code over this model's parts ---------------------------------------------

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from medgpt_oss.models.vlm import MedVLM

        return MedVLM.encode_images(self, pixel_values)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        from medgpt_oss.models.vlm import MedVLM

        return MedVLM.embed(self, input_ids, pixel_values)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.model.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        elif pixel_values is not None:
            raise ValueError("pass pixel_values with input_ids, not with inputs_embeds")
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Splice the images in once, then let the LLM generate from the embeddings.

        Returns the prompt ids followed by the generated ids, as ``generate`` does for text models.
        Stops at the config's ``eos_token_id`` (harmony's ``<|return|>``/``<|call|>``/``<|endoftext|>``)
        unless told otherwise; ``kwargs`` go to the LLM's ``generate``.
        """
        kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        embeds = self.embed(input_ids, pixel_values)
        return self.llm.model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                                       **kwargs)


def medvlm_from_export(path: str | Path, **from_pretrained_kwargs: Any):
    """An export folder (either format) as a :class:`MedVLM` (with its tokenizer), for code written against MedVLM
    (``input_spec``, ``embed``, ``llm.model.generate``; e.g. the evaluation harness).

    The MedVLM shares the loaded model's modules; ``from_pretrained_kwargs`` go to
    ``from_pretrained`` (``dtype``, ``device_map``, ``attn_implementation``, ...).
    """
    from transformers import AutoTokenizer

    from medgpt_oss.models.vlm import MedVLM

    config_file = Path(path) / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type == "llava":
        from medgpt_oss.models.llava import medvlm_from_llava

        return medvlm_from_llava(path, **from_pretrained_kwargs)
    if model_type != MODEL_TYPE:
        raise ValueError(f"'{path}' is not a medgpt-oss export (config.json model_type {model_type!r}; "
                         f"expected 'llava' or {MODEL_TYPE!r})")
    model = MedVLMForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
    if (Path(path) / ADAPTER_DIR).is_dir():
        attach_lora_adapter(model, Path(path) / ADAPTER_DIR)
    model.llm.tokenizer = AutoTokenizer.from_pretrained(path)
    return MedVLM(model.encoder, model.projector, model.llm).eval()


def attach_lora_adapter(model: MedVLMForConditionalGeneration, adapter_dir: str | Path | None = None):
    """Wrap the loaded model's LLM with the LoRA adapter an export kept separate (``merge_lora=false``).

    ``adapter_dir`` defaults to ``<export dir>/lora_adapter``. Returns ``model``.
    """
    from peft import PeftModel

    path = Path(adapter_dir) if adapter_dir else Path(model.config.name_or_path) / ADAPTER_DIR
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"'{path}' holds no LoRA adapter (adapter_config.json)")
    model.llm.model = PeftModel.from_pretrained(model.llm.model, str(path))
    model.llm.lora_config = json.loads((path / "adapter_config.json").read_text())
    return model


# -- describing a trained MedVLM ------------------------------------------------------------------


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def encoder_architecture(encoder: nn.Module, encoder_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config dict the encoder class's build-from-config path turns into this exact architecture."""
    from medgpt_oss.models.encoders import OpenCLIPTimmEncoder, _HFVisionEncoder
    from medgpt_oss.models.hub import resolve_pretrained

    if isinstance(encoder, _HFVisionEncoder):
        allowed = set(encoder.config_cls().to_dict()) - _NOT_ARCHITECTURE
        return {k: v for k, v in encoder.model.config.to_dict().items() if k in allowed}
    if isinstance(encoder, OpenCLIPTimmEncoder):
        if encoder.scale == "tiny":
            vision_cfg = dict(encoder_cfg["tiny"])
        else:  # what _load_pretrained read: the open_clip config of the weights folder
            folder = resolve_pretrained(encoder.pretrained_id, "encoder.pretrained")
            config = json.loads((folder / "open_clip_config.json").read_text())
            vision_cfg = config.get("model_cfg", config)["vision_cfg"]
        return {k: vision_cfg[k] for k in OpenCLIPTimmEncoder.TINY_KEYS if k in vision_cfg}
    raise NotImplementedError(
        f"export does not know how to describe {_class_path(encoder)}; teach "
        "medgpt_oss.models.hf.encoder_architecture its build-from-config format"
    )


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
            "architecture": encoder_architecture(encoder, model_cfg.get("encoder") or {}),
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


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` know the export format."""
    AutoConfig.register(MODEL_TYPE, MedVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)


register()
