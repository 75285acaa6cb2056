"""What a checkpoint's model was built from, and whether this run builds the same one.

A stage checkpoint already holds the model's config in ``hyper_parameters["model"]``: each component's
class (``_target_``), pretrained id, tiny config, ``init_seed``, dtype, the LoRA config and the tokenizer
path. :func:`record` adds what the config alone cannot pin down (``checkpoint["provenance"]``): the
tokenizer's contents (size, hash of its vocabulary, image token id), a fingerprint of every frozen base
weight (a hash of a strided sample of each tensor, under its LoRA-free name) and the library versions.

:func:`check` compares a checkpoint with the model this run built, before any weight is loaded:

* ``resume`` (``ckpt_path=``): the model must be the one the checkpoint saved -- every ``encoder``,
  ``projector``, ``llm`` (chat settings included) and ``lora`` setting, the stage class and its ``train_*``
  switches. Settings a model does not use are not compared (``tiny`` and ``init_seed`` at full scale, dtype
  at tiny scale). Settings that change how the same model runs pass: ``llm.attn_implementation``,
  ``llm.loss_chunk_size``, ``llm.activation_checkpointing``, ``llm.compile``; so does everything outside the
  model: steps, epochs, learning rates and schedule, logger, callbacks, strategy. (The data module checks
  its own settings on resume: ``seed``, batch and packing settings.)
* ``init_from`` (next stage): encoder, projector and LLM architecture, pretrained ids, tokenizer and image
  token must match, and ``init_seed`` where the frozen weights come from it (``scale=tiny``). A new LoRA
  config is expected and passes, as do dtype, chat settings, the stage's ``train_*`` switches and the
  execution switches above.

A difference stops the run with one line per difference naming the checkpoint's value, this run's, and
the override that restores it (``add encoder=clip``, ``add init_seed=0``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from medgpt_oss.config import CONF_DIR, MODEL_GROUPS, group_options, load_option
from medgpt_oss.stages.handoff import is_adapter, plain_name
from medgpt_oss.trust import HPARAMS_KEYS

RESUME, INIT_FROM = "resume", "init_from"
PROVENANCE_KEY = "provenance"
# Same model, other kernels or memory trade-offs: never a difference.
EXECUTION_KEYS = {"llm.attn_implementation", "llm.loss_chunk_size", "llm.activation_checkpointing", "llm.compile"}
# Top-level settings the component configs take by interpolation (conf/encoder/*.yaml: init_seed: ${init_seed}).
TOP_LEVEL = {"init_seed", "scale"}
IDENTITY = {"encoder": ("_target_", "pretrained"), "llm": ("_target_", "pretrained"), "projector": ("_target_",),
            "lora": None}
SAMPLES = 256


class ModelMismatchError(ValueError):
    """A checkpoint was trained on another model than this run builds (the message lists what differs)."""


# -- what is recorded ------------------------------------------------------------------------------

def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8", "surrogatepass")).hexdigest()
    return {"size": len(tokenizer), "sha256": digest}


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """``dtype|shape|hash`` of a strided sample of the tensor (cheap even for a 20B model's weights)."""
    flat = tensor.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // SAMPLES)][:SAMPLES].float().cpu().contiguous()
    digest = hashlib.blake2b(sample.numpy().tobytes(), digest_size=8).hexdigest()
    return f"{str(tensor.dtype).removeprefix('torch.')}|{'x'.join(map(str, tensor.shape))}|{digest}"


def record(vlm: Any) -> dict[str, Any]:
    """Computed when a stage is built (its components frozen or not), before any checkpoint or previous stage is
    loaded into it."""
    import peft
    import transformers

    # Frozen weights only: those a checkpoint does not hold and a reload must rebuild identically.
    weights = {plain_name(f"vlm.{name}"): tensor_fingerprint(p) for name, p in vlm.named_parameters()
               if not p.requires_grad and not is_adapter(name)}
    return {
        "version": 1,
        "tokenizer": {**tokenizer_fingerprint(vlm.llm.tokenizer), "image_token_id": int(vlm.image_token_id)},
        "base_weights": weights,
        "libraries": {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
                      "peft": str(peft.__version__)},  # plain strings: checkpoints load weights_only
    }


# -- comparing -------------------------------------------------------------------------------------

def hyper_parameters(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    for key in HPARAMS_KEYS:
        if checkpoint.get(key):
            return dict(checkpoint[key])
    return {}


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out or {prefix: {}}
    return {prefix: list(node) if isinstance(node, tuple) else node}


def _fmt(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[\w./:@+\-]+", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else _fmt(value)


_MISSING = object()


def _refused(path: str, mode: str, saved_model: Mapping[str, Any]) -> bool:
    group, _, key = path.partition(".")
    if path in EXECUTION_KEYS or path == "lora._target_":  # the class LoRA settings are read into (older
        return False                                         # checkpoints name none), not a setting of the model
    component = saved_model.get(group) or {}
    tiny = component.get("scale") == "tiny" if isinstance(component, Mapping) else False
    if key == "init_seed":  # only random tiny weights come from it (full-scale added rows are saved)
        return tiny
    if key.startswith("tiny.") or key == "tiny":  # ignored at full scale
        return tiny
    if key == "dtype":  # how full-scale weights are loaded (tiny models ignore it); a new stage may change it
        return not tiny and mode == RESUME
    # A next stage may choose its own LoRA and chat settings.
    return not (mode == INIT_FROM and (group == "lora" or key == "chat" or key.startswith("chat.")))


def _option_config(group: str, option: str, current: Mapping[str, Any] | None) -> Any:
    """conf/<group>/<option>.yaml as this run would resolve it (interpolations take this run's values)."""
    raw = load_option(group, option)
    if not raw:
        return None

    def walk(node: Any, here: Any) -> Any:
        if OmegaConf.is_dict(node):
            out = {}
            for key in node:
                value = node._get_node(key)
                sub = here.get(key, _MISSING) if isinstance(here, Mapping) else _MISSING
                if OmegaConf.is_interpolation(node, key):
                    out[key] = sub
                else:
                    out[key] = walk(value, sub)
            return out
        if OmegaConf.is_list(node):
            return OmegaConf.to_container(node, resolve=False)
        return node._value() if hasattr(node, "_value") else node

    resolved = walk(raw, current or {})
    return {k: v for k, v in resolved.items() if v is not _MISSING}


def _identity(group: str, config: Any) -> Any:
    if not isinstance(config, Mapping):
        return None
    keys = IDENTITY[group]
    return {k: config.get(k) for k in keys} if keys else config


def _diffs(saved: Any, current: Any, group: str) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(saved, group) if saved else {group: None}, _flatten(current, group) if current else {group: None}
    if (group in a) != (group in b):  # one side has no config at all (lora: null)
        return {group: (saved, current)}
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, _MISSING) != b.get(k, _MISSING)}


def _matching_option(group: str, config: Any, current: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """The conf/<group> option that builds ``config`` (its identity; fewest remaining differences)."""
    best = None
    for option in group_options(group):
        predicted = _option_config(group, option, current)
        if group == "lora":
            if not config and not predicted:
                return option, None
            if not config or not predicted:
                continue
            remaining = len(_diffs(config, predicted, group))
        else:
            if _identity(group, predicted) != _identity(group, config):
                continue
            remaining = len(_diffs(config, predicted, group))
        if best is None or remaining < best[0]:
            best = (remaining, option, predicted)
    return None if best is None else (best[1], best[2])


def option_name(group: str, config: Any) -> str | None:
    """The conf/<group> option that gives exactly ``config`` (interpolated values aside), if one does."""
    found = _matching_option(group, config, config if isinstance(config, Mapping) else {})
    return found[0] if found and not _diffs(config, found[1], group) else None


def _label(group: str, config: Any, current: Mapping[str, Any] | None) -> str:
    found = _matching_option(group, config, current)
    if found and (group != "lora" or not _diffs(config, found[1], group)):
        return found[0]
    if not isinstance(config, Mapping):
        return "none"
    target = str(config.get("_target_", "")).rpartition(".")[2]
    return " ".join(str(x) for x in (target, config.get("pretrained")) if x) or _fmt(config)


def _override(path: str, saved: Any, run_has: bool) -> str:
    if saved is _MISSING:
        return f"~{path}"
    return f"{'' if run_has else '+'}{path}={_fmt(saved)}"


def _config_lines(saved_model: Mapping[str, Any], run_model: Mapping[str, Any], mode: str) -> list[str]:
    lines: list[str] = []
    top: dict[str, tuple[Any, Any, set[str]]] = {}
    for group in MODEL_GROUPS:
        saved, current = saved_model.get(group), run_model.get(group)
        diffs = {p: d for p, d in _diffs(saved, current, group).items() if _refused(p, mode, saved_model)}
        if not diffs:
            continue
        if _identity(group, saved) != _identity(group, current) or group == "lora":
            found = _matching_option(group, saved, current if isinstance(current, Mapping) else {})
            if found is not None:
                option, predicted = found
                refused = {p: d for p, d in _diffs(saved, predicted, group).items() if _refused(p, mode, saved_model)}
                already = not {p for p in _diffs(predicted, current, group) if _refused(p, mode, saved_model)}
                if not already:  # the run uses another option: name it, then what the option alone leaves different
                    lines.append(f"{group}: checkpoint {_label(group, saved, current)}, this run "
                                 f"{_label(group, current, current)} -> add {group}={option}")
                    given = _flatten(predicted, group) if predicted else {}
                    for path, (was, now) in refused.items():
                        if path.partition(".")[2] in TOP_LEVEL:
                            top.setdefault(path.partition(".")[2], (was, now, set()))[2].add(path)
                            continue
                        lines.append(f"{path}: checkpoint {_show(was)}, {group}={option} gives {_show(now)} -> add "
                                     f"{_override(path, was, path in given)}")
                    continue
        for path, (was, now) in diffs.items():
            key = path.partition(".")[2]
            if key in TOP_LEVEL:
                top.setdefault(key, (was, now, set()))[2].add(path)
                continue
            if path.startswith("llm.chat."):
                path = path[len("llm."):]
            lines.append(f"{path}: checkpoint {_show(was)}, this run {_show(now)} -> add "
                         f"{_override(path, was, now is not _MISSING)}")
    for key, (was, now, paths) in top.items():
        # Both components take it from the top-level setting (conf/encoder/*.yaml, conf/llm/*.yaml): restore that.
        same = paths == {f"encoder.{key}", f"llm.{key}"} and all(
            (saved_model.get(p.partition(".")[0]) or {}).get(key) == was for p in paths)
        if same:
            lines.append(f"{key}: checkpoint {_show(was)}, this run {_show(now)} -> add {key}={_fmt(was)}")
        else:
            lines += [f"{p}: checkpoint {_show(was)}, this run {_show(now)} -> add {p}={_fmt(was)}" for p in paths]
    return lines


def _stage_option(stage_class: str) -> str | None:
    for option in sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml")):
        raw = OmegaConf.load(CONF_DIR / "stage" / f"{option}.yaml")
        if OmegaConf.select(raw, "stage._target_") == stage_class:
            return option
    return None


def _stage_lines(checkpoint: Mapping[str, Any], saved_hp: Mapping[str, Any], stage: Any) -> list[str]:
    lines = []
    mine = f"{type(stage).__module__}.{type(stage).__qualname__}"
    theirs = checkpoint.get("stage_class")
    if theirs and theirs != mine:
        option = _stage_option(theirs)
        lines.append(f"stage: checkpoint {_stage_option(theirs) or theirs}, this run {_stage_option(mine) or mine} "
                     f"-> {'use +stage=' + option if option else 'use the stage that wrote it'}")
        return lines
    for key in ("train_encoder", "train_projector", "train_llm"):
        if key in saved_hp and key in stage.hparams and saved_hp[key] != stage.hparams[key]:
            lines.append(f"stage.{key}: checkpoint {_fmt(saved_hp[key])}, this run {_fmt(stage.hparams[key])} "
                         f"-> add stage.{key}={_fmt(saved_hp[key])}")
    return lines


def _recorded_lines(saved: Mapping[str, Any], mine: Mapping[str, Any], checkpoint_state: Mapping[str, Any],
                    configured: set[str]) -> list[str]:
    """Differences the configs do not show: tokenizer files, base weights (same config, other files/libraries)."""
    lines = []
    tok_a, tok_b = saved.get("tokenizer"), mine.get("tokenizer")
    if tok_a and tok_b and tok_a != tok_b and "llm" not in configured:
        lines.append(f"tokenizer: checkpoint {tok_a['size']} tokens (vocab sha256 {tok_a['sha256'][:12]}, image "
                     f"token {tok_a.get('image_token_id')}), this run {tok_b['size']} tokens (sha256 "
                     f"{tok_b['sha256'][:12]}, image token {tok_b.get('image_token_id')}) with the same llm.tokenizer "
                     "setting: the tokenizer files changed; point llm.tokenizer at the ones the checkpoint used")
    weights_a, weights_b = saved.get("base_weights") or {}, mine.get("base_weights") or {}
    handed = {plain_name(k) for k in checkpoint_state}
    by_component: dict[str, list[str]] = {}
    for name, fp in weights_a.items():
        other = weights_b.get(name)
        if name in handed or other is None or fp == other or fp.split("|")[0] != other.split("|")[0]:
            continue  # in the checkpoint itself, unknown here, equal, or another dtype (checked by config)
        component = name.split(".")[1]
        by_component.setdefault(component, []).append(name)
    libs = saved.get("libraries") or {}
    for component, names in by_component.items():
        if component in configured:
            continue  # its config differences explain it
        lines.append(f"{component} weights: {len(names)} frozen tensors the checkpoint relies on differ from what this "
                     f"run builds with the same config (e.g. {names[0]}): the pretrained files or the library that "
                     f"builds them changed since (checkpoint written with "
                     f"{', '.join(f'{k} {v}' for k, v in libs.items()) or 'unknown versions'})")
    return lines


def check(checkpoint: Mapping[str, Any], stage: Any, mode: str, path: Any) -> None:
    """Raise :class:`ModelMismatchError` when ``checkpoint`` was trained on another model than ``stage``'s."""
    saved_hp = hyper_parameters(checkpoint)
    saved_model = saved_hp.get("model") or {}
    run_model = dict(stage.hparams.get("model") or {})
    lines = []
    if mode == RESUME:
        lines += _stage_lines(checkpoint, saved_hp, stage)
    lines += _config_lines(saved_model, run_model, mode) if saved_model else []
    configured = {line.split(":", 1)[0].split(".")[0] for line in lines}
    if "init_seed" in configured or "scale" in configured:
        configured |= {"encoder", "llm"}
    recorded = checkpoint.get(PROVENANCE_KEY)
    mine = getattr(stage, "provenance", None)
    if recorded and mine:
        lines += _recorded_lines(recorded, mine, checkpoint.get("state_dict") or {}, configured)
    if not lines:
        return
    what = "ckpt_path" if mode == RESUME else "init_from"
    tail = ("A resumed run rebuilds the model the checkpoint saved; to start a different model from these weights "
            f"use init_from={path} instead." if mode == RESUME else
            "The next stage must build the model the previous stage trained (its LoRA settings may change).")
    raise ModelMismatchError(f"{what} '{path}' was trained on another model than this run builds:\n  "
                             + "\n  ".join(lines) + "\n" + tail)


