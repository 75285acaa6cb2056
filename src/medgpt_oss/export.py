"""Export a stage checkpoint as a folder that plain ``transformers`` loads.

    python -m medgpt_oss.export ckpt=<run>/checkpoints/last.ckpt out=<dir>
    python -m medgpt_oss.export ckpt=<ckpt> out=<dir> dtype=bfloat16
    python -m medgpt_oss.export ckpt=<ckpt> out=<dir> merge_lora=false   # adapter kept in <dir>/lora_adapter

The folder holds ``config.json`` + ``model.safetensors`` (weights under the MedVLM's own
names: ``encoder.*``, ``projector.*``, ``llm.*``; LoRA merged by default), the tokenizer
with a chat template that writes the image tokens for each ``<image>``, a
``preprocessor_config.json`` (``CLIPImageProcessor``: the encoder's size, mean, std,
bicubic resize) and a README. Load it with::

    import medgpt_oss  # registers the model type with transformers' Auto classes
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
    model = AutoModelForImageTextToText.from_pretrained(out)
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medgpt_oss.config import CONF_DIR


class ExportError(ValueError):
    """An export that cannot be done as asked (the message says what to change)."""


def export_chat_template(image_token: str, tokens_per_image: int) -> str:
    """The harmony template of :class:`~medgpt_oss.data.conversation.HarmonyFormatter`, plus images.

    Each ``<image>`` in a user/system message (or ``{"type": "image"}`` part of a list content)
    becomes ``tokens_per_image`` image tokens, so ``apply_chat_template`` gives the exact ids the
    model was trained on.
    """
    image_run = image_token * tokens_per_image
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content | replace('<image>', '" + image_run + "') }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}" + image_run +
        "{%- elif part['type'] == 'text' -%}{{ part['text'] | replace('<image>', '" + image_run + "') }}"
        "{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "<|start|>assistant<|channel|>final<|message|>{{ render(message['content']) }}"
        "{%- if loop.last -%}<|return|>{%- else -%}<|end|>{%- endif -%}"
        "{%- else -%}"
        "<|start|>{{ message['role'] }}<|message|>{{ render(message['content']) }}<|end|>"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|start|>assistant<|channel|>final<|message|>{%- endif -%}"
    )


def _check_out(out: str | Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that holds anything but an earlier export (that one only with ``overwrite``).

    Returns whether ``out`` has content to clear.
    """
    from medgpt_oss.models.hf import MODEL_TYPE

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"out='{out}' is a file, not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    config = out / "config.json"
    is_export = config.is_file() and json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    if not (overwrite and is_export):
        raise ExportError(
            f"out='{out}' is not empty; choose a new folder"
            + (" or pass overwrite=true to replace this earlier export" if is_export else "")
        )
    return True


