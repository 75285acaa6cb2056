"""Data-loading throughput: decode + resize + normalise + tokenise + collate of 512-px JPEG samples.

    python -m medgpt_oss.bench.data [--samples 1024] [--input-size 336] [--workers 0,1,2]

Writes ``--samples`` JPEG caption samples (``--source-size`` px, default 512) into a temporary
prepared shard folder and streams them through the real training path: ``StreamingConversations``
(shard read, shuffle buffer), ``SampleProcessor`` (JPEG decode, resize + normalise to the encoder's
input, CLIP-L/336 by default, harmony tokenisation with the tiny tokenizer, 576 image tokens) and
collation, in a DataLoader with each worker count. Every process uses one torch thread, so
images/s per core is images/s divided by the processes doing the work (workers, or 1 for
``--workers 0``). A CLIP-L/336 forward on one H200 takes ~1,085 images/s in bf16, i.e. ~70 images/s
per core of a 16-core node: ``vs_h200_need`` is our per-core figure over that.

Then a per-stage breakdown (ms per image, one thread) shows where the time goes. Last line: JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from medgpt_oss.config import load_option
from medgpt_oss.contract import input_spec_from_config
from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.data.shards import PreparedRecord, ShardWriter, write_manifest
from medgpt_oss.data.streaming import StreamingConversations

H200_CLIP_L336_IMAGES_PER_S = 1085.0  # CLIP-L/336 forward, bf16, one H200 (measured; docs/data.md)
CORES_PER_NODE = 16
NEEDED_PER_CORE = H200_CLIP_L336_IMAGES_PER_S / CORES_PER_NODE  # ~68 images/s per core


def radiograph_like_jpeg(rng: np.random.Generator, size: int, quality: int = 90) -> bytes:
    """A smooth greyscale image with noise (a JPEG that costs what a real scan costs to decode), as RGB JPEG."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fx, fy = rng.uniform(10, 40, size=2)
    base = 128 + 60 * np.sin(xx / fx) * np.cos(yy / fy) + rng.normal(0, 20, (size, size))
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg_shards(root: Path, samples: int, source_size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    distinct = [radiograph_like_jpeg(rng, source_size) for _ in range(min(samples, 32))]
    writer = ShardWriter(root, "train", shard_records=512, row_group_records=32)
    for i in range(samples):
        conversation = [{"from": "human", "value": "<image>\nDescribe the findings."},
                        {"from": "gpt", "value": "Frontal chest radiograph; no focal consolidation, "
                                                 "no pleural effusion, normal cardiac silhouette."}]
        writer.write(PreparedRecord(f"bench-{i:06d}", "caption", conversation, [distinct[i % len(distinct)]],
                                    [f"{i}.jpg"]))
    write_manifest(root, "bench", {"train": writer.close()}, {})
    return root


def tiny_model_config(**encoder_tiny: Any) -> DictConfig:
    """The shipped tiny CLIP + mlp2x_gelu + GPT-oss groups; ``encoder_tiny`` overrides the encoder's tiny dict."""
    model = OmegaConf.create({"scale": "tiny", "init_seed": 0, "chat": load_option("chat", "harmony")})
    model.encoder = load_option("encoder", "clip")
    model.projector = load_option("projector", "mlp2x_gelu")
    model.llm = load_option("llm", "gpt_oss")
    model.encoder.tiny.update(encoder_tiny)
    return model


def make_processor(input_size: int, patch: int) -> SampleProcessor:
    """The processor for a CLIP encoder at ``input_size`` px in ``patch`` px patches (tiny tokenizer): CLIP's
    normalisation and (input_size / patch)^2 image tokens, from the model contract."""
    spec = input_spec_from_config(tiny_model_config(image_size=input_size, patch_size=patch))
    return SampleProcessor(spec, ".", max_length=None)


def _one_thread_per_worker(_: int) -> None:
    torch.set_num_threads(1)


def loader_throughput(root: Path, processor: SampleProcessor, samples: int, batch_size: int, workers: int) -> dict:
    """Images/s of the real streaming loader over ``samples`` images (after one warm-up batch per worker)."""
    dataset = StreamingConversations([(root, 1.0)], processor, batch_size, seed=0, shuffle_buffer=256,
                                     num_workers=workers)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_one_thread_per_worker)
    batches = iter(loader)
    for _ in range(max(1, workers)):  # worker start-up and the first shard read are not throughput
        next(batches)
    count, start = 0, time.perf_counter()
    while count < samples:
        count += len(next(batches)["ids"])
    seconds = time.perf_counter() - start
    del batches
    cores = max(1, workers)
    return {"workers": workers, "images": count, "seconds": round(seconds, 3),
            "images_per_s": round(count / seconds, 1), "images_per_s_per_core": round(count / seconds / cores, 1)}


