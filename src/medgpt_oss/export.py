"""Export a stage checkpoint as a folder that plain ``transformers`` loads.

    python -m medgpt_oss.export ckpt=<run>/checkpoints/last.ckpt out=<dir>
    python -m medgpt_oss.export ckpt=<ckpt> out=<dir> dtype=bfloat16
    python -m medgpt_oss.export ckpt=<ckpt> out=<dir> merge_lora=false   # adapter kept in <dir>/lora_adapter

Two formats (``format=auto`` picks the first that fits):

* ``llava`` -- a CLIP/SigLIP encoder + ``mlp2x_gelu`` projector (untiled) *is* transformers'
  ``LlavaForConditionalGeneration`` (:mod:`medgpt_oss.models.llava`): the folder loads with
  transformers alone (``AutoProcessor`` + ``AutoModelForImageTextToText``) and so in serving
  tools that know LLaVA. The processor's chat template is the harmony format the model trained with.
* ``medgpt_oss`` -- every other model (BiomedCLIP, ``linear``/``pixel_shuffle`` projectors,
  tiles, an unmerged adapter): our own class (:mod:`medgpt_oss.models.export_model`), weights under the
  MedVLM's names, loaded after ``import medgpt_oss.models.hf``.

Each folder has a README.md model card that says which loader it needs.
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
from medgpt_oss.trust import UntrustedCodeError

FORMATS = ("auto", "llava", "medgpt_oss")


class ExportError(ValueError):
    """An export that cannot be done as asked (the message says what to change)."""


def _check_out(out: str | Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that holds anything but an earlier export (that one only with ``overwrite``).

    Returns whether ``out`` has content to clear.
    """
    from medgpt_oss.models.export_config import MODEL_TYPE

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"out='{out}' is a file, not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    config = out / "config.json"
    written = json.loads(config.read_text()) if config.is_file() else {}
    is_export = written.get("model_type") == MODEL_TYPE or "medgpt_oss" in written
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


