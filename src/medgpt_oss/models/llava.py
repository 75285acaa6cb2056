"""A MedVLM as transformers' native ``LlavaForConditionalGeneration``, and back.

A CLIP or SigLIP tower + the ``mlp2x_gelu`` projector + any causal LM *is* LLaVA: the vision
tower's hidden state ``feature_layer`` (transformers' ``output_hidden_states`` index, no final
norm -- LLaVA's ``vision_feature_layer``), CLIP's CLS token dropped (``"default"``
select strategy) or SigLIP's patches kept whole (``"full"``), Linear-GELU-Linear
(``linear_1``/``act``/``linear_2``) and the image features spliced over the image tokens in
order. Written in that architecture, an export loads with transformers alone -- and so in the
serving tools that know LLaVA (vLLM, SGLang) -- with a ``LlavaProcessor`` whose chat template
is the harmony format the model trained with (:func:`medgpt_oss.harmony.chat_template`).

The weight names map one to one (:data:`KEY_MAP`); :func:`llava_incompatibility` says why a
model does not fit (another encoder or projector, tiles), in which case the export keeps our
own class (:mod:`medgpt_oss.models.export_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medgpt_oss.harmony import IMAGE_TOKEN, STOP_TOKENS  # GPT-oss's generation_config stops at these too
from medgpt_oss.models.attention import FLEX
from medgpt_oss.models.document_attention import EAGER_PACKED

# MedVLM state-dict prefix -> LlavaForConditionalGeneration's (transformers 5 module layout).
KEY_MAP = (
    ("encoder.model.", "model.vision_tower."),
    ("projector.mlp.0.", "model.multi_modal_projector.linear_1."),
    ("projector.mlp.2.", "model.multi_modal_projector.linear_2."),
    ("llm.model.model.", "model.language_model."),
    ("llm.model.lm_head.", "lm_head."),
)


def _rename(name: str, pairs) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old):]
    raise KeyError(f"weight '{name}' has no place in the LLaVA layout")


def to_llava_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, KEY_MAP): v for k, v in state.items()}


def llava_incompatibility(vlm: Any, max_tiles: int | None = None) -> str | None:
    """Why ``vlm`` cannot be written as ``LlavaForConditionalGeneration`` (``None``: it can)."""
    from medgpt_oss.models.encoders import CLIPEncoder, SiglipEncoder
    from medgpt_oss.models.projectors import MLPProjector

    if type(vlm.encoder) not in (CLIPEncoder, SiglipEncoder):
        return f"LLaVA's vision tower is a transformers CLIP/SigLIP model, not {type(vlm.encoder).__name__}"
    projector = vlm.projector
    if type(projector) is not MLPProjector or len(projector.mlp) != 3:
        return f"LLaVA's projector is Linear-GELU-Linear (projector=mlp2x_gelu), not {type(projector).__name__}"
    if max_tiles and max_tiles > 1:
        return f"the model was trained on dynamic tiles (data.max_tiles={max_tiles}); LLaVA's processor does not tile"
    if not hasattr(vlm.llm.model, "lm_head") or not hasattr(vlm.llm.model, "model"):
        return f"the LLM ({type(vlm.llm.model).__name__}) is not a <base model> + lm_head causal LM"
    return None


def llava_config(vlm: Any):
    """The ``LlavaConfig`` of a LLaVA-compatible MedVLM (LoRA merged or removed first)."""
    from transformers import LlavaConfig

    encoder, llm_model = vlm.encoder, vlm.llm.model
    vision = encoder.model.config.to_dict()
    text = llm_model.config.to_dict()
    # Our registered kernels (flex, eager_packed) exist only where medgpt_oss is imported; a native export is
    # read by transformers alone, so it names the reference attention they reproduce.
    attention = llm_model.config._attn_implementation
    text["_attn_implementation"] = "eager" if attention in (FLEX, EAGER_PACKED) else attention
    text["architectures"] = [type(llm_model).__name__]  # servers resolve the text model's class from this
    tokenizer = vlm.tokenizer
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vlm.image_token_id,
        image_seq_length=vlm.tokens_per_image,
        vision_feature_layer=encoder.feature_layer,
        vision_feature_select_strategy="default" if encoder.has_cls_token else "full",
        projector_hidden_act="gelu",  # exact (erf) GELU, as nn.GELU()
        multimodal_projector_bias=vlm.projector.mlp[0].bias is not None,
        tie_word_embeddings=bool(getattr(llm_model.config, "tie_word_embeddings", False)),
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS if t in tokenizer.get_vocab()],
        pad_token_id=tokenizer.pad_token_id,
    )
    return config


def llava_processor(vlm: Any, image_processor: Any):
    """``LlavaProcessor``: ``image_processor`` (the training image transform's transformers twin, which the data
    side owns), the tokenizer, and the harmony chat template, which writes one image token per image (the
    processor expands it to ``tokens_per_image``)."""
    import copy

    from transformers import LlavaProcessor

    from medgpt_oss.harmony import chat_template

    encoder = vlm.encoder
    tokenizer = copy.deepcopy(vlm.tokenizer)
    template = chat_template(vlm.llm.chat, image_text=vlm.llm.image_token)
    tokenizer.chat_template = template
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=encoder.patch_size,
        vision_feature_select_strategy="default" if encoder.has_cls_token else "full",
        num_additional_image_tokens=1 if encoder.has_cls_token else 0,
        image_token=vlm.llm.image_token, chat_template=template,
    )
    n = (encoder.image_size // encoder.patch_size) ** 2
    if n != vlm.tokens_per_image:
        raise ValueError(f"LlavaProcessor would write {n} image tokens per image, the model takes "
                         f"{vlm.tokens_per_image}")
    return processor


def build_llava(vlm: Any, provenance: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """An empty ``LlavaForConditionalGeneration`` for ``vlm`` (LLaVA-compatible, LoRA merged) and the weights
    under its names. Built on the meta device (no memory, no init): load the weights with ``assign=True``,
    and save it rather than run it (non-persistent buffers such as rotary frequencies stay empty until
    ``from_pretrained`` recomputes them). ``provenance`` (chat settings, source) goes into
    ``config.json`` under ``medgpt_oss``; loaders ignore it."""
    from transformers import LlavaForConditionalGeneration
    from transformers import initialization as hf_init

    config = llava_config(vlm)
    config.medgpt_oss = provenance
    with torch.device("meta"), hf_init.meta_device_safe_creation_ops():
        model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model, to_llava_keys(vlm.state_dict())


def medvlm_from_llava(path: str | Path, **from_pretrained_kwargs: Any):
    """A LLaVA export folder as a :class:`MedVLM` whose parts are the loaded model's own modules
    (evaluation and chat run on MedVLM)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from medgpt_oss.harmony import ChatSettings
    from medgpt_oss.models.encoders import CLIPEncoder, SiglipEncoder
    from medgpt_oss.models.llm import ExportedLanguageModel
    from medgpt_oss.models.projectors import MLPProjector
    from medgpt_oss.models.vlm import MedVLM

    llava = LlavaForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
    config = llava.config
    vision = config.vision_config
    encoder_cls = {"clip_vision_model": CLIPEncoder, "siglip_vision_model": SiglipEncoder}.get(vision.model_type)
    if encoder_cls is None:
        raise ValueError(f"'{path}': a LLaVA vision tower of type {vision.model_type!r} is not one of ours")
    processor = _read_json(Path(path) / "processor_config.json")
    image = processor.get("image_processor") or _read_json(Path(path) / "preprocessor_config.json")
    encoder = encoder_cls(pretrained=str(path), tower=llava.model.vision_tower,
                          feature_layer=config.vision_feature_layer,
                          image_mean=image.get("image_mean"), image_std=image.get("image_std"))
    projector = MLPProjector(vision.hidden_size, config.text_config.hidden_size)
    projector.mlp[0] = llava.model.multi_modal_projector.linear_1
    projector.mlp[2] = llava.model.multi_modal_projector.linear_2
    llm = ExportedLanguageModel(config.text_config, processor.get("image_token", IMAGE_TOKEN), config.image_token_id,
                                model=_causal_lm(llava))
    llm.tokenizer = AutoTokenizer.from_pretrained(path)
    llm.chat = ChatSettings.of((getattr(config, "medgpt_oss", None) or {}).get("chat"))
    return MedVLM(encoder, projector, llm).eval()


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def _causal_lm(llava: nn.Module) -> nn.Module:
    """A causal LM (e.g. ``GptOssForCausalLM``) whose decoder and head are LLaVA's own modules."""
    from transformers import AutoModelForCausalLM
    from transformers import initialization as hf_init

    with torch.device("meta"), hf_init.meta_device_safe_creation_ops():  # a 20B shell costs nothing here
        causal = AutoModelForCausalLM.from_config(llava.config.text_config)
    causal.model = llava.model.language_model
    causal.lm_head = llava.lm_head
    causal.generation_config = llava.generation_config
    return causal.eval()
