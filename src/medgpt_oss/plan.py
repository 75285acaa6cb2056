"""Will this run fit? Build the full model on the meta device and estimate GPU memory per rank.

    python -m medgpt_oss.plan +stage=instruct lora=qlora_r16 data.max_length=4096 data.pack_length=4096
    python -m medgpt_oss.plan +stage=longctx lora=r16 data.max_length=65536 data.pack_length=65536 \\
        llm.activation_checkpointing=layers

Takes the train command's overrides (the same Hydra config, ``conf/train.yaml``, via ``conf/plan.yaml``).
No weights, no GPU, no data: the encoder and LLM are built at their real sizes on the meta device from
the architecture configs shipped in ``src/medgpt_oss/assets/architectures/`` (published config.json
values; a local weights folder's own config.json wins when present), LoRA is attached as train would,
and what ``lora.quantize`` would store in 4-bit is planned on that model (``models/quantize.py``).
Prints parameters per component, the quantized tensors and a memory estimate per rank with a verdict
for common cards; the last line is JSON. The formula is documented in ``docs/memory.md``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from medgpt_oss.config import CONF_DIR, available_stages
from medgpt_oss.contract import image_input

ASSETS = Path(__file__).resolve().parent / "assets" / "architectures"
GIB = 1024**3
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, None: 4}
SHARDED = ("fsdp", "fsdp_hybrid", "deepspeed_zero3")


# -- config ----------------------------------------------------------------------------------------------

def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="plan", overrides=overrides)


def architecture(pretrained: str) -> dict[str, Any]:
    """The architecture config of ``pretrained``: its local folder's config.json, else the shipped asset."""
    folder = Path(str(pretrained)).expanduser()
    for name in ("config.json", "open_clip_config.json"):
        if (folder / name).is_file():
            config = json.loads((folder / name).read_text())
            if name == "open_clip_config.json":
                vision = config.get("model_cfg", config)["vision_cfg"]
                return {"timm_model_name": vision["timm_model_name"], "image_size": vision.get("image_size", 224)}
            config = config.get("vision_config", config)
            config.pop("quantization_config", None)
            return config
    for path in sorted(ASSETS.glob("*.json")):
        config = json.loads(path.read_text())
        if str(pretrained) in config.get("_ids", []):
            return {k: v for k, v in config.items() if not k.startswith("_")}
    raise FileNotFoundError(
        f"no architecture config for '{pretrained}': neither a local folder with config.json nor one of "
        f"{sorted(p.stem for p in ASSETS.glob('*.json'))} in {ASSETS}"
    )


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# -- the model on the meta device -----------------------------------------------------------------------

def encoder_at_architecture(cfg: DictConfig) -> dict[str, Any]:
    """The encoder group built at the real architecture (:func:`architecture`) with no weights: its own class
    at ``scale=tiny``, the architecture as the tiny dict."""
    encoder_cfg = _plain(cfg.encoder)
    encoder_cfg.update(scale="tiny", tiny=architecture(encoder_cfg["pretrained"]))
    return encoder_cfg


def build_meta(cfg: DictConfig):
    """(MedVLM on meta, quantization plan or None): the real architecture, LoRA attached, nothing loaded."""
    import hydra

    from medgpt_oss.models.llm import LanguageModel
    from medgpt_oss.models.lora import LoraSettings
    from medgpt_oss.models.quantize import check_lora_quantize, quantization_plan
    from medgpt_oss.models.vlm import MedVLM

    lora = _plain(cfg.lora) if cfg.get("lora") else None
    targets = check_lora_quantize(LoraSettings.of(lora))  # the same refusals as train, without the CUDA check
    encoder_cfg = encoder_at_architecture(cfg)
    llm_cfg = _plain(cfg.llm)
    arch = architecture(llm_cfg["pretrained"])
    llm_cfg.pop("_target_")
    llm_cfg.update(scale="tiny", tiny=arch, attn_implementation="eager", activation_checkpointing=None, compile=None)
    with torch.device("meta"):
        encoder = hydra.utils.instantiate(encoder_cfg)
        llm = LanguageModel(**llm_cfg, lora={k: v for k, v in (lora or {}).items() if k != "quantize"} or None)
        projector = hydra.utils.instantiate(cfg.projector)(in_dim=encoder.hidden_size, out_dim=llm.hidden_size)
    vlm = MedVLM(encoder, projector, llm)
    stage = cfg.stage
    vlm.set_trainable(encoder=bool(stage.get("train_encoder", False)),
                      projector=bool(stage.get("train_projector", True)),
                      llm=bool(stage.get("train_llm", False)))
    plan = quantization_plan(llm.model, targets) if targets else None
    return vlm, plan


