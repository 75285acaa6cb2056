"""Write a run's results: ``summary.json`` and a Markdown table (``results.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_COLUMNS = (("bleu_1", "BLEU-1"), ("bleu_4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("cider_d", "CIDEr-D"),
                  ("meteor", "METEOR"), ("chexpert_micro_f1", "CheXpert micro-F1"),
                  ("chexpert_macro_f1", "CheXpert macro-F1"),
                  ("radgraph_f1", "RadGraph-F1"), ("ratescore", "RaTEScore"), ("inv_radcliq_v1", "1/RadCliQ-v1"))


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _ci(interval: Any, percent: bool = False) -> str:
    """A 95% interval as "low–high" ("–" when there is none)."""
    if not interval:
        return "–"
    return f"{_fmt(interval[0], percent)}–{_fmt(interval[1], percent)}"


def _with_ci(holder: dict[str, Any], key: str, percent: bool = False) -> str:
    """The number, and its 95% interval in brackets when the summary has one."""
    interval = holder.get(f"{key}_ci95")
    return _fmt(holder.get(key), percent) + (f" [{_ci(interval, percent)}]" if interval else "")


def _splits(summary: dict[str, Any]) -> str:
    parts = []
    for key, groups in summary.items():
        if key.startswith("by_") and len(groups) > 1:
            parts += [f"{key[3:]}={name} {_with_ci(g, 'accuracy', True)} (n={g['n']})" for name, g in groups.items()]
    return "; ".join(parts)


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    qa = {k: v for k, v in summaries.items() if v.get("accuracy") is not None}
    reports = {k: v for k, v in summaries.items() if "bleu_1" in v}
    lines = []
    if qa:
        lines += ["| benchmark | scored / items | accuracy (%) | 95% CI | unparsed | per split (%) [95% CI] |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {s['n_scored']} / {s['n_items']} | {_fmt(s['accuracy'], True)} "
                  f"| {_ci(s.get('accuracy_ci95'), True)} | {s.get('unparsed', 0)} | {_splits(s)} |"
                  for name, s in qa.items()]
    if reports:
        lines += ["", "| benchmark | scored / items | " + " | ".join(t for _, t in REPORT_COLUMNS) + " |",
                  "|---|---|" + "---|" * len(REPORT_COLUMNS)]
        lines += [f"| {name} | {s['n_scored']} / {s['n_items']} | "
                  + " | ".join(_with_ci(s, k) for k, _ in REPORT_COLUMNS) + " |" for name, s in reports.items()]
        conventions = sorted({s["report_metrics_convention"] for s in reports.values()
                              if "report_metrics_convention" in s})
        if conventions:
            lines += ["", f"Lexical metrics: {', '.join(conventions)} convention (docs/evaluation.md, Report metrics)"]
        if any(f"{k}_ci95" in s for s in reports.values() for k, _ in REPORT_COLUMNS):
            lines += ["", "[low–high]: 95% bootstrap interval over items (docs/evaluation.md says which "
                      "metrics have one)"]
    notes = [f"- {name}: {metric} not computed: {why}" for name, s in summaries.items()
             for metric, why in (s.get("unavailable_metrics") or {}).items()]
    notes += [f"- {name}: {s['n_malformed']} malformed item(s), listed in {name}/predictions.jsonl"
              for name, s in summaries.items() if s.get("n_malformed")]
    notes += [f"- {name}: {s['n_missing_predictions']} item(s) had no prediction and count as wrong"
              for name, s in summaries.items() if s.get("n_missing_predictions")]
    notes += [f"- {name}: finding F1 (positive findings named in the reports) {_with_ci(s, 'finding_f1')}"
              for name, s in summaries.items() if s.get("finding_f1") is not None]
    notes += [f"- {name}: no interval for {metric}: {why}" for name, s in summaries.items()
              for metric, why in (s.get("ci95_skipped") or {}).items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _signed(metric: str, value: Any) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.2f}" if metric.endswith("accuracy") else f"{value:+.4f}"


def _plain(metric: str, value: Any) -> str:
    return _fmt(value, percent=metric.endswith("accuracy"))


def ablation_table(ablations: dict[str, dict[str, Any]]) -> str:
    """``images.mode=both``: each metric with the images and with every image blanked, side by side, and what
    the images add (with - blanked) with its paired 95% interval."""
    lines = ["## Images blanked", "",
             ("Each image benchmark answered twice: with its images, and with every image replaced by the same "
              "black image (same prompts and tokens). Accuracy in %, differences in percentage points; "
              "[low–high]: 95% paired bootstrap interval over the items scored in both runs."), "",
             "| benchmark | metric | n | with images | blanked | with − blanked | 95% CI |",
             "|---|---|---|---|---|---|---|"]
    skipped = []
    for name, ablation in ablations.items():
        if "skipped" in ablation:
            skipped.append(f"- {name}: {ablation['skipped']}")
            continue
        for metric, m in ablation["metrics"].items():
            ci = m.get("images_minus_blanked_ci95")
            ci_text = f"{_signed(metric, ci[0])} to {_signed(metric, ci[1])}" if ci else "–"
            lines.append(f"| {name} | {metric} | {m.get('n', '–')} | {_plain(metric, m['images'])} "
                         f"| {_plain(metric, m['blanked'])} | {_signed(metric, m['images_minus_blanked'])} "
                         f"| {ci_text} |")
    return "\n".join(lines + ([""] + skipped if skipped else [])) + "\n"


BLANK_SUFFIX = "@blank"  # as medgpt_oss.eval.runner's (not imported: runner pulls in the model code)


def published_figures(out_dir: Path) -> dict[str, Any] | None:
    """``benchmark.published`` of the run's config.yaml (``benchmark=report_suite``): the report's numbers."""
    config = out_dir / "config.yaml"
    if not config.is_file():
        return None
    from omegaconf import OmegaConf

    published = OmegaConf.select(OmegaConf.load(config), "benchmark.published", default=None)
    return OmegaConf.to_container(published, resolve=True) if published is not None else None


def published_rows(summaries: dict[str, dict[str, Any]], published: dict[str, Any]) -> list[dict[str, Any]]:
    """Per benchmark of ``published.figures`` (in %): ours with its interval, the blind score (images blanked)
    with its interval where the benchmark has images, the published figure and ours − published (points)."""
    metric = str(published.get("metric") or "accuracy")
    rows = []
    for name, figure in (published.get("figures") or {}).items():
        ours, blind = summaries.get(name) or {}, summaries.get(name + BLANK_SUFFIX) or {}
        value = ours.get(metric)
        rows.append({"benchmark": name, "metric": metric, "published": figure, "n": ours.get("n_scored"),
                     "ours": None if value is None else round(100 * value, 2),
                     "ours_ci95": [round(100 * v, 2) for v in ours[f"{metric}_ci95"]]
                     if ours.get(f"{metric}_ci95") else None,
                     "blind": None if blind.get(metric) is None else round(100 * blind[metric], 2),
                     "blind_ci95": [round(100 * v, 2) for v in blind[f"{metric}_ci95"]]
                     if blind.get(f"{metric}_ci95") else None,
                     "ours_minus_published": None if value is None or figure is None
                     else round(100 * value - float(figure), 2),
                     "run": "scored" if name in summaries else "not run"})
    return rows


def published_table(rows: list[dict[str, Any]], source: str | None = None) -> str:
    def num(v: Any, signed: bool = False) -> str:
        return "–" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")

    def ci(v: Any) -> str:
        return "–" if not v else f"{v[0]:.2f}–{v[1]:.2f}"

    lines = ["## Published figures", "",
             (f"Ours beside the report's published figure ({source or 'benchmark.published'}), in %; "
              "[95% CI] over items; blind: every image blanked (images.mode=both; – for text-only "
              "benchmarks or when not asked for); difference in percentage points."), "",
             "| benchmark | n | ours | 95% CI | blind (images blanked) | 95% CI | published | ours − published |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["run"] != "scored":
            lines.append(f"| {r['benchmark']} | – | not run | – | – | – | {num(r['published'])} | – |")
            continue
        lines.append(f"| {r['benchmark']} | {r['n'] if r['n'] is not None else '–'} | {num(r['ours'])} "
                     f"| {ci(r['ours_ci95'])} | {num(r['blind'])} | {ci(r['blind_ci95'])} | {num(r['published'])} "
                     f"| {num(r['ours_minus_published'], True)} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, summaries: dict[str, dict[str, Any]], meta: dict[str, Any],
                  images_blanked: dict[str, dict[str, Any]] | None = None) -> None:
    """``images_blanked``: per benchmark, the side-by-side of :func:`medgpt_oss.eval.runner.image_ablation`
    (``images.mode=both``), written to summary.json under that key and to results.md as its own table.
    A run whose config names published figures (``benchmark.published``, e.g. ``benchmark=report_suite``)
    also gets them beside ours: ``published`` in summary.json, "Published figures" first in results.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    published = published_figures(out_dir)
    rows = published_rows(summaries, published) if published else None
    with open(out_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump({"benchmarks": summaries, **({"images_blanked": images_blanked} if images_blanked else {}),
                   **({"published": {"source": published.get("source"), "rows": rows}} if rows else {}),
                   "meta": meta}, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    header = f"# Evaluation results\n\ncheckpoint: `{meta.get('ckpt')}`  \npredictions: `{meta.get('predictions')}`\n\n"
    body = ((published_table(rows, published.get("source")) + "\n" if rows else "") + markdown_table(summaries)
            + ("\n" + ablation_table(images_blanked) if images_blanked else ""))
    (out_dir / "results.md").write_text(header + body, encoding="utf-8")
