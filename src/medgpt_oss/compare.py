"""Compare two evaluation runs item by item: the paired difference B - A of every shared metric, with its
95% paired-bootstrap interval.

    python -m medgpt_oss.compare outputs/eval/runs/<A> outputs/eval/runs/<B>
    python -m medgpt_oss.compare <A> <B> --out compare/a_vs_b --resamples 2000 --seed 1

A run is a folder that ``python -m medgpt_oss.evaluate`` wrote: its ``summary.json`` names the benchmarks,
and each ``<benchmark>/predictions.jsonl`` holds the per-item rows. Items are matched by id; each resample
draws the same item ids in both runs (:func:`medgpt_oss.eval.bootstrap.paired_interval`). Items or
benchmarks present in only one run are reported, never silently dropped; a metric is compared over the
items scored in both runs (``n``), which may be fewer than either run's summary used. Metrics that cannot
be recomputed per item (ROUGE-L, CIDEr-D, model-based report scores) are listed with both runs' numbers
and no difference interval.

Run folders are data: only their JSON files are read, and a missing or malformed file is an error naming it.
Writes ``compare.json`` and ``compare.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medgpt_oss.data.jsonl import BadLine, json_lines
from medgpt_oss.eval.bootstrap import item_metrics, paired_differences

EXAMPLES = 5
COUNTS = {"n", "n_items", "n_scored", "n_malformed", "n_missing_predictions", "unparsed"}  # not metrics


class RunFolderError(ValueError):
    """A run folder, or a file in it, that is missing or not what ``evaluate`` writes."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (is {path.parent} a folder written by medgpt_oss.evaluate?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from exc


def read_summary(run: Path) -> dict[str, dict[str, Any]]:
    """benchmark name -> its summary, from ``<run>/summary.json``."""
    if not run.is_dir():
        raise RunFolderError(f"{run}: not a folder (give the run folder that medgpt_oss.evaluate wrote)")
    path = run / "summary.json"
    summary = _read_json(path)
    benchmarks = summary.get("benchmarks") if isinstance(summary, dict) else None
    if not isinstance(benchmarks, dict) or not all(isinstance(v, dict) for v in benchmarks.values()):
        raise RunFolderError(f"{path}: expected {{\"benchmarks\": {{<name>: {{...}}}}, ...}}")
    for name in benchmarks:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise RunFolderError(f"{path}: benchmark name {name!r} is not a folder name")
    return benchmarks


def read_rows(run: Path, benchmark: str) -> list[dict[str, Any]]:
    """The per-item rows of ``<run>/<benchmark>/predictions.jsonl``; every row needs a unique id."""
    path = run / benchmark / "predictions.jsonl"
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; the run's summary.json lists '{benchmark}' but its per-item "
                             "file is not there (compare needs the predictions.jsonl that evaluate writes)")
    rows, seen = [], set()
    for line_no, row in json_lines(path):
        if isinstance(row, BadLine):
            raise RunFolderError(str(row)) from row
        if not isinstance(row.get("id"), str):
            raise RunFolderError(f"{path}:{line_no}: expected a JSON object with a string 'id'")
        if row["id"] in seen:
            raise RunFolderError(f"{path}:{line_no}: id '{row['id']}' appears twice")
        seen.add(row["id"])
        rows.append(row)
    return rows


def _ids_summary(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "examples": ids[:EXAMPLES]}


def compare_benchmark(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], summary_a: dict[str, Any],
                      summary_b: dict[str, Any], resamples: int, seed: int) -> dict[str, Any]:
    """Paired differences of one benchmark's metrics, over the items both runs scored."""
    by_id_b = {r["id"]: r for r in rows_b}
    ids_a = {r["id"] for r in rows_a}
    gold_differs = [r["id"] for r in rows_a if r["id"] in by_id_b and r.get("gold") != by_id_b[r["id"]].get("gold")]
    items = {"n_a": len(rows_a), "n_b": len(rows_b), "matched": sum(1 for r in rows_a if r["id"] in by_id_b),
             "only_in_a": _ids_summary([r["id"] for r in rows_a if r["id"] not in by_id_b]),
             "only_in_b": _ids_summary([r["id"] for r in rows_b if r["id"] not in ids_a]),
             "gold_differs": _ids_summary(gold_differs)}
    metrics_a, metrics_b = item_metrics(rows_a), item_metrics(rows_b)
    metrics = paired_differences(metrics_a, metrics_b, resamples, seed)
    paired_keys = {p[0] for p in metrics_a} | {p[0] for p in metrics_b}
    not_paired = {k: {"a": summary_a[k], "b": summary_b[k], "why": "no per-item scores: not compared item by item"}
                  for k in summary_a if k in summary_b and k not in paired_keys and k not in COUNTS
                  and isinstance(summary_a[k], (int, float)) and isinstance(summary_b[k], (int, float))}
    return {"items": items, "metrics": metrics, **({"not_paired": not_paired} if not_paired else {})}