def _prepare_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if _check_out(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _torch_dtype(dtype: str | None):
    import torch

    if not dtype:
        return None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ExportError(f"dtype='{dtype}' is not a floating-point torch dtype (bfloat16, float16, float32)")
    return value


def _plain(obj: Any) -> Any:
    """JSON-ready copy of config values (OmegaConf containers included)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _keeps_fp32(name: str, modules: set[str]) -> bool:
    return any(re.search(rf"(^|\.){re.escape(m)}(\.|$)", name) for m in modules)


def export_vlm(
    vlm: Any,
    model_cfg: dict[str, Any],
    out: str | Path,
    merge_lora: bool = True,
    dtype: str | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``vlm`` (a :class:`MedVLM` built from ``model_cfg``) as a transformers folder.

    A LoRA-wrapped LLM is merged into its base weights (``merge_lora=True``) or saved as a
    separate adapter in ``<out>/lora_adapter`` next to the base weights. Either way ``vlm``'s
    LLM is unwrapped in place, so pass a model you do not train further.
    """
    import torch
    from peft import PeftModel
    from transformers import CLIPImageProcessor
    from transformers import initialization as hf_init

    from medgpt_oss.models.hf import ADAPTER_DIR, MedVLMForConditionalGeneration, config_from_vlm

    target_dtype = _torch_dtype(dtype)
    out = _prepare_out(out, overwrite)

    source, model_cfg = _plain(dict(source or {})), _plain(dict(model_cfg))
    lora = _plain(vlm.llm.lora_config)
    source["lora"] = lora
    source.setdefault("encoder_pretrained", vlm.encoder.pretrained_id)
    source.setdefault("llm_pretrained", vlm.llm.pretrained_id)
    if isinstance(vlm.llm.model, PeftModel):
        peft_model = vlm.llm.model
        if merge_lora:
            vlm.llm.model = peft_model.merge_and_unload()
        else:
            peft_model.save_pretrained(out / ADAPTER_DIR)
            vlm.llm.model = peft_model.unload()
        vlm.llm.lora_config = None
    source["lora_merged"] = bool(lora) and merge_lora

    config = config_from_vlm(vlm, model_cfg, source=source)
    # Built on the meta device (no memory, no init), then given the trained tensors themselves:
    # a strict load proves that every weight name lines up with what the loader will build.
    with torch.device("meta"), hf_init.meta_device_safe_creation_ops():
        model = MedVLMForConditionalGeneration(config)
    state = vlm.state_dict()
    if target_dtype is not None:
        # transformers' own rule (PreTrainedModel._get_dtype_plan): the parts' "strict" fp32 modules stay
        # fp32 in fp16 and bf16, the others only in fp16.
        keep = set(model._keep_in_fp32_modules_strict) if target_dtype in (torch.float16, torch.bfloat16) else set()
        if target_dtype == torch.float16:
            keep |= set(model._keep_in_fp32_modules)
        state = {k: v.to(target_dtype) if v.is_floating_point() and not _keeps_fp32(k, keep) else v
                 for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.config.dtype = target_dtype or vlm.llm.model.get_input_embeddings().weight.dtype
    model.save_pretrained(out)

    tokenizer = copy.deepcopy(vlm.tokenizer)
    tokenizer.chat_template = export_chat_template(config.image_token, config.tokens_per_image)
    tokenizer.save_pretrained(out)
    encoder = config.encoder
    size = {"height": encoder["image_size"], "width": encoder["image_size"]}
    # Resize straight to the square (no aspect-preserving crop), bicubic, rescale, normalise:
    # exactly medgpt_oss.data.images.ImageTransform.
    CLIPImageProcessor(
        do_resize=True, size=size, resample=3, do_center_crop=False, crop_size=size, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=list(encoder["image_mean"]),
        image_std=list(encoder["image_std"]), do_convert_rgb=True,
    ).save_pretrained(out)
    (out / "README.md").write_text(model_card(config, adapter=(out / ADAPTER_DIR).is_dir()))
    return out


def model_card(config: Any, adapter: bool) -> str:
    source = config.source or {}
    encoder, projector = config.encoder, config.projector
    lora = source.get("lora")
    lora_line = ("none" if not lora else f"rank {lora.get('rank')} on {lora.get('target_modules')}, "
                 + ("merged into the weights" if source.get("lora_merged") else "kept separate in `lora_adapter/`"))
    load_adapter = (
        "\nfrom medgpt_oss.models.hf import attach_lora_adapter\nattach_lora_adapter(model)  # adds lora_adapter/\n"
        if adapter else "\n"
    )
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [medgpt-oss, medical, vision-language]
---

# MedGPT-oss export

A biomedical vision-language model trained with [medgpt-oss](https://arxiv.org/abs/2603.00842):
vision encoder -> projector -> LLM, images spliced into the text as runs of `{config.image_token}`.

| part | base |
|---|---|
| vision encoder | `{encoder['pretrained']}` (`{encoder['class']}`, {encoder['image_size']} px, feature layer {encoder['feature_layer']}) |
| projector | `{projector['class']}` {projector['kwargs']} ({config.tokens_per_image} tokens per image) |
| LLM | `{source.get('llm_pretrained', '?')}` (`{config.text_config.model_type}`) |
| LoRA | {lora_line} |

- stage: `{source.get('stage', '?')}` (scale `{source.get('scale', '?')}`)
- checkpoint: `{source.get('checkpoint', '?')}`

## Use

```python
import medgpt_oss  # registers the model type with transformers' Auto classes (no trust_remote_code)
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

model = AutoModelForImageTextToText.from_pretrained("<this folder>"){load_adapter}tokenizer = AutoTokenizer.from_pretrained("<this folder>")
processor = AutoImageProcessor.from_pretrained("<this folder>")

messages = [{{"role": "user", "content": "<image>\\nIs there a nodule?"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                    return_tensors="pt")["input_ids"]
pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
out = model.generate(ids, pixel_values=pixels, max_new_tokens=64)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

The chat template is the harmony layout the model was trained on (answers in the `final`
channel); each `<image>` becomes {config.tokens_per_image} image tokens, one image per `<image>`, in order.
"""


def export(
    ckpt: str | Path,
    out: str | Path,
    merge_lora: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a stage checkpoint (any stage; the checkpoint names its class) to ``out``."""
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"checkpoint '{ckpt}' does not exist; pass a stage checkpoint, "
            "e.g. ckpt=outputs/align/runs/<time>/checkpoints/last.ckpt"
        )
    _check_out(out, overwrite)  # fail before the (slow) model load
    _torch_dtype(dtype)
    from medgpt_oss.stages.base import load_stage

    stage = load_stage(str(ckpt_path))
    stage.eval()
    model_cfg = _plain(dict(stage.hparams["model"]))
    source = {
        "stage": f"{type(stage).__module__}.{type(stage).__qualname__}",
        "checkpoint": str(ckpt_path.resolve()),
        "encoder_pretrained": stage.vlm.encoder.pretrained_id,
        "llm_pretrained": stage.vlm.llm.pretrained_id,
        "scale": (model_cfg.get("llm") or {}).get("scale"),
    }
    return export_vlm(stage.vlm, model_cfg, out, merge_lora=merge_lora, dtype=dtype, source=source,
                      overwrite=overwrite)


def describe_folder(out: Path) -> str:
    lines = [f"exported to {out.resolve()}"]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        lines.append(f"  {str(path.relative_to(out)):<40} {path.stat().st_size:>14,} bytes")
    return "\n".join(lines)


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if not cfg.get("ckpt"):
        print("error: say which checkpoint to export: ckpt=<run>/checkpoints/last.ckpt out=<dir>", file=sys.stderr)
        sys.exit(2)
    if not cfg.get("out"):
        print("error: say where to write the export: out=<dir>", file=sys.stderr)
        sys.exit(2)
    try:
        out = export(cfg.ckpt, cfg.out, merge_lora=cfg.merge_lora, dtype=cfg.get("dtype"),
                     overwrite=cfg.get("overwrite", False))
    except (FileNotFoundError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(describe_folder(out))


if __name__ == "__main__":
    main()
