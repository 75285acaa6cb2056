"""Training throughput of a curriculum stage against plain transformers + peft, in one process.

    python -m medgpt_oss.bench                                  # GPT-oss-20B + CLIP-L/336 shapes, CUDA
    python -m medgpt_oss.bench scale=tiny steps=2 seq_len=512 sample_tokens=128   # CPU, seconds

Ours: the stage from ``conf/stage`` (instruct, LoRA r16 by default) built from the same config
groups as training, at the real models' shapes with random weights (``shapes.full`` in
conf/bench.yaml; nothing is downloaded) or at the groups' tiny shapes, timed through the
stage's own ``_loss`` on packed rows with images (FlexAttention with sinks and document masks on
CUDA, chunked cross-entropy, grouped expert GEMMs). Baseline: ``GptOssForCausalLM`` + peft LoRA
on the attention projections as transformers ships it (eager attention, whole-row loss), fed
the same token ids. Both use the same activation checkpointing, dtype and experts kernel.

tok/s counts every token of the packed rows. MFU counts 4 x the LLM's active parameters per
token (forward, plus the backward through frozen weights), plus 2 x more when layers are
recomputed; the vision tower and attention scores are not counted. Prints one JSON line last.
"""

from __future__ import annotations

import functools
import gc
import json
import threading
import time
from typing import Any, Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from medgpt_oss.config import CONF_DIR, model_config
from medgpt_oss.models.document_attention import EAGER_PACKED

GIB = 2**30


def pick_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul rate: the MFU denominator where no peak is configured (CPU)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def active_llm_params(model: torch.nn.Module, config: Any) -> int:
    """Parameters one token passes through: no input embedding (a lookup), experts scaled by top-k / count."""
    total = experts = 0
    for name, p in model.named_parameters():
        if "lora_" in name or "embed_tokens" in name:
            continue
        total += p.numel()
        if ".experts." in name:
            experts += p.numel()
    num_experts = getattr(config, "num_local_experts", None)
    if experts and num_experts:
        total -= experts - experts * config.num_experts_per_tok // num_experts
    return total


class PeakMemory:
    """Peak memory of a timed phase: CUDA's allocator peak, or on CPU the process RSS growth (sampled every 2 ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_growth"

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._start = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / GIB
        else:
            self._stop.set()
            self._thread.join()
            self.gib = (max(self._peak, self._rss()) - self._start) / GIB


def packed_batch(cfg: DictConfig, image_token_id: int, tokens_per_image: int, image_size: int,
                 vocab: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Rows of ``seq_len`` tokens, each packing ``seq_len / sample_tokens`` samples: text, image slots, text."""
    if cfg.seq_len % cfg.sample_tokens:
        raise ValueError(f"seq_len={cfg.seq_len} must be a multiple of sample_tokens={cfg.sample_tokens}")
    image_slots = cfg.images_per_sample * tokens_per_image
    prefix = 8
    text = cfg.sample_tokens - image_slots - prefix
    if text < 2:
        raise ValueError(f"sample_tokens={cfg.sample_tokens} leaves no text after {cfg.images_per_sample} image(s) "
                         f"of {tokens_per_image} tokens; raise sample_tokens or lower images_per_sample")
    gen = torch.Generator().manual_seed(0)
    samples_per_row = cfg.seq_len // cfg.sample_tokens
    n_samples = cfg.batch_size * samples_per_row
    ids = torch.randint(0, vocab - 1, (n_samples, cfg.sample_tokens), generator=gen)
    ids[ids >= image_token_id] += 1   # never the image sentinel by chance
    ids[:, prefix:prefix + image_slots] = image_token_id
    labels = ids.clone()
    labels[:, :cfg.sample_tokens - int(text * cfg.supervised_fraction)] = -100
    positions = torch.arange(cfg.sample_tokens).expand(n_samples, -1)
    n_images = n_samples * cfg.images_per_sample
    rows = lambda t: t.reshape(cfg.batch_size, cfg.seq_len).to(device)  # noqa: E731
    return {
        "input_ids": rows(ids), "labels": rows(labels), "position_ids": rows(positions),
        "pixel_values": torch.randn(n_images, 3, image_size, image_size, generator=gen).to(device, dtype),
        "ids": [f"bench-{i}" for i in range(n_samples)],
    }


def time_steps(step: Callable[[], torch.Tensor], cfg: DictConfig, device: torch.device) -> dict[str, float]:
    for _ in range(cfg.warmup_steps):
        step()
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for _ in range(cfg.steps):
            loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens = cfg.batch_size * cfg.seq_len * cfg.steps
    return {"tok_s": tokens / seconds, "step_s": seconds / cfg.steps, "peak_mem_gib": memory.gib,
            "peak_mem_kind": memory.kind, "loss": float(loss)}