def compare_runs(run_a: str | Path, run_b: str | Path, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Everything ``compare.json`` holds: per shared benchmark, items matched and the paired differences."""
    if resamples < 1:
        raise ValueError(f"--resamples {resamples}: give at least 1 resample")
    run_a, run_b = Path(run_a), Path(run_b)
    summaries_a, summaries_b = read_summary(run_a), read_summary(run_b)
    shared = [name for name in summaries_a if name in summaries_b]
    result: dict[str, Any] = {
        "run_a": str(run_a.resolve()), "run_b": str(run_b.resolve()),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                      "method": "paired percentile bootstrap over item ids (the same ids drawn in both runs)"},
        "benchmarks_only_in_a": [n for n in summaries_a if n not in summaries_b],
        "benchmarks_only_in_b": [n for n in summaries_b if n not in summaries_a],
        "benchmarks": {},
    }
    for name in shared:
        result["benchmarks"][name] = compare_benchmark(read_rows(run_a, name), read_rows(run_b, name),
                                                       summaries_a[name], summaries_b[name], resamples, seed)
    return result


def _fmt(metric: str, value: float | None, diff: bool = False) -> str:
    if value is None:
        return "–"
    if metric.endswith("accuracy"):  # percent, as in results.md; differences in percentage points
        return f"{100 * value:+.2f}" if diff else f"{100 * value:.2f}"
    return f"{value:+.4f}" if diff else f"{value:.4f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Compare: B - A\n\nA: `{result['run_a']}`  \nB: `{result['run_b']}`  \n"
             f"95% paired bootstrap, {result['bootstrap']['resamples']} resamples, seed {result['bootstrap']['seed']}"
             " (accuracy in %, its difference in percentage points)\n",
             "| benchmark | metric | n | A | B | B − A | 95% CI |", "|---|---|---|---|---|---|---|"]
    notes = []
    for name, bench in result["benchmarks"].items():
        for metric, m in bench["metrics"].items():
            ci = m.get("diff_ci95")
            ci_text = f"{_fmt(metric, ci[0], True)} to {_fmt(metric, ci[1], True)}" if ci else "–"
            lines.append(f"| {name} | {metric} | {m['n']} | {_fmt(metric, m.get('a'))} | {_fmt(metric, m.get('b'))} "
                         f"| {_fmt(metric, m.get('diff'), True)} | {ci_text} |")
            if m.get("unpaired"):
                notes.append(f"- {name} {metric}: scored in only one run: {m['unpaired']['a']} item(s) of A, "
                             f"{m['unpaired']['b']} of B (left out of the comparison)")
        for metric, m in (bench.get("not_paired") or {}).items():
            lines.append(f"| {name} | {metric} | – | {_fmt(metric, m['a'])} | {_fmt(metric, m['b'])} "
                         f"| {_fmt(metric, m['b'] - m['a'], True)} | – (no per-item scores) |")
        items = bench["items"]
        for side in ("a", "b"):
            only = items[f"only_in_{side}"]
            if only["count"]:
                notes.append(f"- {name}: {only['count']} item(s) only in run {side.upper()}, e.g. {only['examples']}")
        if items["gold_differs"]["count"]:
            notes.append(f"- {name}: {items['gold_differs']['count']} matched item(s) have a different gold answer "
                         f"in the two runs (different data?), e.g. {items['gold_differs']['examples']}")
    for side in ("a", "b"):
        only = result[f"benchmarks_only_in_{side}"]
        if only:
            notes.append(f"- benchmarks only in run {side.upper()}: {', '.join(only)}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt_oss.compare",
                                     description="Paired difference B - A of two evaluation runs, with 95% "
                                                 "paired-bootstrap intervals over matched item ids.")
    parser.add_argument("run_a", help="run folder written by python -m medgpt_oss.evaluate (the baseline)")
    parser.add_argument("run_b", help="run folder to compare with it")
    parser.add_argument("--out", help="folder for compare.json and compare.md "
                                      "(default: outputs/compare/<A>_vs_<B>)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = compare_runs(args.run_a, args.run_b, args.resamples, args.seed)
    except ValueError as exc:  # RunFolderError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("outputs/compare") / (
        f"{Path(args.run_a).resolve().name}_vs_{Path(args.run_b).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = markdown(result)
    (out / "compare.md").write_text(text, encoding="utf-8")
    print(text + f"\nwritten: {out / 'compare.json'}, {out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