def stage_breakdown(root: Path, processor: SampleProcessor, images: int = 64) -> dict[str, float]:
    """Milliseconds per image of each step of the hot path, one thread."""
    from torchvision.transforms import v2

    from medgpt_oss.data.images import load_image
    from medgpt_oss.data.streaming import ShardIndex

    index = ShardIndex.open(root, "train")
    records = index.load(0, range(int(index.unit_rows[0])))
    records = (records * (images // len(records) + 1))[:images]
    transform = processor.transform
    timings: dict[str, float] = {}

    def timed(name: str, fn, items: list) -> list:
        start = time.perf_counter()
        out = [fn(item) for item in items]
        timings[name] = round((time.perf_counter() - start) / len(items) * 1e3, 3)
        return out

    decoded = timed("decode_ms", lambda r: load_image(io.BytesIO(r["image_bytes"][0])), records)

    def torchvision_normalise(t: torch.Tensor) -> torch.Tensor:  # what data/images.py did before the fused pass
        return v2.functional.normalize(v2.functional.to_dtype(t.contiguous(), torch.float32, scale=True),
                                       transform.mean, transform.std)

    resized = timed("resize_ms", transform.resize, decoded)
    timed("normalise_ms", transform.normalise, resized)
    timed("normalise_torchvision_ms", torchvision_normalise, resized)
    pixels = timed("transform_total_ms", transform, decoded)
    tokens = timed("tokenise_ms", lambda r: processor.formatter.tokenize(r["id"], r["conversations"], 1), records)
    samples = [{"id": r["id"], "input_ids": t.input_ids, "labels": t.labels, "pixel_values": p[None]}
               for r, t, p in zip(records, tokens, pixels)]
    batches = [samples[i:i + 16] for i in range(0, len(samples), 16)]
    timed("collate_ms", processor.collate, batches)
    timings["collate_ms"] = round(timings["collate_ms"] / 16, 3)  # per image, not per batch of 16
    return timings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024, help="images timed per worker setting")
    parser.add_argument("--source-size", type=int, default=512, help="JPEG side in pixels")
    parser.add_argument("--input-size", type=int, default=336, help="encoder input side (CLIP-L/336)")
    parser.add_argument("--patch", type=int, default=14, help="encoder patch size: image tokens = (input/patch)^2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    processor = make_processor(args.input_size, args.patch)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = write_jpeg_shards(Path(tmp), max(args.samples, 64) + args.batch_size * 4, args.source_size)
        runs = [loader_throughput(root, processor, args.samples, args.batch_size, int(w))
                for w in args.workers.split(",")]
        breakdown = stage_breakdown(root, processor)
    best = max(r["images_per_s_per_core"] for r in runs)
    for r in runs:
        print(f"num_workers={r['workers']}: {r['images_per_s']:8.1f} images/s, "
              f"{r['images_per_s_per_core']:6.1f} per core")
    print("ms per image: " + ", ".join(f"{k[:-3]} {v}" for k, v in breakdown.items()))
    print(f"best {best:.1f} images/s per core; an H200 feeding CLIP-L/336 needs {NEEDED_PER_CORE:.1f} per core "
          f"of a {CORES_PER_NODE}-core node ({best / NEEDED_PER_CORE:.2f}x)")
    result = {"samples": args.samples, "source_size": args.source_size, "input_size": args.input_size,
              "batch_size": args.batch_size, "cpu_count": os.cpu_count(), "runs": runs, "breakdown_ms": breakdown,
              "best_images_per_s_per_core": best, "needed_images_per_s_per_core": round(NEEDED_PER_CORE, 1),
              "vs_h200_need": round(best / NEEDED_PER_CORE, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