# -- the estimate ----------------------------------------------------------------------------------------

def _world(cfg: DictConfig) -> int:
    devices = cfg.trainer.get("devices", 1)
    n = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else (
        int(devices) if str(devices).isdigit() else 1)
    if cfg.strategy.get("sharding_strategy", "") == "HYBRID_SHARD":
        return n  # shards within a node only
    return n * int(cfg.trainer.get("num_nodes", 1) or 1)


def _strategy(cfg: DictConfig) -> str:
    target = str(cfg.strategy.get("_target_", cfg.strategy.get("name", "auto"))).lower()  # a class or factory
    if "fsdp" in target:
        return "fsdp_hybrid" if cfg.strategy.get("sharding_strategy") == "HYBRID_SHARD" else "fsdp"
    if "deepspeed" in target:
        return "deepspeed_zero3"
    return "ddp" if "ddp" in target else "auto"


def _checkpointing(cfg: DictConfig) -> str | None:
    if _strategy(cfg).startswith("fsdp") and cfg.strategy.get("checkpoint_model_blocks"):
        return "layers"  # FSDP recomputes every model block itself
    return cfg.llm.get("activation_checkpointing")


def llm_activation_bytes_per_token(arch: dict[str, Any], act_bytes: int, lora_modules: int,
                                   attention_context: int, quadratic: bool) -> dict[str, float]:
    """Bytes autograd keeps per token for one GPT-oss-like decoder layer (docs/memory.md, "activations").

    ``attention_context``: keys each query sees in the score matrix (eager: the sample length);
    ``quadratic``: whether the attention materialises scores (eager) or not (flex/sdpa/flash).
    """
    h = arch["hidden_size"]
    heads, kv, d = arch["num_attention_heads"], arch.get("num_key_value_heads", arch["num_attention_heads"]), \
        arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    q_dim, kv_dim = heads * d, kv * d
    inter = arch["intermediate_size"]
    experts, top_k = arch.get("num_local_experts", 0), arch.get("num_experts_per_tok", 1)
    norm = 4 * h + 4 * h  # RMSNorm upcasts: fp32 input + fp32 normalized
    # q/k/v/o inputs, q/k/v outputs, RoPE copies of q and k, keys/values repeated to all query heads
    attn = norm + act_bytes * (h + 3 * q_dim + 3 * kv_dim + 2 * q_dim + q_dim)
    attn += lora_modules * (act_bytes + 1) * h  # each adapted projection: dropout output + mask
    scores = 4 * heads * attention_context if quadratic else 4 * heads  # softmax probs (+ max/logsumexp)
    if experts:  # per routed copy: gate_up out 2I, clamp/sigmoid/GLU intermediates 5I, expert output H
        mlp = norm + act_bytes * h + top_k * act_bytes * (7 * inter + h) + 8 * experts
    else:  # dense gated MLP: gate, up, act, product
        mlp = norm + act_bytes * (h + 4 * inter)
    return {"attention": attn + scores, "mlp": mlp, "layer_input": act_bytes * h}


