"""A MedVLM rebuilt from our export's config, as a ``transformers`` ``PreTrainedModel``.

:class:`MedVLMForConditionalGeneration` builds the encoder through its build-from-config (``scale="tiny"``)
path and the LLM through ``AutoModelForCausalLM.from_config``, from the
:class:`~medgpt_oss.models.export_config.MedVLMConfig` alone. The module tree, and hence every weight name
(``encoder.*``, ``projector.*``, ``llm.*``), is the one :class:`MedVLM` has, and images are spliced into the
text by the same code (:mod:`medgpt_oss.models.image_splicing`). ``import medgpt_oss.models.hf`` registers
it with transformers' Auto classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from medgpt_oss.models.export_config import ADAPTER_DIR, MedVLMConfig
from medgpt_oss.models.image_splicing import ImageSplicing
from medgpt_oss.models.llm import ExportedLanguageModel
from medgpt_oss.trust import check_class_path


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


def _outermost_pretrained_models(module: nn.Module, prefix: str = ""):
    """``(dotted name, model)`` of the PreTrainedModels inside ``module`` not nested in another one."""
    for name, child in module.named_children():
        if isinstance(child, PreTrainedModel):
            yield f"{prefix}{name}", child
        else:
            yield from _outermost_pretrained_models(child, f"{prefix}{name}.")


class MedVLMForConditionalGeneration(ImageSplicing, PreTrainedModel):
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

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    def attach_lora_adapter(self, adapter_dir: str | Path | None = None) -> MedVLMForConditionalGeneration:
        """Wrap the LLM with the LoRA adapter an export kept separate (``merge_lora=false``).

        ``adapter_dir`` defaults to ``<export dir>/lora_adapter``. Returns the model.
        """
        self.llm.load_lora_adapter(Path(adapter_dir) if adapter_dir else Path(self.config.name_or_path) / ADAPTER_DIR)
        return self

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
