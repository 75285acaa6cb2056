"""Registers our export format with transformers' Auto classes: importing this module is all it takes
(no ``trust_remote_code``)::

    import medgpt_oss.models.hf  # noqa: F401
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained("<export dir>")

The format's config is :mod:`medgpt_oss.models.export_config`, its model class
:mod:`medgpt_oss.models.export_model`. LLaVA-shaped models export as transformers' own class
(:mod:`medgpt_oss.models.llava`) and need no registration.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from medgpt_oss.models.export_config import MODEL_TYPE, MedVLMConfig
from medgpt_oss.models.export_model import MedVLMForConditionalGeneration


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` know the export format."""
    AutoConfig.register(MODEL_TYPE, MedVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)


def attach_lora_adapter(model: MedVLMForConditionalGeneration, adapter_dir=None) -> MedVLMForConditionalGeneration:
    """Kept because older exports' model cards say ``from medgpt_oss.models.hf import attach_lora_adapter`` and
    ``attach_lora_adapter(model)``; the same as ``model.attach_lora_adapter(adapter_dir)``, which new cards show."""
    return model.attach_lora_adapter(adapter_dir)


register()