def optimizer_step(params: list[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def add_mfu(result: dict[str, Any], active: int, cfg: DictConfig, peak_tflops: float) -> dict[str, Any]:
    flops_per_token = (4 + (2 if cfg.activation_checkpointing else 0)) * active
    result.update(active_params=active, flops_per_token=flops_per_token,
                  mfu=result["tok_s"] * flops_per_token / (peak_tflops * 1e12))
    return result


def run_ours(cfg: DictConfig, device: torch.device, dtype: torch.dtype, attn: str) -> dict[str, Any]:
    model_cfg = model_config(cfg)
    model_cfg["llm"]["attn_implementation"] = attn
    with torch.device(device):
        stage = hydra.utils.instantiate(cfg.stage, model=model_cfg, _recursive_=False, _convert_="all")
    stage.train()
    vlm = stage.vlm
    if cfg.activation_checkpointing:
        vlm.llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    llm_config = vlm.llm.model.config
    batch = packed_batch(cfg, vlm.image_token_id, vlm.tokens_per_image, vlm.encoder.image_size,
                         llm_config.vocab_size, device, dtype)
    step = optimizer_step([p for p in stage.parameters() if p.requires_grad], functools.partial(stage._loss, batch))
    result = time_steps(step, cfg, device)
    result.update(attn_implementation=attn, loss_chunk_size=vlm.llm.loss_chunk_size,
                  experts_implementation=getattr(llm_config, "_experts_implementation", None),
                  tokens_per_image=vlm.tokens_per_image)
    active = active_llm_params(vlm.llm.model, llm_config)
    del stage, vlm, step
    return {"result": result, "active": active, "vocab_size": llm_config.vocab_size,
            "batch": {k: batch[k] for k in ("input_ids", "labels")}}


def run_baseline(cfg: DictConfig, llm_shape: dict[str, Any], batch: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, Any]:
    """GptOssForCausalLM + peft LoRA as transformers ships it: eager attention, whole-row loss, no packing masks."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(llm_shape)
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    config._attn_implementation = "eager"
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    with torch.device(device):
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(config)
        model = get_peft_model(model, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=list(lora["target_modules"]), bias="none"))
    model.train()
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    step = optimizer_step(params, lambda model=model: model(**batch, use_cache=False).loss)
    result = time_steps(step, cfg, device)
    result.update(attn_implementation="eager", loss_chunk_size=None,
                  experts_implementation=getattr(model.config, "_experts_implementation", None))
    active = active_llm_params(model, model.config)
    del model, step
    return {"result": result, "active": active}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench(cfg: DictConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)
    dtype = getattr(torch, cfg.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    attn = cfg.ours_attn_implementation or ("flex" if device.type == "cuda" else EAGER_PACKED)
    peak_tflops = cfg.peak_tflops or (807.0 if device.type == "cuda" else matmul_tflops(device, dtype))
    with open_dict(cfg):
        if cfg.scale == "full":   # the real shapes through the groups' random-init ("tiny") path
            cfg.llm.tiny = OmegaConf.merge(cfg.shapes.full.llm, {})
            cfg.encoder.tiny = OmegaConf.merge(cfg.shapes.full.encoder, {})
        elif cfg.scale != "tiny":
            raise ValueError(f"scale must be full or tiny, got {cfg.scale!r}")
        cfg.llm.scale = cfg.encoder.scale = "tiny"
        cfg.llm.tiny.experts_implementation = cfg.experts_implementation
        cfg.llm.dtype = None
    llm_shape = OmegaConf.to_container(cfg.llm.tiny, resolve=True)

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)   # build the 21B parameters in bf16 directly, on the device
    try:
        ours = run_ours(cfg, device, dtype, attn)
        llm_shape["vocab_size"] = ours["vocab_size"]   # tiny: the tokenizer's length, as ours got it
        free(device)
        baseline = run_baseline(cfg, llm_shape, ours["batch"], device) if cfg.baseline else None
        free(device)
    finally:
        torch.set_default_dtype(previous)

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "scale": cfg.scale, "stage": cfg.task_name, "dtype": str(dtype).split(".")[-1],
        "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "steps": cfg.steps,
        "activation_checkpointing": cfg.activation_checkpointing, "peak_tflops": peak_tflops,
        "ours": add_mfu(ours["result"], ours["active"], cfg, peak_tflops),
    }
    if baseline:
        report["baseline"] = add_mfu(baseline["result"], baseline["active"], cfg, peak_tflops)
        report["speedup"] = report["ours"]["tok_s"] / report["baseline"]["tok_s"]
    return report


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report = bench(cfg)
    for name in ("ours", "baseline"):
        if name in report:
            r = report[name]
            print(f"{name:<9} {r['tok_s']:>10.1f} tok/s  MFU {100 * r['mfu']:6.2f}%  peak {r['peak_mem_gib']:.2f} GiB "
                  f"({r['peak_mem_kind']})  attn={r['attn_implementation']} loss_chunk={r['loss_chunk_size']}")
    if "speedup" in report:
        print(f"ours / baseline: {report['speedup']:.2f}x")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