def estimate(cfg: DictConfig, vlm, qplan) -> dict[str, Any]:
    """GiB per rank by part. Every term is in docs/memory.md."""
    from medgpt_oss.models.quantize import logical_numel

    strategy, world = _strategy(cfg), _world(cfg)
    shard = world if strategy in SHARDED else 1
    llm_arch = architecture(cfg.llm.pretrained)
    llm_dtype = BYTES[cfg.llm.get("dtype")]
    enc_dtype = BYTES[cfg.encoder.get("dtype")]
    lora = cfg.get("lora") or {}
    mixed = "bf16" in str(cfg.trainer.get("precision", "32"))
    act = 2 if (mixed or llm_dtype == 2) else 4

    # weights, gradients, optimizer state (AdamW m + v in the trained weights' dtype; no extra master copy:
    # torch's AdamW updates the stored weights, fp32 for LoRA adapters and the projector)
    parts: dict[str, Any] = {}
    weights = grads = optim = 0.0
    for name in ("encoder", "projector", "llm"):
        module = getattr(vlm, name)
        total = logical_numel(module) if name == "llm" else sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen_bytes = {"encoder": enc_dtype, "projector": 4, "llm": llm_dtype}[name]
        train_bytes = 4 if name != "llm" or lora else llm_dtype
        quantized = qplan.quantized if (name == "llm" and qplan) else 0
        w = (total - trainable - quantized) * frozen_bytes / shard + trainable * train_bytes / shard
        if quantized:
            w += qplan.storage_bytes()  # 4-bit buffers are not sharded by FSDP (docs/memory.md)
        weights += w
        grads += trainable * train_bytes / shard
        optim += 2 * trainable * train_bytes / shard
        parts[name] = {"total": total, "trainable": trainable, "quantized": quantized,
                       "weights_gib": w / GIB}

    # activations of the LLM
    data = cfg.data
    row = int(data.get("pack_length") or data.get("max_length"))
    rows = int(data.get("pack_rows") or 1) if data.get("pack_length") else int(data.get("batch_size") or 1)
    sample = min(int(data.get("max_length") or row), row)
    tokens = rows * row
    layers = llm_arch["num_hidden_layers"]
    attn_impl = str(cfg.llm.get("attn_implementation") or "eager")
    quadratic = attn_impl.startswith("eager")
    lora_modules = len([m for m in lora.get("target_modules") or [] if m.endswith("proj")]) if lora else 0
    per = llm_activation_bytes_per_token(llm_arch, act, lora_modules, sample, quadratic)
    full_layer = per["attention"] + per["mlp"]
    mode = _checkpointing(cfg)
    if not mode:
        saved = layers * full_layer
        working = 0.0
    elif mode == "layers" or mode.startswith("every_"):
        k = 1 if mode == "layers" else int(mode.split("_")[1])
        recomputed = math.ceil(layers / k)
        saved = recomputed * per["layer_input"] + (layers - recomputed) * full_layer
        working = full_layer  # one layer's activations rebuilt in backward
    elif mode == "attention":
        saved = layers * (per["mlp"] + per["layer_input"])
        working = per["attention"]
    else:  # moe
        saved = layers * (per["attention"] + per["layer_input"])
        working = per["mlp"]
    grad_buffers = 3 * act * llm_arch["hidden_size"]  # gradient of the residual stream + its copies
    activations = tokens * (saved + working + grad_buffers)

    # the output head's loss: chunk of logits (bf16 head output, fp32 copy, log-softmax, its gradient)
    vocab = llm_arch["vocab_size"]
    chunk = cfg.llm.get("loss_chunk_size")
    loss_tokens = min(int(chunk), tokens) if chunk else tokens
    loss = loss_tokens * vocab * (act + 12) + tokens * act * llm_arch["hidden_size"]
    if qplan and "lm_head" in qplan.targets:
        loss += vocab * llm_arch["hidden_size"] * act  # the head dequantized for each chunk

    # vision tower + projector
    enc = vlm.encoder
    image = image_input(encoder_at_architecture(cfg), cfg.projector)  # the model contract (contract.py)
    images = rows * int(cfg.plan.get("images_per_row", 4))
    patches = image.patch_tokens + 1
    enc_arch = architecture(cfg.encoder.pretrained)
    enc_hidden = enc.hidden_size
    enc_mlp = enc_arch.get("intermediate_size", 4 * enc_hidden)
    enc_layer = patches * (enc_dtype * (6 * enc_hidden + 2 * enc_mlp))
    trains_encoder = any(p.requires_grad for p in enc.parameters())
    vision = images * enc_layer * (enc.num_layers if trains_encoder else 1)
    proj_out = vlm.projector_out_dim if hasattr(vlm, "projector_out_dim") else vlm.llm.hidden_size
    vision += images * image.tokens_per_image * (4 * enc_hidden + 12 * proj_out)

    # 4-bit experts dequantized one at a time (forward and backward): one expert's weights in compute dtype
    dequant = 0.0
    if qplan and "experts" in qplan.targets:
        h, inter = llm_arch["hidden_size"], llm_arch["intermediate_size"]
        dequant = 2 * 3 * h * inter * act

    # FSDP gathers one wrap unit (a decoder layer) at a time, and prefetches the next
    gathered = 0.0
    if shard > 1:
        per_layer = (parts["llm"]["total"] - parts["llm"]["quantized"] - 2 * vocab * llm_arch["hidden_size"]) / layers
        gathered = 2 * per_layer * act

    overhead = float(cfg.plan.get("overhead_gib", 1.0)) * GIB
    frag = float(cfg.plan.get("fragmentation", 0.1)) * (activations + loss + vision)
    memory = {
        "weights": weights, "gradients": grads, "optimizer": optim, "activations": activations,
        "loss_chunk": loss, "vision": vision, "dequant_buffers": dequant, "fsdp_gathered": gathered,
        "overhead": overhead + frag,
    }
    total = sum(memory.values())
    return {
        "strategy": strategy, "world": world, "shard": shard, "tokens_per_row": row, "rows": rows, "sample": sample,
        "attn_implementation": attn_impl, "activation_checkpointing": mode, "loss_chunk_size": chunk,
        "images": images, "parts": parts, "memory_gib": {k: v / GIB for k, v in memory.items()},
        "total_gib": total / GIB,
    }


