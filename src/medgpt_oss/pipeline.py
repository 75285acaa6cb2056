"""The whole curriculum in one command: align -> longctx -> instruct -> evaluate.

    python -m medgpt_oss.pipeline recipe=tiny_demo                 # the README's demo
    python -m medgpt_oss.pipeline recipe=tiny_demo 'overrides=["encoder=siglip"]'

Each stage is composed from conf/train.yaml exactly as ``python -m medgpt_oss.train
+stage=<name>`` would be, with the recipe's overrides, and starts from the previous
stage's ``last.ckpt`` (``init_from``). Stage runs live in ``<out_dir>/<stage>/``; the
evaluation of the last stage writes ``<out_dir>/summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medgpt_oss.config import CONF_DIR


def stage_overrides(cfg: DictConfig, stage: DictConfig, out_dir: Path, init_from: Path | None) -> list[str]:
    overrides = [f"+stage={stage.name}", *cfg.recipe.common, *stage.overrides, *cfg.overrides,
                 f"paths.output_dir={out_dir / stage.name}"]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    return overrides


def run_curriculum(cfg: DictConfig) -> Path:
    """Train every stage of the recipe in order; returns the last stage's checkpoint."""
    from medgpt_oss.train import train

    out_dir = Path(cfg.out_dir)
    previous: Path | None = None
    for stage in cfg.recipe.stages:
        overrides = stage_overrides(cfg, stage, out_dir, previous)
        print(f"\n=== stage {stage.name}: {' '.join(overrides)}", flush=True)
        train(hydra.compose(config_name="train", overrides=overrides))
        previous = out_dir / stage.name / "checkpoints" / "last.ckpt"
        if not previous.is_file():
            raise RuntimeError(f"stage {stage.name} wrote no {previous}")
    return previous


@hydra.main(config_path=str(CONF_DIR), config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    ckpt = run_curriculum(cfg)
    from medgpt_oss.eval.medsynth import evaluate_medsynth

    out_dir = Path(cfg.out_dir)
    summary: dict[str, Any] = evaluate_medsynth(ckpt, out_dir / "eval", **OmegaConf.to_container(cfg.recipe.evaluate))
    summary["checkpoint"] = str(ckpt)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
