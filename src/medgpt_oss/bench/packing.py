"""How much of each packed row is real tokens on MedSynth's stage mixes, per row length.

    python -m medgpt_oss.bench.packing [--pack-lengths 2048 8192] [--lookahead 1024] [--tokens-per-image 64] \
        [--figure experiments/packing_fill.png]

Counts only (no image is decoded): every record of the stage's task mix is tokenized exactly as
training does (``SampleProcessor.sample_length``), ordered as the training sampler's first pass,
and laid out three ways: padded batches of ``--batch-size`` samples (longest sample per batch),
first-fit packing within each such batch (``data.pack_lookahead=0``), and rows planned over a
lookahead window (``PackedBatchSampler``, the default). Useful fraction = real tokens / (rows x
row length), so a row's unused tail counts as padding. ``--figure`` draws the three side by side
per stage mix and row length (PNG). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from medgpt_oss.bench.data import tiny_model_config
from medgpt_oss.config import CONF_DIR
from medgpt_oss.contract import input_spec_from_config
from medgpt_oss.data.datamodule import ResumableShuffleSampler
from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.packing import PackedBatchSampler, plan_rows
from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.data.medsynth.generate import ensure_medsynth


def stage_tasks(stage: str) -> list[str]:
    """The task mix a stage trains on, as its config says."""
    return list(OmegaConf.load(CONF_DIR / "stage" / f"{stage}.yaml").data.tasks)


def batch_fill(lengths: list[int], batch_size: int, pack_length: int) -> dict[str, float]:
    """Padded batches and first-fit packing within each batch (rows counted at ``pack_length``)."""
    real = padded = rows = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        real += sum(batch)
        padded += len(batch) * max(batch)
        rows += len(plan_rows(batch, pack_length))
    return {"useful_fraction_padded": real / padded, "useful_fraction_batch_packed": real / (rows * pack_length)}


def planned_fill(lengths: list[int], pack_length: int, lookahead: int) -> float:
    """Rows planned over the lookahead window for one pass, as training plans them."""
    sampler = PackedBatchSampler(lengths, seed=42, pack_length=pack_length, rows=1, lookahead=lookahead)
    rows = [row for batch in sampler.plan(0) for row in batch]
    return sum(lengths[i] for row in rows for i in row) / (len(rows) * pack_length)


LAYOUTS = (("useful_fraction_padded", "padded batches"), ("useful_fraction_batch_packed", "packed per batch"),
           ("useful_fraction_packed", "planned over the lookahead"))


def draw(results: dict[str, dict], pack_lengths: list[int], lookahead: int, tokens_per_image: int, path: Path) -> None:
    """Grouped bars: useful fraction of each layout, per stage mix and row length."""
    from medgpt_oss.figures import pyplot

    plt = pyplot()
    groups = [(stage, n) for stage in ("longctx", "instruct") for n in pack_lengths]
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2, 3.6))
    width = 0.8 / len(LAYOUTS)
    for k, (key, label) in enumerate(LAYOUTS):
        values = [100 * results[stage][str(n)][key] for stage, n in groups]
        bars = ax.bar([g + (k - 1) * width for g in range(len(groups))], values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.axhline(95, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(groups)), [f"{stage}\n{n:,} tokens" for stage, n in groups])
    ax.set_ylabel("real tokens per row (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"MedSynth packing fill ({tokens_per_image} tokens per image, lookahead {lookahead})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(LAYOUTS), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/medsynth"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pack-lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--lookahead", type=int, default=1024)
    parser.add_argument("--tokens-per-image", type=int, default=None,
                        help="default: the tiny CLIP + mlp2x_gelu model's count (64); 16: pixel_shuffle")
    parser.add_argument("--figure", type=Path, default=None, help="write the fills as a bar chart (PNG) here")
    args = parser.parse_args()
    ensure_medsynth(args.root)
    spec = input_spec_from_config(tiny_model_config())  # the tiny model's tokenizer, image token, chat settings
    if args.tokens_per_image is None:
        args.tokens_per_image = spec.tokens_per_image
    processor = SampleProcessor(replace(spec, tokens_per_image=args.tokens_per_image), args.root)
    records = read_jsonl(args.root / "train.jsonl")
    results: dict[str, dict] = {}
    for stage in ("longctx", "instruct"):
        tasks = stage_tasks(stage)
        started = time.perf_counter()
        lengths = [processor.sample_length(r) for r in records if r["task"] in tasks]
        per_sample_ms = 1000 * (time.perf_counter() - started) / len(lengths)
        order = list(ResumableShuffleSampler(len(lengths), seed=42))
        ordered = [lengths[i] for i in order]
        results[stage] = {"samples": len(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
                          "max_tokens": max(lengths), "length_ms_per_sample": round(per_sample_ms, 3)}
        for pack_length in args.pack_lengths:
            fits = [n for n in lengths if n <= pack_length]  # longer ones: data.max_length = pack_length skips them
            fills = {**batch_fill([n for n in ordered if n <= pack_length], args.batch_size, pack_length),
                     "useful_fraction_packed": planned_fill(fits, pack_length, args.lookahead)}
            results[stage][str(pack_length)] = {**{k: round(v, 4) for k, v in fills.items()},
                                                "samples_longer_than_row": len(lengths) - len(fits)}
            print(f"{stage:9s} rows of {pack_length:6d}: samples={len(fits)} (+{len(lengths) - len(fits)} longer) "
                  f"mean={sum(lengths) / len(lengths):.0f} max={max(lengths)} tokens; useful: padded "
                  f"{fills['useful_fraction_padded']:.1%}, "
                  f"packed per batch {fills['useful_fraction_batch_packed']:.1%}, "
                  f"planned (lookahead {args.lookahead}) {fills['useful_fraction_packed']:.1%}")
    if args.figure is not None:
        draw(results, args.pack_lengths, args.lookahead, args.tokens_per_image, args.figure)
    print(json.dumps({"batch_size": args.batch_size, "lookahead": args.lookahead,
                      "tokens_per_image": args.tokens_per_image, **results}))


if __name__ == "__main__":
    main()
