"""Experiments in one command: every arm of a sweep trained and evaluated (Figure 1), or a checkpoint
evaluated per input setting (Figure 2); the comparison and its figure written directly in ``out_dir``.

    python -m medgpt_oss.experiment experiment=figure1 out_dir=outputs/figure1             # encoder ablation
    python -m medgpt_oss.experiment experiment=figure2 out_dir=outputs/figure2 ckpt=<ckpt>  # report settings
    python -m medgpt_oss.experiment experiment=figure1 debug=quick out_dir=/tmp/fig1       # reduced run
    python -m medgpt_oss.experiment experiment=figure1 'hydra.sweeper.params.encoder="clip,siglip"'
    python -m medgpt_oss.experiment experiment=figure1 '~hydra.sweeper.params.encoder' \\
        '+hydra.sweeper.params.lora="none,r16"'                                            # any other sweep

**Sweeps** (``kind: sweep``, conf/experiment/figure1.yaml). The arms are the cartesian product of
``hydra.sweeper.params`` (Hydra's sweep syntax: ``a,b``, ``choice(...)``, ``range(...)``), each named by its
swept values (``clip``; ``projector-linear_lora-r16`` for several keys) and run in ``<out_dir>/arms/<arm>/``:
the recipe's stages in order, as :func:`medgpt_oss.pipeline.run_curriculum` composes them
(``+stage=<name>``, the recipe's ``common`` and the stage's overrides, ``overrides``, the arm's, then
``debug=quick``'s), each starting from the previous stage's ``last.ckpt``; then the suite through the
harness (``python -m medgpt_oss.evaluate``) into ``<arm>/eval/``. A rerun skips what finished: an arm whose
``eval/summary.json`` exists, a stage with its ``stage_done.json``; a stage that stopped part-way resumes
from its ``last.ckpt`` (``ckpt_path``). The comparison has one row per arm and, per column of the suite (a
benchmark's metric, and the same with every image blanked), the number, its 95% bootstrap interval, and the
paired difference to the reference arm (the same item ids drawn in both,
:func:`medgpt_oss.eval.bootstrap.paired_differences`) with its interval; the swept keys come from the
overrides, never from a list of encoders.

**Settings** (``kind: settings``, conf/experiment/figure2.yaml). ``ckpt`` (or, when null, the checkpoint the
recipe trains into ``<out_dir>/train/``) is evaluated once per setting into ``<out_dir>/settings/<name>/``;
each setting's row holds the report metrics that summary.json has (finding F1, the CheXpert-style labeler's
F1s, RadGraph-F1 / RaTEScore / 1/RadCliQ when installed), and ``change_accuracy`` for settings marked
``change``: the change the report's Comparison line states against the one MedSynth drew.

Artefacts in ``out_dir``: ``comparison.csv``, ``comparison.md``, ``comparison.json``, ``<name>.png`` and
``<name>.pdf``.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medgpt_oss.config import CONF_DIR

STAGE_DONE = "stage_done.json"
BLANK = "@blank"


# -- arms: the swept keys and their values ---------------------------------------------------------------

def sweep_params(cfg: DictConfig) -> dict[str, str]:
    """``hydra.sweeper.params`` of the composed config (``return_hydra_config``) or of the running job."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if params is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            params = HydraConfig.get().sweeper.get("params")
    return {str(k): str(v) for k, v in (params or {}).items()}