def _cast(model: Any, state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """``state`` in ``dtype`` by transformers' own rule (PreTrainedModel._get_dtype_plan): the model's "strict"
    fp32 modules stay fp32 in fp16 and bf16, the others only in fp16."""
    import torch

    if dtype is None:
        return state
    keep = set(model._keep_in_fp32_modules_strict or ()) if dtype in (torch.float16, torch.bfloat16) else set()
    if dtype == torch.float16:
        keep |= set(model._keep_in_fp32_modules or ())
    return {k: v.to(dtype) if v.is_floating_point() and not _keeps_fp32(k, keep) else v for k, v in state.items()}


def choose_format(vlm: Any, fmt: str = "auto", merge_lora: bool = True,
                  max_tiles: int | None = None) -> tuple[str, str | None]:
    """``("llava", None)`` when the model is LLaVA and that is allowed, else ``("medgpt_oss", why not LLaVA)``;
    ``fmt=llava`` on a model that does not fit is an error saying why."""
    from medgpt_oss.models.llava import llava_incompatibility

    if fmt not in FORMATS:
        raise ExportError(f"format='{fmt}': use one of {FORMATS}")
    reason = llava_incompatibility(vlm, max_tiles)
    if reason is None and not merge_lora and vlm.llm.lora_config:
        reason = "merge_lora=false keeps the adapter apart, and a LLaVA folder holds merged weights only"
    if fmt == "medgpt_oss":
        return fmt, reason or "format=medgpt_oss was asked for"
    if reason is not None and fmt == "llava":
        raise ExportError(f"format=llava does not fit this model: {reason}; use format=auto or medgpt_oss")
    return ("llava", None) if reason is None else ("medgpt_oss", reason)


def export_vlm(
    vlm: Any,
    model_cfg: dict[str, Any],
    out: str | Path,
    merge_lora: bool = True,
    dtype: str | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
    format: str = "auto",
    max_tiles: int | None = None,
) -> Path:
    """Write ``vlm`` (a :class:`MedVLM` built from ``model_cfg``) as a transformers folder.

    A LoRA-wrapped LLM is merged into its base weights (``merge_lora=True``) or saved as a
    separate adapter in ``<out>/lora_adapter`` next to the base weights. Either way ``vlm``'s
    LLM is unwrapped in place, so pass a model you do not train further. ``max_tiles``: the
    training run's ``data.max_tiles`` (a tiled model is not LLaVA).
    """
    from peft import PeftModel

    from medgpt_oss.models.export_config import ADAPTER_DIR

    target_dtype = _torch_dtype(dtype)
    fmt, not_llava = choose_format(vlm, format, merge_lora, max_tiles)
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
    source["format"] = fmt
    if fmt == "llava":
        _write_llava(vlm, out, source, target_dtype)
    else:
        _write_medgpt_oss(vlm, model_cfg, out, source, target_dtype, not_llava)
    return out


def _image_processor(vlm: Any):
    """transformers' twin of the training image transform (the data side owns both)."""
    from medgpt_oss.data.images import ImageTransform

    encoder = vlm.encoder
    return ImageTransform(encoder.image_size, encoder.image_mean, encoder.image_std).hf_image_processor()


def _write_llava(vlm: Any, out: Path, source: dict[str, Any], dtype: Any) -> None:
    from medgpt_oss.models.llava import build_llava, llava_processor

    model, state = build_llava(vlm, provenance={"chat": vlm.llm.chat.to_dict(), "source": source})
    model.load_state_dict(_cast(model, state, dtype), strict=True, assign=True)
    model.config.dtype = dtype or vlm.llm.model.get_input_embeddings().weight.dtype
    model.save_pretrained(out)
    llava_processor(vlm, _image_processor(vlm)).save_pretrained(out)
    (out / "README.md").write_text(model_card(vlm, source))


def _write_medgpt_oss(vlm: Any, model_cfg: dict[str, Any], out: Path, source: dict[str, Any], dtype: Any,
                      not_llava: str | None) -> None:
    import torch
    from transformers import initialization as hf_init

    from medgpt_oss.harmony import chat_template
    from medgpt_oss.models.export_config import ADAPTER_DIR, config_from_vlm
    from medgpt_oss.models.export_model import MedVLMForConditionalGeneration

    config = config_from_vlm(vlm, model_cfg, source=source)
    # Built on the meta device (no memory, no init), then given the trained tensors themselves:
    # a strict load proves that every weight name lines up with what the loader will build.
    with torch.device("meta"), hf_init.meta_device_safe_creation_ops():
        model = MedVLMForConditionalGeneration(config)
    model.load_state_dict(_cast(model, vlm.state_dict(), dtype), strict=True, assign=True)
    model.config.dtype = dtype or vlm.llm.model.get_input_embeddings().weight.dtype
    model.save_pretrained(out)

    tokenizer = copy.deepcopy(vlm.tokenizer)
    # A bare tokenizer (no processor) writes each image's whole token run itself.
    tokenizer.chat_template = chat_template(vlm.llm.chat, image_text=config.image_token * config.tokens_per_image)
    tokenizer.save_pretrained(out)
    _image_processor(vlm).save_pretrained(out)
    (out / "README.md").write_text(model_card(vlm, source, adapter=(out / ADAPTER_DIR).is_dir(), not_llava=not_llava))


_LLAVA_USE = """```python
# transformers alone: no medgpt-oss install needed
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("<this folder>")
model = AutoModelForImageTextToText.from_pretrained("<this folder>")   # LlavaForConditionalGeneration
messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.open("cxr.png")}},
                                          {{"type": "text", "text": "Is there a pleural effusion?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=256)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:]))   # <|channel|>final<|message|>...<|return|>
```

The architecture is transformers' own `LlavaForConditionalGeneration` with a `{text_type}` text
model: the architecture that servers which load LLaVA checkpoints (vLLM, SGLang) know. medgpt-oss
tests the transformers path; serving in those tools is not tested by it."""

_MEDGPT_OSS_USE = """```python
import medgpt_oss.models.hf  # registers this model type with transformers' Auto classes (no trust_remote_code)
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

model = AutoModelForImageTextToText.from_pretrained("<this folder>"){load_adapter}
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
processor = AutoImageProcessor.from_pretrained("<this folder>")

messages = [{{"role": "user", "content": "<image>\\nIs there a nodule?"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                    return_tensors="pt")["input_ids"]
pixels = processor(images=[Image.open("cxr.png")], return_tensors="pt")["pixel_values"]
out = model.generate(ids, pixel_values=pixels, max_new_tokens=256)
print(tokenizer.decode(out[0, ids.shape[1]:]))   # <|channel|>final<|message|>...<|return|>
```

This model is not one of transformers' architectures ({why}), so it needs the `medgpt-oss`
package (`pip install medgpt-oss`); each `<image>` becomes {tokens} image tokens, in order."""


def model_card(vlm: Any, source: dict[str, Any], adapter: bool = False, not_llava: str | None = None) -> str:
    """The export's README.md; ``not_llava``: why the model is not written as LLaVA (``None``: it is)."""
    encoder, projector, chat = vlm.encoder, vlm.projector, vlm.llm.chat
    encoder_row = (f"`{encoder.pretrained_id}` (`{type(encoder).__name__}`, {encoder.image_size} px, "
                   f"feature layer {encoder.feature_layer})")
    lora = source.get("lora")
    lora_line = ("none" if not lora else f"rank {lora.get('rank')} on {lora.get('target_modules')}, "
                 + ("merged into the weights" if source.get("lora_merged") else "kept separate in `lora_adapter/`"))
    if not_llava is None:
        use = _LLAVA_USE.format(text_type=vlm.llm.model.config.model_type)
        architecture = "`LlavaForConditionalGeneration` (transformers)"
    else:
        load_adapter = "\nmodel.attach_lora_adapter()  # adds lora_adapter/" if adapter else ""
        use = _MEDGPT_OSS_USE.format(load_adapter=load_adapter, why=not_llava, tokens=vlm.tokens_per_image)
        architecture = "`MedVLMForConditionalGeneration` (medgpt-oss)"
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [medgpt-oss, medical, vision-language]
---

# MedGPT-oss export

A biomedical vision-language model trained with [medgpt-oss](https://arxiv.org/abs/2603.00842):
vision encoder -> projector -> LLM, images spliced into the text as runs of `{vlm.llm.image_token}`.

| part | base |
|---|---|
| architecture | {architecture} |
| vision encoder | {encoder_row} |
| projector | `{type(projector).__name__}` ({vlm.tokens_per_image} tokens per image) |
| LLM | `{source.get('llm_pretrained', '?')}` (`{vlm.llm.model.config.model_type}`) |
| LoRA | {lora_line} |

- stage: `{source.get('stage', '?')}` (scale `{source.get('scale', '?')}`)
- checkpoint: `{source.get('checkpoint', '?')}`

## Use

{use}

## Chat format

GPT-oss's harmony format as its official chat template writes it: a system message (`{chat.model_identity}`,
knowledge cutoff, `Current date: {chat.date}`, `Reasoning: {chat.reasoning_effort}`), an optional developer
`# Instructions` message, and answers in the `final` channel. The chat template defaults to the settings the
model trained with; pass `current_date=`, `reasoning_effort=` or `model_identity=` to `apply_chat_template` to
change them. A reply is read from its `final` channel.
"""


def export(
    ckpt: str | Path,
    out: str | Path,
    merge_lora: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
    format: str = "auto",
    trusted_targets: tuple[str, ...] = (),
) -> Path:
    """Export a stage checkpoint (any stage; the checkpoint names its class) to ``out``.

    ``trusted_targets``: classes outside this project the checkpoint may name (``medgpt_oss.trust``)."""
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"checkpoint '{ckpt}' does not exist; pass a stage checkpoint, "
            "e.g. ckpt=outputs/align/runs/<time>/checkpoints/last.ckpt"
        )
    _check_out(out, overwrite)  # fail before the (slow) model load
    _torch_dtype(dtype)
    if format not in FORMATS:
        raise ExportError(f"format='{format}': use one of {FORMATS}")
    from medgpt_oss.eval.generation import training_image_options
    from medgpt_oss.stages.base import load_stage

    stage = load_stage(str(ckpt_path), trusted_targets=trusted_targets)
    stage.eval()
    model_cfg = _plain(dict(stage.hparams["model"]))
    source = {
        "stage": f"{type(stage).__module__}.{type(stage).__qualname__}",
        "checkpoint": str(ckpt_path.resolve()),
        "encoder_pretrained": stage.vlm.encoder.pretrained_id,
        "llm_pretrained": stage.vlm.llm.pretrained_id,
        "scale": (model_cfg.get("llm") or {}).get("scale"),
    }
    max_tiles = training_image_options(ckpt_path).get("max_tiles")
    return export_vlm(stage.vlm, model_cfg, out, merge_lora=merge_lora, dtype=dtype, source=source,
                      overwrite=overwrite, format=format, max_tiles=max_tiles)


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
                     overwrite=cfg.get("overwrite", False), format=cfg.get("format", "auto"),
                     trusted_targets=tuple(cfg.get("trusted_targets") or ()))
    except (FileNotFoundError, ExportError, UntrustedCodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(describe_folder(out))


if __name__ == "__main__":
    main()
