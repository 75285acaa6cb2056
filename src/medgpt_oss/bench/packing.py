"""How much of each batch is real tokens, with and without packing, on MedSynth.

    python -m medgpt_oss.bench.packing [--batch-size 32] [--pack-length 2048] [--tokens-per-image 64]

Counts only (no images are decoded): every record of the stage's task mix is
tokenized exactly as training does, batched in the training sampler's order,
and laid out padded (longest sample per batch) or packed (data/packing.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from medgpt_oss.config import CONF_DIR
from medgpt_oss.data.conversation import HarmonyFormatter
from medgpt_oss.data.datamodule import ResumableShuffleSampler
from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.packing import plan_rows
from medgpt_oss.data.processor import record_images
from medgpt_oss.data.synthetic import ensure_medsynth
from medgpt_oss.harmony import IMAGE_TOKEN
from medgpt_oss.models.tokenizer import load_tokenizer


def stage_tasks(stage: str) -> list[str]:
    """The task mix a stage trains on, as its config says."""
    return list(OmegaConf.load(CONF_DIR / "stage" / f"{stage}.yaml").data.tasks)


def fill_ratios(lengths: list[int], batch_size: int, pack_length: int) -> dict[str, float]:
    real = padded = packed = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        real += sum(batch)
        padded += len(batch) * max(batch)
        rows = plan_rows(batch, pack_length)
        packed += len(rows) * max(sum(batch[i] for i in row) for row in rows)
    return {"padded_fill": real / padded, "packed_fill": real / packed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/medsynth"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pack-length", type=int, default=2048)
    parser.add_argument("--tokens-per-image", type=int, default=64, help="64: mlp2x_gelu at tiny scale; 16: pixel_shuffle")
    args = parser.parse_args()
    ensure_medsynth(args.root)
    formatter = HarmonyFormatter(load_tokenizer(), IMAGE_TOKEN, args.tokens_per_image)
    records = read_jsonl(args.root / "train.jsonl")
    results = {}
    for stage in ("longctx", "instruct"):
        tasks = stage_tasks(stage)
        chosen = [r for r in records if r["task"] in tasks]
        lengths = [len(formatter.tokenize(r["id"], r["conversations"], len(record_images(r))).input_ids) for r in chosen]
        order = list(ResumableShuffleSampler(len(lengths), seed=42))
        ratios = fill_ratios([lengths[i] for i in order], args.batch_size, args.pack_length)
        results[stage] = {"samples": len(lengths), "mean_tokens": sum(lengths) / len(lengths),
                          "max_tokens": max(lengths), **{k: round(v, 4) for k, v in ratios.items()}}
        print(f"{stage:9s} samples={len(lengths):6d} mean={results[stage]['mean_tokens']:.0f} tokens  "
              f"non-padding: padded {ratios['padded_fill']:.1%}  packed {ratios['packed_fill']:.1%}")
    print(json.dumps({"batch_size": args.batch_size, "pack_length": args.pack_length,
                      "tokens_per_image": args.tokens_per_image, **results}))


if __name__ == "__main__":
    main()
