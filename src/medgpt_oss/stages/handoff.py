"""Moving weights from one stage's checkpoint into the next stage's model, whatever LoRA each uses.

A stage checkpoint names its LLM weights the way its own model did: plain transformers names
(``vlm.llm.model.model.layers.0.self_attn.q_proj.weight``) without LoRA, peft's wrapped names with it
(``vlm.llm.model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` for the base weight,
``...q_proj.lora_A.default.weight`` for an adapter). The next stage may use no LoRA, the same or another.
Every name is brought to its *plain* form (:func:`plain_name`) and mapped onto this model's own name for the
same weight, so full weights land in the base model under (or without) the new adapters. The previous
stage's adapters are either

* ``merge`` (default): folded into the base weights with peft's own delta (``scaling * B @ A``, and the
  expert-parameter form for ``lora.target_parameters``), computed on a meta-device copy of the
  architecture that holds only the adapters, so the base model is never copied; or
* ``keep``: loaded as this stage's adapters, which then continue training (needs the same LoRA shape).

:func:`read_previous_stage` is the whole hand-off: the checkpoint read, checked and brought to this model.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medgpt_oss.models.lora import LoraSettings
from medgpt_oss.stages.checkpoint_state import ADDED_ROWS_KEY
from medgpt_oss.trust import load_checkpoint

HANDOFF_LORA = ("merge", "keep")
LLM_PREFIX = "vlm.llm.model."
_PEFT_ROOT = "base_model.model."
# What must match for adapters to be kept as they are (dropout only changes training noise).
LORA_SHAPE_KEYS = ("rank", "alpha", "target_modules", "target_parameters")


def is_adapter(name: str) -> bool:
    return ".lora_" in name


def plain_name(name: str) -> str:
    """The name a weight has in the model without LoRA: peft's root and ``base_layer`` wrappers removed."""
    if not name.startswith(LLM_PREFIX):
        return name
    rest = name[len(LLM_PREFIX):]
    rest = rest.removeprefix(_PEFT_ROOT)
    return LLM_PREFIX + re.sub(r"(?:^|(?<=\.))base_layer\.", "", rest)


def lora_shape(lora: dict[str, Any] | None) -> dict[str, Any] | None:
    if not lora:
        return None
    return {"rank": lora["rank"], "alpha": lora.get("alpha", 2 * lora["rank"]),
            "target_modules": list(lora.get("target_modules") or []),
            "target_parameters": list(lora.get("target_parameters") or [])}


