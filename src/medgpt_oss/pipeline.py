"""The whole curriculum in one command: align -> longctx -> instruct -> evaluate.

    python -m medgpt_oss.pipeline recipe=tiny_demo                 # the README's demo
    python -m medgpt_oss.pipeline recipe=tiny_demo 'overrides=["encoder=siglip"]'

Each stage is composed from conf/train.yaml exactly as ``python -m medgpt_oss.train
+stage=<name>`` would be, with the recipe's overrides, and starts from the previous
stage's ``last.ckpt`` (``init_from``). Stage runs live in ``<out_dir>/<stage>/``.

The last stage is evaluated by the harness, composed from conf/eval.yaml exactly as
``python -m medgpt_oss.evaluate`` would be (``recipe.evaluate``: ``benchmark=medsynth``,
``images.mode=both``, items per task, batch size, ...), into ``<out_dir>/eval/`` (a run folder like any
other: per-item rows, summary.json, results.md). ``<out_dir>/summary.json`` is its headline numbers
(:func:`demo_summary`): per MedSynth task the accuracy with the images and with every image blanked,
each with its 95% interval, the paired difference, the unparseable answers, the report finding F1, and
where the harness run is; ``<out_dir>/learning.png`` draws them (with and without images, chance levels) and
each stage's ``curves.png`` is listed.
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


def _data_root_of(ckpt: Path) -> Path:
    """The data folder a run trained on, from the (resolved) config.yaml saved beside its checkpoints."""
    config = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no config.yaml beside '{ckpt}'; set recipe.evaluate.root=<benchmark folder>")
    return Path(OmegaConf.load(config).data.root)


def evaluation_overrides(evaluate: DictConfig, ckpt: Path) -> list[str]:
    """conf/eval.yaml overrides that evaluate ``ckpt`` as the recipe's ``evaluate:`` block says.

    ``root`` null: the data folder the last stage trained on (MedSynth's, in the demo); ``limit``: items per
    MedSynth task (``benchmark.medsynth.limit_per_task``), or the first N items of another benchmark."""
    name = str(evaluate.benchmark)
    root = evaluate.get("root") or _data_root_of(ckpt)
    overrides = [f"ckpt={ckpt}", f"benchmark={name}", f"benchmark.{name}.root={root}",
                 f"images.mode={evaluate.get('images', 'both')}", f"batch_size={evaluate.batch_size}"]
    if evaluate.get("max_new_tokens") is not None:
        overrides.append(f"max_new_tokens={evaluate.max_new_tokens}")
    if evaluate.get("tasks") is not None:
        overrides.append(f"benchmark.{name}.tasks=[{','.join(evaluate.tasks)}]")
    if evaluate.get("limit") is not None:
        overrides.append(f"+benchmark.{name}.limit_per_task={evaluate.limit}" if name == "medsynth"
                         else f"limit={evaluate.limit}")
    return overrides + list(evaluate.get("overrides") or [])


# The demo's headline keys from the harness's MedSynth summaries (with images, and <name>@blank).
CHANCE = {"closed": 0.5, "mcq": 0.25}  # yes/no; MedSynth's four options


def demo_summary(harness: dict[str, Any], name: str = "medsynth") -> dict[str, Any]:
    """``<out_dir>/summary.json`` from the harness's summary.json (``images.mode=both``).

    Per task ``t`` of ``by_task``: ``t_accuracy`` (+ ``_ci95``), ``t_accuracy_images_blanked`` (+ ``_ci95``),
    ``t_accuracy_images_minus_blanked`` (+ ``_ci95``: paired), ``t_unparseable`` (no final channel or no
    answer in it; + ``_images_blanked``), ``n_t``, ``t_chance``, ``t_prior`` (the best image-free guess),
    for multiple choice ``t_wrong`` and ``t_wrong_letter_right_text`` (wrong answers naming the right option);
    reports: ``report_f1`` (finding F1, the same set of keys) and ``n_report``."""
    from medgpt_oss.eval.runner import BLANK_SUFFIX

    benchmarks = harness["benchmarks"]
    with_images, blanked = benchmarks.get(name) or {}, benchmarks.get(name + BLANK_SUFFIX) or {}
    paired = ((harness.get("images_blanked") or {}).get(name) or {}).get("metrics") or {}
    out: dict[str, Any] = {}

    def put(key: str, holder: dict[str, Any], metric: str, suffix: str = "") -> None:
        if metric in holder:
            out[key + suffix] = holder[metric]
            if f"{metric}_ci95" in holder:
                out[f"{key}{suffix}_ci95"] = holder[f"{metric}_ci95"]

    def put_difference(key: str, metric: str) -> None:
        if metric in paired:
            out[f"{key}_images_minus_blanked"] = paired[metric]["images_minus_blanked"]
            if "images_minus_blanked_ci95" in paired[metric]:
                out[f"{key}_images_minus_blanked_ci95"] = paired[metric]["images_minus_blanked_ci95"]

    for task, split in (with_images.get("by_task") or {}).items():
        blank_split = (blanked.get("by_task") or {}).get(task) or {}
        put(f"{task}_accuracy", split, "accuracy")
        put(f"{task}_accuracy", blank_split, "accuracy", "_images_blanked")
        put_difference(f"{task}_accuracy", f"by_task[{task}].accuracy")
        if "unparsed" in split:
            out[f"{task}_unparseable"] = split["unparsed"]
        if "unparsed" in blank_split:
            out[f"{task}_unparseable_images_blanked"] = blank_split["unparsed"]
        out[f"n_{task}"] = split.get("n")
        if task in CHANCE:
            out[f"{task}_chance"] = CHANCE[task]
        if "prior_accuracy" in split:   # the training answer to the same question, no image (eval/benchmarks)
            out[f"{task}_prior"] = split["prior_accuracy"]
        if "wrong_letter_right_text" in split:   # multiple choice: right option text under a wrong letter
            out[f"{task}_wrong"] = split["wrong"]
            out[f"{task}_wrong_letter_right_text"] = split["wrong_letter_right_text"]
    put("report_f1", with_images, "finding_f1")
    put("report_f1", blanked, "finding_f1", "_images_blanked")
    put_difference("report_f1", "finding_f1")
    n_by_task = with_images.get("n_by_task") or {}
    reports = sum(n for task, n in n_by_task.items() if task in ("report", "multiview_report"))
    if reports:
        out["n_report"] = reports
    return out


TASK_LABELS = {"closed": "Closed (yes/no)", "open": "Open", "mcq": "Multiple choice", "report": "Report\n(finding F1)"}


def learning_figure(summary: dict[str, Any], path: Path) -> Path:
    """The demo's proof of learning as one picture: per task the score with the images and with every image
    blanked (95% whiskers), the uniform chance level, and the best image-free guess (the training split's
    most common answer to the same question) where there are."""
    from medgpt_oss.figures import grouped_bars

    keys = [k[: -len("_accuracy")] for k in summary if k.endswith("_accuracy")]
    keys += ["report"] if "report_f1" in summary else []
    metric = {k: "report_f1" if k == "report" else f"{k}_accuracy" for k in keys}
    series = [{"label": label, "values": [summary.get(metric[k] + suffix) for k in keys],
               "intervals": [summary.get(metric[k] + suffix + "_ci95") for k in keys]}
              for label, suffix in (("with the images", ""), ("images blanked", "_images_blanked"))]
    note = (f"{summary.get('checkpoint', '')}; MedSynth test split, "
            + ", ".join(f"{k} n={summary.get(f'n_{k}')}" for k in keys) + "; 95% bootstrap intervals")
    grouped_bars(path, "What the model learnt from the pixels: MedSynth with and without its images",
                 [TASK_LABELS.get(k, k) for k in keys], series, note=note, formats=("png",),
                 levels=[{"label": "chance (uniform guess)", "values": [CHANCE.get(k) for k in keys]},
                         {"label": "best guess without the image", "style": "dotted", "colour": "#d62728",
                          "values": [summary.get(f"{k}_prior") for k in keys]}])
    return path


def evaluate_last(cfg: DictConfig, ckpt: Path) -> dict[str, Any]:
    """The harness on ``ckpt`` as ``recipe.evaluate`` says, into ``<out_dir>/eval``; writes and returns the
    demo's ``<out_dir>/summary.json``. Needs Hydra initialised on conf/ (``@hydra.main`` does it)."""
    from medgpt_oss.evaluate import evaluate

    out_dir = Path(cfg.out_dir)
    eval_dir = out_dir / "eval"
    overrides = evaluation_overrides(cfg.recipe.evaluate, ckpt)
    print(f"\n=== evaluate: {' '.join(overrides)}", flush=True)
    evaluate(hydra.compose(config_name="eval", overrides=overrides), eval_dir)
    harness = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    summary: dict[str, Any] = demo_summary(harness, str(cfg.recipe.evaluate.benchmark))
    summary.update(checkpoint=str(ckpt), evaluation=str(eval_dir),
                   evaluation_command="python -m medgpt_oss.evaluate " + " ".join(overrides))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["figure"] = str(learning_figure(summary, out_dir / "learning.png"))
    summary["curves"] = [str(p) for stage in cfg.recipe.stages
                         if (p := out_dir / stage.name / "curves.png").is_file()]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@hydra.main(config_path=str(CONF_DIR), config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = evaluate_last(cfg, run_curriculum(cfg))
    print(json.dumps(summary, indent=2))
    print(f"\nThe proof of learning, as a figure: {summary['figure']}\nTraining curves: "
          + (", ".join(summary["curves"]) or "none"), flush=True)


if __name__ == "__main__":
    main()