def sweep_values(key: str, spec: str) -> list[str]:
    """The values one swept key takes, read with Hydra's override grammar (``a,b``, ``choice(a,b)``,
    ``range(1,4)``, ``glob(...)`` over the key's config group is not supported)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def arms_of(params: Mapping[str, str]) -> list[dict[str, str]]:
    """Every combination of the swept values (first key slowest), as ``{key: value}``."""
    if not params:
        return [{}]
    keys = list(params)
    values = [sweep_values(k, params[k]) for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def arm_name(arm: Mapping[str, str]) -> str:
    """The arm's folder and label from its swept values: ``clip`` for one swept key, ``projector-linear_lora-r16``
    for several (characters outside ``A-Za-z0-9.-`` become ``-``: the name goes into override values)."""
    if not arm:
        return "default"

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.\-]", "-", text)

    if len(arm) == 1:
        return safe(next(iter(arm.values())))
    return "_".join(f"{safe(k.split('.')[-1])}-{safe(v)}" for k, v in arm.items())


def arm_overrides(arm: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in arm.items()]


# -- training: the recipe's stages, skipping finished ones, resuming a stopped one ----------------------

def _train(cfg: DictConfig) -> None:  # patched in tests
    from medgpt_oss.train import train

    train(cfg)


def _evaluate(cfg: DictConfig, out_dir: Path) -> None:  # patched in tests
    from medgpt_oss.evaluate import evaluate

    evaluate(cfg, out_dir)


def _quick(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.quick, resolve=True) if cfg.get("quick") else {}


def stage_overrides(cfg: DictConfig, stage: DictConfig, stage_dir: Path, extra: Sequence[str],
                    init_from: Path | None) -> list[str]:
    """conf/train.yaml overrides of one stage of one arm (later ones win)."""
    overrides = [f"+stage={stage.name}", f"scale={cfg.scale}", f"paths.data_dir={cfg.paths.data_dir}",
                 *cfg.recipe.common, *stage.overrides, *cfg.overrides, *extra, *_quick(cfg).get("train", []),
                 f"paths.output_dir={stage_dir}"]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    return [str(o) for o in overrides]


def run_stages(cfg: DictConfig, run_dir: Path, extra: Sequence[str] = ()) -> Path:
    """Train the recipe's stages into ``<run_dir>/<stage>/``; returns the last stage's ``last.ckpt``.

    A stage with ``stage_done.json`` is skipped; one with a ``last.ckpt`` but no marker (stopped part-way)
    resumes from it (``ckpt_path``); any other starts from the previous stage's checkpoint (``init_from``)."""
    previous: Path | None = None
    for stage in cfg.recipe.stages:
        stage_dir = run_dir / stage.name
        last = stage_dir / "checkpoints" / "last.ckpt"
        if (stage_dir / STAGE_DONE).is_file() and last.is_file():
            print(f"=== {run_dir.name}/{stage.name}: finished before, skipped", flush=True)
            previous = last
            continue
        overrides = stage_overrides(cfg, stage, stage_dir, extra, previous)
        if last.is_file():
            overrides.append(f"ckpt_path={last}")
            print(f"=== {run_dir.name}/{stage.name}: resuming from {last}", flush=True)
        print(f"\n=== stage {stage.name}: {' '.join(overrides)}", flush=True)
        _train(hydra.compose(config_name="train", overrides=overrides))
        if not last.is_file():
            raise RuntimeError(f"stage {stage.name} wrote no {last}")
        (stage_dir / STAGE_DONE).write_text(json.dumps({"checkpoint": str(last), "overrides": overrides,
                                                        "resumed": any(o.startswith("ckpt_path=")
                                                                       for o in overrides)}, indent=2) + "\n")
        previous = last
    if previous is None:
        raise ValueError("the recipe has no stages")
    return previous


# -- evaluation through the harness -----------------------------------------------------------------------

def _data_root_of(ckpt: Path) -> str | None:
    config = Path(ckpt).resolve().parent.parent / "config.yaml"
    return str(OmegaConf.load(config).data.root) if config.is_file() else None


