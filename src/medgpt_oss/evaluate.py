"""Evaluate a checkpoint (or answers produced elsewhere) on medical benchmarks.

    python -m medgpt_oss.evaluate ckpt=<stage .ckpt> benchmark=vqa_rad benchmark.root=/data/vqa_rad
    python -m medgpt_oss.evaluate ckpt=<ckpt> 'benchmark=[vqa_rad,slake]' \\
        benchmark.vqa_rad.root=... benchmark.slake.root=...
    python -m medgpt_oss.evaluate -m ckpt=<ckpt> benchmark=vqa_rad,slake,medqa          # one job per benchmark
    python -m medgpt_oss.evaluate benchmark=medqa predictions=answers.jsonl               # no model: score {id, output}
    torchrun --nproc_per_node=4 -m medgpt_oss.evaluate ckpt=<ckpt> benchmark=medqa hydra.run.dir=<shared folder>

The run folder gets, per benchmark, ``<name>/predictions.jsonl`` (one line per
item: id, prompt, output, extracted, gold, correct, scores), plus
``summary.json``, ``results.md``, ``config.yaml``, ``prompts.json`` and ``meta.json``.
Metrics get 95% bootstrap intervals (``bootstrap.resamples``, ``bootstrap.seed``; ``<metric>_ci95``);
two run folders are compared item by item with ``python -m medgpt_oss.compare <runA> <runB>``.

How much a benchmark needs its images: ``images.mode=both`` answers every image benchmark twice, as given
and with every image blanked (``<name>@blank``: same prompts and tokens, each image black), and puts both
side by side with the difference and its paired 95% interval (``images_blanked`` in summary.json);
``images.mode=blank`` runs the blanked answers only. Text-only benchmarks are run once, as they are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medgpt_oss.config import CONF_DIR


def chosen_benchmarks(cfg: DictConfig) -> dict[str, DictConfig]:
    """name -> benchmark config; ``benchmark.root`` (a shortcut) applies when exactly one is chosen."""
    entries = {k: v for k, v in cfg.benchmark.items() if isinstance(v, DictConfig) and "_target_" in v}
    if not entries:
        raise ValueError("no benchmark chosen: add benchmark=<name> (see conf/benchmark/)")
    shortcut = cfg.benchmark.get("root")
    if shortcut is not None:
        if len(entries) > 1:
            raise ValueError("benchmark.root= sets the folder of a single benchmark; with several, set "
                             + ", ".join(f"benchmark.{k}.root=" for k in entries))
        next(iter(entries.values())).root = shortcut
    return entries


def _shard(cfg: DictConfig) -> tuple[int, int]:
    rank, world = int(cfg.shard.rank), int(cfg.shard.world_size)
    if not 0 <= rank < world:
        raise ValueError(f"shard.rank={rank} must be in [0, shard.world_size={world})")
    return rank, world


def _check_shared_run_dir(world: int) -> None:
    """Sharded ranks must write into one folder; a per-process timestamped folder would split them."""
    from hydra.core.hydra_config import HydraConfig

    if world > 1 and HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode.name == "RUN" and not any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra):
            raise ValueError("a sharded run (world_size > 1) needs hydra.run.dir=<one folder shared by all ranks>")


def _bootstrap(cfg: DictConfig) -> dict[str, int]:
    """{resamples, seed} of the 95% intervals; resamples 0 turns them off."""
    conf = cfg.get("bootstrap") or {}
    resamples, seed = int(conf.get("resamples", 1000)), int(conf.get("seed", 0))
    if resamples < 0:
        raise ValueError(f"bootstrap.resamples={resamples} must be >= 0 (0: no intervals)")
    return {"resamples": resamples, "seed": seed}


def _image_mode(cfg: DictConfig) -> str:
    """images.mode: normal (images as given), blank (every image black), both (each image benchmark twice)."""
    from medgpt_oss.eval.generation import IMAGE_MODES

    mode = str((cfg.get("images") or {}).get("mode") or "normal")
    if mode not in IMAGE_MODES:
        raise ValueError(f"images.mode={mode}: choose one of {', '.join(IMAGE_MODES)}")
    if mode != "normal" and cfg.predictions:
        raise ValueError(f"images.mode={mode} asks the model again with blank images, but predictions= scores "
                         "answers given already: there is nothing to blank. Blank with a model (ckpt=, no "
                         "predictions=), or drop images.mode")
    return mode


def _passes(mode: str, name: str, image_benchmark: bool) -> list[tuple[str, bool]]:
    """(summary key and folder, blank the images?) of each run of one benchmark."""
    from medgpt_oss.eval.runner import BLANK_SUFFIX

    if mode == "normal" or not image_benchmark:
        return [(name, False)]
    blanked = (name + BLANK_SUFFIX, True)
    return [blanked] if mode == "blank" else [(name, False), blanked]


def build_answerer(cfg: DictConfig, root: str):
    from medgpt_oss.eval.generation import Generator, load_vlm, resolve_device, training_image_options
    from medgpt_oss.eval.runner import ModelAnswerer

    vlm = load_vlm(cfg.ckpt, resolve_device(cfg.device), trusted_targets=list(cfg.get("trusted_targets") or []))
    images = training_image_options(cfg.ckpt, cfg.get("images"))
    generator = Generator(vlm, root, max_new_tokens=cfg.max_new_tokens, system_prompt=cfg.system_prompt,
                          allow_outside_root=bool(cfg.get("allow_outside_root", False)), **images)
    return generator, ModelAnswerer(generator, batch_size=cfg.batch_size,
                                    likelihood=OmegaConf.to_container(cfg.likelihood, resolve=True))


def evaluate(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Run every chosen benchmark; return the summaries (on rank 0) and write the run folder."""
    from medgpt_oss.eval.results import write_results
    from medgpt_oss.eval.runner import (
        BLANK_SUFFIX, RunOptions, finish, has_images, image_ablation, merge_shards, read_predictions, run_benchmark,
    )

    benchmarks = chosen_benchmarks(cfg)
    bootstrap = _bootstrap(cfg)
    mode = _image_mode(cfg)
    rank, world = _shard(cfg)
    _check_shared_run_dir(world)
    if cfg.ckpt is None and cfg.predictions is None and not cfg.merge_only:
        raise ValueError("give ckpt=<checkpoint> to answer with a model, or predictions=<jsonl> to score answers")
    predictions_file = read_predictions(cfg.predictions) if cfg.predictions else None
    predictions = predictions_file.outputs if predictions_file is not None else None
    instances = {name: hydra.utils.instantiate(bcfg, _convert_="all") for name, bcfg in benchmarks.items()}
    # Each benchmark's items, read once: checked against the predictions file before any scoring, then scored.
    # (and, to blank images, known before answering: a text-only benchmark is run once)
    items = ({name: list(b.items()) for name, b in instances.items()}
             if predictions is not None or (mode != "normal" and not cfg.merge_only) else {})
    predictions_check = None
    if predictions_file is not None and not cfg.merge_only:
        predictions_check = predictions_file.check_against([i.id for listed in items.values() for i in listed],
                                                           benchmarks)
    prompts = OmegaConf.to_container(cfg.prompts, resolve=True)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        # the exact templates used: defaults, and each benchmark's overrides of them
        overrides = {name: OmegaConf.to_container(b.prompts, resolve=True) for name, b in benchmarks.items()
                     if b.get("prompts")}
        (out_dir / "prompts.json").write_text(json.dumps({"default": prompts, **overrides}, indent=2) + "\n")

    summaries: dict[str, Any] = {}
    ablations: dict[str, Any] = {}
    generator = answerer = None
    start = time.time()
    for name, benchmark in instances.items():
        if cfg.merge_only:
            if rank == 0:
                # the folders the answering run wrote: <name> and/or <name>@blank, by images.mode
                keys = [name] if mode == "normal" else [
                    k for k in (name, name + BLANK_SUFFIX) if (out_dir / k / "shards").is_dir()] or [name]
                for key in keys:
                    summaries[key] = finish(benchmark, out_dir / key, merge_shards(out_dir / key, world, 0),
                                            bootstrap)
                    if key.endswith(BLANK_SUFFIX):
                        summaries[key]["images"] = "blanked"
            continue
        listed = items.get(name)
        image_benchmark = mode != "normal" and has_images(listed[: cfg.limit] if cfg.limit is not None else listed)
        if mode != "normal" and not image_benchmark:
            print(f"[{name}] text only: no item has an image, so images.mode={mode} leaves it as it is (run once)")
        for key, blank in _passes(mode, name, image_benchmark):
            if predictions is None:
                if generator is None:
                    generator, answerer = build_answerer(cfg, benchmark.root)
                generator.processor.root = Path(benchmark.root)  # images resolve against each benchmark's root
                generator.blank_images = blank
            opts = RunOptions(out_dir=out_dir, prompts=prompts, rank=rank, world_size=world,
                              batch_size=cfg.batch_size, limit=cfg.limit, wait_s=cfg.shard.wait_s, bootstrap=bootstrap)
            summary = run_benchmark(benchmark, opts, answer=answerer, predictions=predictions, items=listed,
                                    folder=key)
            if summary is None:
                continue
            if mode != "normal":
                summary["images"] = "blanked" if blank else ("as given" if image_benchmark else "none (text only)")
            summaries[key] = summary
            ci = summary.get("accuracy_ci95")
            print(f"[{key}] scored {summary['n_scored']} of {summary['n_items']} items"
                  + (f", accuracy {100 * summary['accuracy']:.2f}%" if summary.get("accuracy") is not None else "")
                  + (f" (95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f})" if ci else ""))
    if rank != 0:
        return None
    for name, benchmark in instances.items():
        blank_key = name + BLANK_SUFFIX
        if name in summaries and blank_key in summaries:
            ablations[name] = {
                "with_images": name, "blanked": blank_key,
                "metrics": image_ablation(benchmark, read_jsonl_rows(out_dir / name),
                                          read_jsonl_rows(out_dir / blank_key),
                                          summaries[name], summaries[blank_key], bootstrap)}
        elif mode != "normal" and name in summaries:
            ablations[name] = {"skipped": "text only: no item has an image, nothing to blank (run once)"}
    resolved = {k: str(Path(cfg[k]).resolve()) if cfg[k] else None for k in ("ckpt", "predictions")}
    if predictions_check is not None:
        print(f"predictions: {predictions_check['lines']} lines, {predictions_check['matched']} answers matched "
              f"items, {predictions_check['unknown']['count']} unknown ids "
              f"{predictions_check['unknown']['examples'] or ''}, {predictions_check['non_string_ids']['count']} "
              f"ids not written as strings, {predictions_check['duplicate_ids']['count']} repeated")
    meta = {**resolved, "world_size": world, "seconds": round(time.time() - start, 1), "images_mode": mode,
            **({"predictions_check": predictions_check} if predictions_check is not None else {}),
            "bootstrap": {**bootstrap, "level": 0.95, "method": "percentile bootstrap over items"},
            "command": "python -m medgpt_oss.evaluate " + " ".join(sys.argv[1:]),
            "prompt_templates": "prompts.json", "config": "config.yaml"}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_results(out_dir, summaries, meta, images_blanked=ablations or None)
    print((out_dir / "results.md").read_text())
    return summaries


def read_jsonl_rows(bench_dir: Path) -> list[dict[str, Any]]:
    """The merged per-item rows of a benchmark folder (``predictions.jsonl``)."""
    from medgpt_oss.data.jsonl import read_jsonl

    return list(read_jsonl(bench_dir / "predictions.jsonl"))


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from medgpt_oss.eval.benchmarks.base import BenchmarkLayoutError

    try:
        summaries = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (BenchmarkLayoutError, ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if not summaries:
        return None
    # the sweepers' objective: the runs with images as given (blanked-only runs when that is all there is)
    chosen = [s for k, s in summaries.items() if not k.endswith("@blank")] or list(summaries.values())
    accuracies = [s["accuracy"] for s in chosen if s.get("accuracy") is not None]
    return sum(accuracies) / len(accuracies) if accuracies else None  # the objective sweepers see


if __name__ == "__main__":
    main()
