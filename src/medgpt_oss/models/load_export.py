"""An export folder, in either format, as a :class:`MedVLM` with its tokenizer: for code written against
MedVLM (``input_spec``, ``embed``, ``llm.model.generate``; e.g. the evaluation harness)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def medvlm_from_export(path: str | Path, **from_pretrained_kwargs: Any):
    """The export at ``path`` (LLaVA or our own format, an unmerged LoRA adapter attached) as a :class:`MedVLM`.

    The MedVLM shares the loaded model's modules; ``from_pretrained_kwargs`` go to
    ``from_pretrained`` (``dtype``, ``device_map``, ``attn_implementation``, ...).
    """
    from transformers import AutoTokenizer

    from medgpt_oss.models.export_config import ADAPTER_DIR, MODEL_TYPE
    from medgpt_oss.models.vlm import MedVLM

    config_file = Path(path) / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type == "llava":
        from medgpt_oss.models.llava import medvlm_from_llava

        return medvlm_from_llava(path, **from_pretrained_kwargs)
    if model_type != MODEL_TYPE:
        raise ValueError(f"'{path}' is not a medgpt-oss export (config.json model_type {model_type!r}; "
                         f"expected 'llava' or {MODEL_TYPE!r})")
    import medgpt_oss.models.hf  # noqa: F401  (registers the format: AutoTokenizer reads config.json through AutoConfig)
    from medgpt_oss.models.export_model import MedVLMForConditionalGeneration

    model = MedVLMForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
    if (Path(path) / ADAPTER_DIR).is_dir():
        model.attach_lora_adapter(Path(path) / ADAPTER_DIR)
    model.llm.tokenizer = AutoTokenizer.from_pretrained(path)
    return MedVLM(model.encoder, model.projector, model.llm).eval()