def evaluation_overrides(cfg: DictConfig, spec: Mapping[str, Any], ckpt: Path, benchmarks: Sequence[str],
                         extra: Sequence[str] = ()) -> list[str]:
    """conf/eval.yaml overrides: ``spec`` holds images, limit, batch_size, max_new_tokens, root, overrides
    (debug=quick's ``quick.evaluate`` replaces limit, batch size, tokens and resamples)."""
    quick = _quick(cfg).get("evaluate") or {}
    spec = {**spec, **{k: v for k, v in quick.items() if k != "resamples"}}
    resamples = quick.get("resamples", cfg.bootstrap.resamples)
    names = list(benchmarks)
    overrides = [f"ckpt={ckpt}", "benchmark=" + (names[0] if len(names) == 1 else "[" + ",".join(names) + "]"),
                 f"paths.data_dir={cfg.paths.data_dir}", f"images.mode={spec.get('images') or 'normal'}",
                 f"batch_size={spec.get('batch_size') or 8}", f"bootstrap.resamples={resamples}",
                 f"bootstrap.seed={cfg.bootstrap.seed}"]
    if spec.get("max_new_tokens") is not None:
        overrides.append(f"max_new_tokens={spec['max_new_tokens']}")
    limit = spec.get("limit")
    if "medsynth" in names:
        root = spec.get("root") or _data_root_of(ckpt)
        if root is not None:
            overrides.append(f"benchmark.medsynth.root={root}")
        if limit is not None:
            overrides.append(f"+benchmark.medsynth.limit_per_task={limit}")
    elif limit is not None:
        overrides.append(f"limit={limit}")
    elif spec.get("root") is not None and len(names) == 1:
        overrides.append(f"benchmark.{names[0]}.root={spec['root']}")
    return overrides + [str(o) for o in (spec.get("overrides") or [])] + [str(o) for o in extra] + [
        str(o) for o in cfg.eval_overrides]