def lora_deltas(hf_config: Any, lora: dict[str, Any], adapters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each adapted weight's delta, by plain name, from a checkpoint's adapter tensors.

    peft wraps a meta-device build of the architecture (no memory for base weights) with the previous
    stage's LoRA config; its layers get the checkpoint's ``lora_A``/``lora_B`` and compute their own delta.
    """
    from peft import get_peft_model
    from peft.tuners.lora.layer import LoraLayer
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(copy.deepcopy(hf_config))
    skeleton = get_peft_model(skeleton, LoraSettings.of(lora).peft_config(dropout=0.0))  # merging only: no dropout
    used, deltas = set(), {}
    for name, module in skeleton.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        for factor in ("lora_A", "lora_B"):
            key = f"{LLM_PREFIX}{name}.{factor}.default.weight"
            if key not in adapters:
                raise KeyError(f"the previous stage's checkpoint lacks adapter weight {key}")
            getattr(module, factor)["default"].weight = nn.Parameter(adapters[key].detach(), requires_grad=False)
            used.add(key)
        if hasattr(module, "parameter_name"):  # an expert parameter: the delta takes its dtype (from the meta base)
            dtype = module.get_param().dtype
            module.get_param = lambda dtype=dtype: torch.empty(0, dtype=dtype)
            target = f"{name}.{module.parameter_name}"
        else:
            target = f"{name}.weight"
        with torch.no_grad():
            deltas[plain_name(LLM_PREFIX + target)] = module.get_delta_weight("default").detach()
    unused = sorted(set(adapters) - used)
    if unused:
        raise KeyError(f"{len(unused)} adapter weights of the previous stage match no layer its LoRA config "
                       f"wraps, e.g. {unused[:3]}")
    return deltas


def handoff_state(checkpoint_state: dict[str, torch.Tensor], own_state: dict[str, torch.Tensor], *,
                  previous_lora: dict[str, Any] | None, own_lora: dict[str, Any] | None, mode: str,
                  hf_config: Any, ckpt_path: str, lora_option: str | None = None) -> dict[str, torch.Tensor]:
    """What to load into this model (its own names) from a previous stage's checkpoint ``state_dict``."""
    if mode not in HANDOFF_LORA:
        raise ValueError(f"stage.handoff_lora must be one of {HANDOFF_LORA}, got {mode!r}")
    index = {plain_name(k): k for k in own_state if not is_adapter(k)}
    adapters = {k: v for k, v in checkpoint_state.items() if is_adapter(k)}
    base = {plain_name(k): v for k, v in checkpoint_state.items() if not is_adapter(k)}
    unknown = sorted(k for k in base if k not in index)
    if unknown:
        raise KeyError(
            f"init_from '{ckpt_path}' has {len(unknown)} weights this model lacks, e.g. {unknown[:3]}; "
            "use the same encoder/projector/llm choices as the previous stage"
        )
    out = {index[k]: v for k, v in base.items()}
    if not adapters:
        return out
    if mode == "keep":
        if lora_shape(previous_lora) != lora_shape(own_lora):
            restore = f"lora={lora_option}" if lora_option else "the previous stage's lora settings"
            raise ValueError(
                f"stage.handoff_lora=keep continues the previous stage's adapters, so this stage needs its LoRA "
                f"shape {lora_shape(previous_lora)}, not {lora_shape(own_lora)}: add {restore}, or "
                "stage.handoff_lora=merge to fold them into the base weights")
        missing = sorted(k for k in adapters if k not in own_state)
        if missing:
            raise KeyError(f"init_from '{ckpt_path}' has adapters this model lacks, e.g. {missing[:3]}")
        return {**out, **adapters}
    if not previous_lora:
        raise ValueError(f"init_from '{ckpt_path}' holds LoRA adapters but its config names no lora settings")
    for name, delta in lora_deltas(hf_config, previous_lora, adapters).items():
        if name not in index:
            raise KeyError(f"the previous stage adapted {name}, which this model lacks")
        own_name = index[name]
        weight = base.get(name, own_state[own_name])  # handed over by the checkpoint, else this model's base weight
        if weight.shape != delta.shape:
            raise ValueError(f"adapter delta {tuple(delta.shape)} does not fit {name} {tuple(weight.shape)}")
        out[own_name] = (weight.detach().float() + delta.float().to(weight.device)).to(weight.dtype)
    return out


def read_previous_stage(ckpt_path: str, stage: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What ``stage`` starts from: the weights the stage at ``ckpt_path`` trained or received (its checkpoint holds
    only those) under this model's own names, and the embedding rows its LLM added.

    The checkpoint must come from the same model (:func:`medgpt_oss.provenance.check`), before any weight moves.
    """
    from medgpt_oss import provenance  # at call time: provenance reads weight names with this module's helpers

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from checkpoint '{ckpt_path}' does not exist")
    checkpoint = load_checkpoint(path)  # weights only: a pickle payload is refused, naming the file
    provenance.check(checkpoint, stage, provenance.INIT_FROM, ckpt_path)
    previous_lora = (provenance.hyper_parameters(checkpoint).get("model") or {}).get("lora")
    llm = stage.vlm.llm
    trained_llm = [k for k in checkpoint["state_dict"] if k.startswith(LLM_PREFIX)]
    if trained_llm and (llm.lora_config or {}).get("quantize"):
        # 4-bit base weights can take neither trained weights nor merged adapters.
        raise ValueError(f"init_from '{ckpt_path}' trained the LLM ({len(trained_llm)} weights, e.g. "
                         f"{trained_llm[0]}), and this stage stores it in 4-bit (lora.quantize), which cannot "
                         "take trained weights or merge adapters: train this stage with a bf16 base (e.g. "
                         "lora=r16), or start QLoRA from a stage that kept the LLM frozen")
    state = handoff_state(
        checkpoint["state_dict"], stage.state_dict(), previous_lora=previous_lora,
        own_lora=llm.lora_config, mode=stage.handoff_lora, hf_config=llm.model.config,
        ckpt_path=str(ckpt_path), lora_option=provenance.option_name("lora", previous_lora),
    )
    return state, checkpoint.get(ADDED_ROWS_KEY, {})