def verdicts(total_gib: float, cards: dict[str, float]) -> dict[str, str]:
    out = {}
    for card, usable in cards.items():
        out[card] = "fits" if total_gib <= 0.9 * usable else ("tight" if total_gib <= usable else "does not fit")
    return out


# -- the command -----------------------------------------------------------------------------------------

def run(overrides: list[str]) -> dict[str, Any]:
    cfg = compose(overrides)
    if cfg.get("stage") is None:
        raise SystemExit("No stage chosen. Add one of: " + ", ".join(f"+stage={s}" for s in available_stages()))
    with open_dict(cfg):
        cfg.scale = "full"
    vlm, qplan = build_meta(cfg)
    report = estimate(cfg, vlm, qplan)
    llm_total = report["parts"]["llm"]["total"]
    report["quantized_fraction"] = qplan.fraction if qplan else 0.0
    report["quantized_by_target"] = qplan.by_target() if qplan else {}
    report["verdicts"] = verdicts(report["total_gib"], dict(cfg.plan.cards_gib))
    report["summary"] = {
        "llm_total_params": llm_total,
        "total_params": sum(p["total"] for p in report["parts"].values()),
        "trainable_params": sum(p["trainable"] for p in report["parts"].values()),
        "quantized_params": qplan.quantized if qplan else 0,
        "quantized_fraction": round(report["quantized_fraction"], 6),
        "estimated_gib_per_rank": round(report["total_gib"], 2),
        "verdicts": report["verdicts"],
    }
    return report


def render(report: dict[str, Any], overrides: list[str]) -> str:
    lines = [f"plan: {' '.join(overrides)}", "",
             (f"{'component':<10} {'total':>16} {'trainable':>14} {'4-bit':>16} {'weights GiB':>12}")]
    for name, p in report["parts"].items():
        lines.append(f"{name:<10} {p['total']:>16,} {p['trainable']:>14,} {p['quantized']:>16,} "
                     f"{p['weights_gib']:>12.2f}")
    if report["quantized_by_target"]:
        by = ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in report["quantized_by_target"].items())
        lines.append(f"4-bit NF4: {by} = {report['quantized_fraction']:.2%} of the LLM's parameters")
    else:
        lines.append("4-bit: nothing (lora.quantize is null)")
    lines += ["", (f"per rank: strategy={report['strategy']} world={report['world']} (weights/grads/optimizer "
                   f"sharded over {report['shard']}), rows={report['rows']} x {report['tokens_per_row']} tokens, "
                   f"attention={report['attn_implementation']}, checkpointing={report['activation_checkpointing']}, "
                   f"loss_chunk={report['loss_chunk_size']}, images={report['images']}")]
    for key, gib in report["memory_gib"].items():
        lines.append(f"  {key:<16} {gib:8.2f} GiB")
    lines.append(f"  {'total':<16} {report['total_gib']:8.2f} GiB")
    lines.append("  " + "; ".join(f"{card}: {v}" for card, v in report["verdicts"].items()))
    lines.append(json.dumps(report["summary"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        report = run(overrides)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(render(report, overrides))


if __name__ == "__main__":
    main()