def run_evaluation(cfg: DictConfig, spec: Mapping[str, Any], ckpt: Path, benchmarks: Sequence[str],
                   eval_dir: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The harness into ``eval_dir`` unless its summary.json is there already; returns that summary."""
    summary = eval_dir / "summary.json"
    if not summary.is_file():
        overrides = evaluation_overrides(cfg, spec, ckpt, benchmarks, extra)
        print(f"\n=== evaluate: {' '.join(overrides)}", flush=True)
        _evaluate(hydra.compose(config_name="eval", overrides=overrides), eval_dir)
    else:
        print(f"=== {eval_dir}: evaluated before, kept", flush=True)
    return json.loads(summary.read_text(encoding="utf-8"))


# -- reading metrics out of run folders ------------------------------------------------------------------

def parse_metric(metric: str) -> tuple[str, ...]:
    """``by_task[closed].accuracy`` -> ("by_task", "closed", "accuracy"); ``finding_f1`` -> ("finding_f1",)."""
    m = re.fullmatch(r"(\w+)\[([^\]]+)\]\.(\w+)", metric)
    return (m.group(1), m.group(2), m.group(3)) if m else (metric,)


def metric_of(summary: Mapping[str, Any], metric: str) -> tuple[float | None, list[float] | None]:
    """A metric's value and its 95% interval (``<metric>_ci95``) in one benchmark's summary."""
    holder: Any = summary
    path = parse_metric(metric)
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, Mapping) else None
    if not isinstance(holder, Mapping):
        return None, None
    value = holder.get(path[-1])
    return (float(value) if isinstance(value, (int, float)) else None), holder.get(path[-1] + "_ci95")


def _benchmark_of(eval_dir: Path, name: str) -> Any | None:
    """The benchmark adapter as the run configured it (its own per-item metrics, e.g. MedSynth's finding F1)."""
    config = eval_dir / "config.yaml"
    try:
        bcfg = OmegaConf.load(config).benchmark[name.removesuffix(BLANK)]
        return hydra.utils.instantiate(bcfg, _convert_="all")
    except Exception:  # noqa: BLE001 - only the extra metrics are lost; the shared ones still pair
        return None


class RunMetrics:
    """Per-item metrics of an evaluation folder's benchmarks, read once."""

    def __init__(self, eval_dir: Path) -> None:
        self.eval_dir, self._cache = Path(eval_dir), {}

    def rows(self, benchmark: str) -> list[dict[str, Any]]:
        from medgpt_oss.compare import read_rows

        return read_rows(self.eval_dir, benchmark)

    def metrics(self, benchmark: str) -> dict[tuple[str, ...], Any]:
        if benchmark not in self._cache:
            from medgpt_oss.eval.bootstrap import benchmark_item_metrics

            adapter = _benchmark_of(self.eval_dir, benchmark)
            self._cache[benchmark] = benchmark_item_metrics(self.rows(benchmark), adapter)
        return self._cache[benchmark]


# -- Figure 1 and any other sweep ----------------------------------------------------------------------------

def suite_columns(suite: Mapping[str, Any], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The comparison's columns: the suite's (or each benchmark's accuracy), each followed by its
    images-blanked twin when the run has ``<benchmark>@blank``."""
    listed = suite.get("columns") or [{"key": b, "label": b, "benchmark": b, "metric": "accuracy"}
                                      for b in suite["benchmarks"]]
    benchmarks = summary.get("benchmarks") or {}
    out = []
    for col in listed:
        col = {"key": col["key"], "label": col.get("label") or col["key"], "benchmark": col["benchmark"],
               "metric": col.get("metric") or "accuracy"}
        if col["benchmark"] not in benchmarks:
            continue
        out.append({**col, "blanked": False})
        if col["benchmark"] + BLANK in benchmarks:
            out.append({**col, "key": col["key"] + BLANK, "label": col["label"] + "\n(images blanked)",
                        "benchmark": col["benchmark"] + BLANK, "blanked": True})
    return out


def compare_arms(arms: Sequence[dict[str, Any]], columns: Sequence[Mapping[str, Any]], reference: int,
                 resamples: int, seed: int) -> None:
    """Fill each arm's ``metrics[<column>]``: value, ci95, n, and the paired difference to the reference arm
    (``diff``, ``diff_ci95``, ``n_paired``) over the items both scored."""
    from medgpt_oss.eval.bootstrap import display, paired_differences

    runs = [RunMetrics(Path(a["eval"])) for a in arms]
    for col in columns:
        path = parse_metric(col["metric"])
        ref_metrics = runs[reference].metrics(col["benchmark"])
        for arm, run in zip(arms, runs, strict=True):
            summary = (arm["summary"].get("benchmarks") or {}).get(col["benchmark"]) or {}
            value, ci = metric_of(summary, col["metric"])
            entry: dict[str, Any] = {"value": value, "ci95": ci}
            mine = run.metrics(col["benchmark"])
            if path in mine:
                entry["n"] = mine[path].n
            if path in ref_metrics and path in mine:
                d = paired_differences({path: ref_metrics[path]}, {path: mine[path]}, resamples, seed)[display(path)]
                entry.update(diff=d.get("diff"), diff_ci95=d.get("diff_ci95"), n_paired=d["n"])
            arm["metrics"][col["key"]] = entry


def reference_index(reference: Any, arms: Sequence[Mapping[str, Any]]) -> int:
    """``reference``: null (the first arm), an arm name or swept value (``clip``), ``key=value``, or a mapping of
    swept values."""
    if reference in (None, ""):
        return 0
    for i, arm in enumerate(arms):
        values = arm["swept"]
        if isinstance(reference, Mapping):
            if all(str(values.get(k)) == str(v) for k, v in reference.items()):
                return i
        elif str(reference) in (arm["name"], *values.values(), *arm["overrides"]):
            return i
    raise ValueError(f"reference={reference}: no arm matches; arms: {[a['name'] for a in arms]}")


def run_sweep(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.out_dir)
    params = sweep_params(cfg)
    arms: list[dict[str, Any]] = []
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    for values in arms_of(params):
        name = arm_name(values)
        arm_dir = out_dir / "arms" / name
        eval_dir = arm_dir / "eval"
        if (eval_dir / "summary.json").is_file():
            print(f"=== arm {name}: finished before (its eval/summary.json is there), skipped", flush=True)
            summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
        else:
            print(f"\n===== arm {name}", flush=True)
            ckpt = run_stages(cfg, arm_dir, arm_overrides(values))
            summary = run_evaluation(cfg, suite, ckpt, suite["benchmarks"], eval_dir)
        arms.append({"name": name, "swept": values, "overrides": arm_overrides(values), "dir": str(arm_dir),
                     "eval": str(eval_dir), "checkpoint": str(arm_dir / cfg.recipe.stages[-1].name / "checkpoints"
                                                               / "last.ckpt"),
                     "summary": summary, "metrics": {}})
    ref = reference_index(cfg.get("reference"), arms)
    columns = suite_columns(suite, arms[ref]["summary"])
    resamples = int((_quick(cfg).get("evaluate") or {}).get("resamples", cfg.bootstrap.resamples))
    compare_arms(arms, columns, ref, resamples, int(cfg.bootstrap.seed))
    result = {
        "experiment": str(cfg.name), "kind": "sweep", "title": str(cfg.title), "scale": str(cfg.scale),
        "swept": list(params), "sweep": params, "reference": arms[ref]["name"],
        "bootstrap": {"resamples": resamples, "seed": int(cfg.bootstrap.seed), "level": 0.95,
                      "method": "percentile bootstrap over items; differences paired over the item ids both "
                                "arms scored (the same ids drawn in both)"},
        "columns": columns,
        "arms": [{k: v for k, v in a.items() if k != "summary"} for a in arms],
        "debug": "quick" if cfg.get("quick") else None,
    }
    write_sweep(out_dir, result)
    return result


def _pct(metric_key: str, value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _ci_text(ci: Any, signed: bool = False) -> str:
    return f"[{_pct('', ci[0], signed)}, {_pct('', ci[1], signed)}]" if ci else ""


def write_sweep(out_dir: Path, result: dict[str, Any]) -> None:
    from medgpt_oss.figures import grouped_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    columns, arms, swept = result["columns"], result["arms"], result["swept"]
    header = ["arm", *swept]
    for c in columns:
        k = c["key"]
        header += [k, f"{k}_ci95_low", f"{k}_ci95_high", f"{k}_n", f"{k}_diff", f"{k}_diff_ci95_low",
                   f"{k}_diff_ci95_high"]
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for a in arms:
            row: list[Any] = [a["name"], *(a["swept"].get(k) for k in swept)]
            for c in columns:
                m = a["metrics"].get(c["key"], {})
                ci, dci = m.get("ci95") or [None, None], m.get("diff_ci95") or [None, None]
                row += [m.get("value"), ci[0], ci[1], m.get("n"), m.get("diff"), dci[0], dci[1]]
            writer.writerow(["" if v is None else v for v in row])
    def label(c: Mapping[str, Any]) -> str:
        return c["label"].replace("\n", " ")

    lines = [f"# {result['title']}", "",
             f"Scale `{result['scale']}`{', debug=quick (reduced run)' if result.get('debug') else ''}; swept: "
             + (", ".join(f"`{k}` ∈ {{{result['sweep'][k]}}}" for k in swept) or "nothing") + ". "
             f"Values in % (accuracy or F1) with their 95% bootstrap interval [low, high] "
             f"({result['bootstrap']['resamples']} resamples over items).", "",
             "| arm | " + " | ".join(label(c) for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for a in arms:
        lines.append(f"| {a['name']} | " + " | ".join(
            f"{_pct(c['key'], a['metrics'][c['key']].get('value'))} {_ci_text(a['metrics'][c['key']].get('ci95'))}"
            for c in columns) + " |")
    lines += ["", f"## Paired difference to the reference arm `{result['reference']}`", "",
              "Arm − reference in percentage points over the items both arms scored, with the 95% paired "
              "bootstrap interval (the same item ids drawn in both).", "",
              "| arm | " + " | ".join(label(c) for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for a in arms:
        lines.append(f"| {a['name']} | " + " | ".join(
            f"{_pct(c['key'], a['metrics'][c['key']].get('diff'), True)} "
            f"{_ci_text(a['metrics'][c['key']].get('diff_ci95'), True)}" for c in columns) + " |")
    lines += ["", "Run folders: " + ", ".join(f"`{a['dir']}`" for a in arms), ""]
    (out_dir / "comparison.md").write_text("\n".join(lines), encoding="utf-8")
    series = [{"label": a["name"], "values": [a["metrics"][c["key"]].get("value") for c in columns],
               "intervals": [a["metrics"][c["key"]].get("ci95") for c in columns]} for a in arms]
    n_items = sorted({a["metrics"][c["key"]].get("n") for a in arms for c in columns} - {None})
    note = (f"Whiskers: 95% bootstrap intervals over items (n = {', '.join(map(str, n_items))} per bar). "
            f"Scale: {result['scale']}" + (", reduced run (debug=quick)" if result.get("debug") else "") + ".")
    grouped_bars(out_dir / f"{result['experiment']}.png", result["title"], [c["label"] for c in columns], series,
                 ylabel="accuracy / F1 (%)", note=note, legend_title=", ".join(swept) or None)


# -- Figure 2: a checkpoint per setting ---------------------------------------------------------------------

_CHANGE_WORDS = (("none", "no nodule on either"), ("new", "is new"), ("grown", "has grown"),
                 ("resolved", "has resolved"), ("stable", "is stable"))


def change_of(text: str | None) -> str | None:
    """The change a MedSynth longitudinal report states in its Comparison line (or anywhere, without one):
    new, grown, resolved, stable or none; None when it states none of them."""
    from medgpt_oss.data.medsynth.text import CHANGE_SENTENCES

    if not text:
        return None
    tail = text.split("Comparison:", 1)[1] if "Comparison:" in text else text
    tail = tail.lower()
    for change, sentence in CHANGE_SENTENCES.items():
        if sentence.lower().rstrip(".") in tail:
            return change
    for change, words in _CHANGE_WORDS:
        if words in tail:
            return change
    return None


def change_metric(rows: Sequence[Mapping[str, Any]]) -> Any | None:
    """Per report: does the stated change equal the reference report's (an ItemMetric of the mean)."""
    import numpy as np

    from medgpt_oss.eval.bootstrap import ItemMetric, _mean

    scored = [r for r in rows if r.get("error") is None and r.get("kind") == "report" and change_of(r.get("gold"))]
    if not scored:
        return None
    correct = [float(change_of(r.get("output")) == change_of(r["gold"])) for r in scored]
    return ItemMetric([str(r["id"]) for r in scored], np.array(correct, dtype=np.float64)[:, None], _mean)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    from medgpt_oss.eval.bootstrap import interval

    out_dir = Path(cfg.out_dir)
    ckpt = Path(cfg.ckpt) if cfg.get("ckpt") else None
    if ckpt is None:
        print("=== no ckpt given: training the recipe first", flush=True)
        ckpt = run_stages(cfg, out_dir / "train")
    spec = OmegaConf.to_container(cfg.evaluate, resolve=True)
    resamples = int((_quick(cfg).get("evaluate") or {}).get("resamples", cfg.bootstrap.resamples))
    metrics = OmegaConf.to_container(cfg.metrics, resolve=True)
    settings = []
    for s in OmegaConf.to_container(cfg.settings, resolve=True):
        eval_dir = out_dir / "settings" / s["name"]
        summary = run_evaluation(cfg, spec, ckpt, [s["benchmark"]], eval_dir, s.get("overrides") or [])
        bench = (summary.get("benchmarks") or {}).get(s["benchmark"]) or {}
        values: dict[str, Any] = {}
        for m in metrics:
            value, ci = metric_of(bench, m["key"])
            if value is not None:
                values[m["key"]] = {"value": value, "ci95": ci, "n": bench.get("n_scored")}
        if s.get("change"):
            metric = change_metric(RunMetrics(eval_dir).rows(s["benchmark"]))
            if metric is not None:
                values["change_accuracy"] = {"value": metric.point(), "ci95": interval(metric, resamples,
                                                                                       int(cfg.bootstrap.seed)),
                                             "n": metric.n}
        settings.append({"name": s["name"], "label": s.get("label") or s["name"], "benchmark": s["benchmark"],
                         "eval": str(eval_dir), "n_reports": bench.get("n_scored"), "metrics": values,
                         "unavailable": bench.get("unavailable_metrics") or {}})
    shown = [m for m in metrics if any(m["key"] in s["metrics"] for s in settings)]
    result = {"experiment": str(cfg.name), "kind": "settings", "title": str(cfg.title), "scale": str(cfg.scale),
              "checkpoint": str(ckpt), "metrics": shown,
              "not_available": [m["key"] for m in metrics if m not in shown],
              "bootstrap": {"resamples": resamples, "seed": int(cfg.bootstrap.seed), "level": 0.95,
                            "method": "percentile bootstrap over reports"},
              "settings": settings, "debug": "quick" if cfg.get("quick") else None}
    write_settings(out_dir, result)
    return result


def write_settings(out_dir: Path, result: dict[str, Any]) -> None:
    from medgpt_oss.figures import metric_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    metrics, settings = result["metrics"], result["settings"]
    header = ["setting", "label", "benchmark", "n_reports"]
    for m in metrics:
        header += [m["key"], f"{m['key']}_ci95_low", f"{m['key']}_ci95_high", f"{m['key']}_n"]
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for s in settings:
            row: list[Any] = [s["name"], s["label"], s["benchmark"], s["n_reports"]]
            for m in metrics:
                v = s["metrics"].get(m["key"], {})
                ci = v.get("ci95") or [None, None]
                row += [v.get("value"), ci[0], ci[1], v.get("n")]
            writer.writerow(["" if v is None else v for v in row])
    lines = [f"# {result['title']}", "",
             f"Checkpoint `{result['checkpoint']}`; scale `{result['scale']}`"
             + (", debug=quick (reduced run)" if result.get("debug") else "")
             + ". Values in % with their 95% bootstrap interval [low, high] over reports.", "",
             "| setting | benchmark | reports | " + " | ".join(m["label"] for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for s in settings:
        lines.append(f"| {s['label']} | {s['benchmark']} | {s['n_reports']} | " + " | ".join(
            f"{_pct('', s['metrics'].get(m['key'], {}).get('value'))} "
            f"{_ci_text(s['metrics'].get(m['key'], {}).get('ci95'))}" for m in metrics) + " |")
    if result["not_available"]:
        lines += ["", "Not computed here: " + ", ".join(result["not_available"])
                  + " (model-based metrics need their packages and weights; change accuracy needs a drawn change)."]
    wanted = tuple(m["key"] for m in metrics) + tuple(result["not_available"])
    notes = [f"- {s['label']}: {k}: {why}" for s in settings for k, why in s["unavailable"].items()
             if k.startswith(wanted) or any(w.startswith(k) for w in wanted)]
    lines += (["", *notes] if notes else []) + [""]
    (out_dir / "comparison.md").write_text("\n".join(lines), encoding="utf-8")
    panels = [{"label": m["label"], "values": [s["metrics"].get(m["key"], {}).get("value") for s in settings],
               "intervals": [s["metrics"].get(m["key"], {}).get("ci95") for s in settings]} for m in metrics]
    n_reports = ", ".join(f"{s['label']} {s['n_reports']}" for s in settings)
    note = (f"Whiskers: 95% bootstrap intervals over reports (n: {n_reports}). Scale: {result['scale']}"
            + (", reduced run (debug=quick)" if result.get("debug") else "") + ".")
    metric_panels(out_dir / f"{result['experiment']}.png", result["title"], [s["label"] for s in settings], panels,
                  note=note)


RUNNERS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {"sweep": run_sweep, "settings": run_settings}


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    kind = str(cfg.get("kind") or "sweep")
    if kind not in RUNNERS:
        raise ValueError(f"experiment kind={kind}: choose one of {', '.join(RUNNERS)}")
    return RUNNERS[kind](cfg)


@hydra.main(config_path=str(CONF_DIR), config_name="experiment", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_experiment(cfg)
    out_dir = Path(cfg.out_dir)
    print((out_dir / "comparison.md").read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(out_dir / n) for n in ('comparison.csv', 'comparison.md', 'comparison.json'))},"
          f" {out_dir / (result['experiment'] + '.png')}")


if __name__ == "__main__":
    sys.exit(main())
