"""Batched vs one-at-a-time greedy decoding: items/s of each, their ratio, and that outputs agree.

    python -m medgpt_oss.eval.bench_generation                       # tiny random MedVLM on CPU
    python -m medgpt_oss.eval.bench_generation --ckpt <stage .ckpt> --n 64 --batch-size 16 --device cuda

A measurement, not a test: timings depend on the machine. The prompts are
MedSynth-like questions of varying length over random images, so batches need
real left padding.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUESTIONS = ("Is there a nodule?", "Which side is the pleural effusion on?",
             "What is the imaging modality of this image? Answer with one word.",
             "Describe the image briefly.",
             "Is the heart enlarged? Answer yes or no, then explain why in one sentence.")


def tiny_vlm(encoder: str = "clip", projector: str = "mlp2x_gelu"):
    """The tiny-scale MedVLM of the shipped configs (random init, same classes as full scale)."""
    from omegaconf import OmegaConf

    from medgpt_oss.config import load_option
    from medgpt_oss.models.vlm import MedVLM

    cfg = OmegaConf.create({"scale": "tiny", "init_seed": 0, "chat": load_option("chat", "harmony")})
    cfg.encoder = load_option("encoder", encoder)
    cfg.projector = load_option("projector", projector)
    cfg.llm = load_option("llm", "gpt_oss")
    cfg.lora = None
    return MedVLM.from_config(cfg).eval()


def make_records(root: Path, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / f"{i}.png")
        records.append({"id": str(i), "image": [f"{i}.png"], "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTIONS[i % len(QUESTIONS)]}, {"from": "gpt", "value": "-"}]})
    return records


def measure(generator, samples: list[dict], batch_size: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    outputs: list[str] = []
    for i in range(0, len(samples), batch_size):
        outputs += generator.replies(samples[i:i + batch_size])  # raw replies: a random model writes no final channel
    return outputs, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    from medgpt_oss.eval.generation import Generator, load_vlm, resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a stage checkpoint; default: the tiny random MedVLM")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    device = resolve_device(args.device)
    vlm = load_vlm(args.ckpt, device) if args.ckpt else tiny_vlm().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        generator = Generator(vlm, tmp, max_new_tokens=args.max_new_tokens)
        samples = [generator.prepare(r) for r in make_records(Path(tmp), args.n)]
        generator.generate(samples[:2])  # warm-up: first-call allocations are not decoding speed
        one, t_one = measure(generator, samples, 1)
        many, t_many = measure(generator, samples, args.batch_size)
    same = sum(a == b for a, b in zip(one, many))
    print(f"device {device}, {args.n} items, max_new_tokens {args.max_new_tokens}")
    print(f"one at a time : {args.n / t_one:8.2f} items/s ({t_one:.2f} s)")
    print(f"batch of {args.batch_size:<4} : {args.n / t_many:8.2f} items/s ({t_many:.2f} s)")
    print(f"speed-up      : {t_one / t_many:8.2f}x; identical outputs: {same}/{args.n}")


if __name__ == "__main__":
    main()
