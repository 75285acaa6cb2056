"""Run one benchmark: items -> prompts -> answers (model or predictions file) -> scored rows.

Sharding: rank ``r`` of ``w`` takes items ``r, r+w, r+2w, ...`` and writes
``shards/rank{r}.jsonl`` plus a ``rank{r}.done`` marker; rank 0 waits for all
markers, merges the rows back into item order in ``predictions.jsonl`` and
summarises. Ranks coordinate through files only (no process group), so the
same code serves ``torchrun``, SLURM arrays and separate machines sharing a
folder, and the merged result equals an unsharded run (tested).

The summary gives each metric that the per-item rows can recompute a 95% bootstrap interval
(``<metric>_ci95``, see :mod:`medgpt_oss.eval.bootstrap`); report rows keep their CheXpert labels
(``chexpert``) so intervals and run comparisons need nothing but ``predictions.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.jsonl import BadLine, json_lines, read_jsonl
from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem
from medgpt_oss.eval.prompts import build_prompt, to_record
from medgpt_oss.harmony import answer_in, final_answer


@dataclass
class RunOptions:
    out_dir: Path
    prompts: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    batch_size: int = 8
    limit: int | None = None
    likelihood: dict[str, Any] | None = None   # {"enabled": bool, "formats": {...}}
    wait_s: float = 3600.0
    progress: bool = True
    bootstrap: dict[str, int] = field(default_factory=lambda: {"resamples": 1000, "seed": 0})  # resamples 0: off


@dataclass
class PredictionsFile:
    """The answers of a predictions file, and what about its ids deserves a look."""

    path: str
    outputs: dict[str, str | None]
    lines: int = 0
    non_string_ids: list[str] = field(default_factory=list)  # e.g. 162 where "vqa_rad-162" is meant
    duplicate_ids: list[str] = field(default_factory=list)   # repeated with the same output: kept once

    def check_against(self, item_ids: Iterable[str], benchmarks: Iterable[str]) -> dict[str, Any]:
        """Counts for the run's summary; a file that names no item at all is an error showing the id form."""
        known = set(item_ids)
        unknown = [i for i in self.outputs if i not in known]
        if self.outputs and len(unknown) == len(self.outputs):
            raise ValueError(f"none of the {len(self.outputs)} ids in {self.path} names an item of "
                             f"{sorted(benchmarks)}: they look like {sorted(known)[:3]}, yours like "
                             f"{unknown[:3]}; use the ids of a run's <benchmark>/predictions.jsonl")
        return {"lines": self.lines, "answers": len(self.outputs), "matched": len(self.outputs) - len(unknown),
                "unknown": {"count": len(unknown), "examples": unknown[:5]},
                "non_string_ids": {"count": len(self.non_string_ids), "examples": self.non_string_ids[:5]},
                "duplicate_ids": {"count": len(self.duplicate_ids), "examples": self.duplicate_ids[:5]}}


def read_predictions(path: str | Path) -> PredictionsFile:
    """The answers of a JSONL of ``{"id", "output"}`` lines (answers produced elsewhere).

    An ``output`` that is not text (``null``, a number) is a missing answer, never the string "None" (which
    would match a gold "None"); raw harmony output is reduced to its final channel (``None``: it has none).
    An id given twice is kept once when both answers agree and is an error when they differ.
    """
    found = PredictionsFile(str(path), {})
    for line_no, rec in json_lines(path):
        if isinstance(rec, BadLine) or "id" not in rec or "output" not in rec:
            problem = rec.problem if isinstance(rec, BadLine) else f"it has {sorted(rec)}"
            raise ValueError(f"{path}:{line_no}: expected a JSON object with 'id' and 'output' ({problem})")
        rid, output = rec["id"], rec["output"]
        found.lines += 1
        if not isinstance(rid, str):
            found.non_string_ids.append(str(rid))
        rid = str(rid)
        answer = answer_in(output) if isinstance(output, str) else None
        if rid in found.outputs:
            if found.outputs[rid] != answer:
                raise ValueError(f"{path}:{line_no}: id '{rid}' was answered before with a different output; "
                                 "keep one answer per id")
            found.duplicate_ids.append(rid)
            continue
        found.outputs[rid] = answer
    return found


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # readers never see half a file


def _base_row(benchmark: Benchmark, index: int, item: EvalItem | MalformedItem) -> dict[str, Any]:
    if isinstance(item, MalformedItem):
        return {"index": index, "benchmark": benchmark.name, "id": item.id, "error": item.problem, "correct": None}
    return {"index": index, "benchmark": benchmark.name, "id": item.id, "kind": item.kind, "groups": item.groups,
            "gold": item.gold, **({"options": item.options} if item.options else {})}


class ModelAnswerer:
    """Answers prompts with a :class:`~medgpt_oss.eval.generation.Generator` (batched) or by likelihood."""

    def __init__(self, generator: Any, batch_size: int = 8, likelihood: Mapping[str, Any] | None = None,
                 progress: bool = True) -> None:
        self.generator, self.batch_size, self.progress = generator, batch_size, progress
        self.likelihood = dict(likelihood or {})

    def __call__(self, work: list[tuple[EvalItem, str]]) -> dict[str, dict[str, Any]]:
        """id -> {"output"} or {"error"} for each (item, prompt)."""
        from tqdm import tqdm

        from medgpt_oss.data.conversation import ConversationError  # imports torch: model runs only

        results: dict[str, dict[str, Any]] = {}
        ready: list[tuple[EvalItem, dict[str, Any], str]] = []
        for item, prompt in work:
            try:
                ready.append((item, self.generator.prepare(to_record(item, prompt)), prompt))
            except ConversationError as exc:  # unreadable image, bad placeholders, ...: reported by id
                results[item.id] = {"error": exc.problem}
        # Longest prompts first, similar lengths together: less padding per batch, and an
        # out-of-memory error shows up in the first batch rather than the last.
        ready.sort(key=lambda r: -len(r[1]["input_ids"]))
        bar = tqdm(total=len(ready), unit="item", disable=not self.progress, desc="answering")
        start = time.perf_counter()
        by_likelihood = [r for r in ready if self.likelihood.get("enabled") and r[0].kind in ("closed", "mcq")]
        free = [r for r in ready if not (self.likelihood.get("enabled") and r[0].kind in ("closed", "mcq"))]
        for item, _, prompt in by_likelihood:
            from medgpt_oss.eval.likelihood import pick_by_likelihood

            best, scores = pick_by_likelihood(self.generator, item, prompt, self.likelihood.get("formats"))
            results[item.id] = {"output": best, "loglik": scores}
            bar.update(1)
        for i in range(0, len(free), self.batch_size):
            chunk = free[i:i + self.batch_size]
            for (item, _, _), reply in zip(chunk, self.generator.replies([s for _, s, _ in chunk])):
                # The answer is the final channel; a reply without one is unparseable (output None, scored wrong).
                results[item.id] = {"output": final_answer(reply), "reply": reply}
            bar.update(len(chunk))
        bar.close()
        elapsed = time.perf_counter() - start
        if ready and self.progress:
            print(f"answered {len(ready)} items in {elapsed:.1f} s ({len(ready) / max(elapsed, 1e-9):.2f} items/s)")
        return results


def score_shard(benchmark: Benchmark, items: list[tuple[int, EvalItem | MalformedItem]], opts: RunOptions,
                answer: ModelAnswerer | None = None,
                predictions: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Scored rows of this rank's items, answered by the model or looked up in ``predictions``."""
    prompts = {**opts.prompts, **benchmark.prompts}
    work = [(item, build_prompt(item, prompts)) for _, item in items if isinstance(item, EvalItem)]
    if predictions is not None:
        answers = {item.id: ({"output": predictions[item.id]} if item.id in predictions else {"missing": True})
                   for item, _ in work}
    elif answer is not None:
        answers = answer(work)
    else:
        raise ValueError("score_shard needs a model (answer=) or predictions=")
    prompt_of = {item.id: p for item, p in work}
    rows = []
    for index, item in items:
        row = _base_row(benchmark, index, item)
        if isinstance(item, EvalItem):
            got = answers[item.id]
            row["prompt"] = prompt_of[item.id]
            if "error" in got:
                row.update(error=got["error"], correct=None)
            else:
                row["output"] = got.get("output")
                if "reply" in got:
                    row["reply"] = got["reply"]
                row.update(benchmark.score(item, row["output"]))
                if got.get("missing"):
                    row["missing_prediction"] = True
                if "loglik" in got:
                    row["loglik"] = got["loglik"]
        rows.append(row)
    return rows


def summarize(benchmark: Benchmark, rows: list[dict[str, Any]],
              bootstrap: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Counts, the benchmark's metrics and (``bootstrap``: {resamples, seed}) their 95% intervals."""
    from medgpt_oss.eval.bootstrap import add_intervals

    errors = [{"id": r["id"], "problem": r["error"]} for r in rows if r.get("error") is not None]
    scored = [r for r in rows if r.get("error") is None]
    summary = {
        "n_items": len(rows),
        "n_scored": len(scored),
        "n_malformed": len(errors),
        "n_missing_predictions": sum(1 for r in scored if r.get("missing_prediction")),
        **benchmark.summarize(scored),
    }
    if bootstrap and int(bootstrap.get("resamples", 0)) > 0:
        add_intervals(summary, scored, int(bootstrap["resamples"]), int(bootstrap.get("seed", 0)), benchmark)
    if errors:
        summary["malformed"] = errors[:50]  # the full list is in predictions.jsonl
    return summary


BLANK_SUFFIX = "@blank"  # the images-blanked run of benchmark <name> is <name>@blank (summary key and folder)


def has_images(items: Iterable[EvalItem | MalformedItem]) -> bool:
    """Whether any item shows the model an image (a text-only benchmark has nothing to blank)."""
    return any(isinstance(item, EvalItem) and item.images for item in items)


def image_ablation(benchmark: Benchmark, rows_images: list[dict[str, Any]], rows_blanked: list[dict[str, Any]],
                   summary_images: dict[str, Any], summary_blanked: dict[str, Any],
                   bootstrap: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What the images add: each metric with the images and with them blanked, the difference
    (with images - blanked) over the items scored in both runs and its 95% *paired* bootstrap interval (the
    same item ids drawn in both). Metrics without per-item scores (BLEU, ROUGE-L, ...) get both numbers and
    their difference, without an interval."""
    from medgpt_oss.eval.bootstrap import benchmark_item_metrics, paired_differences

    resamples, seed = int((bootstrap or {}).get("resamples", 0)), int((bootstrap or {}).get("seed", 0))
    with_images = benchmark_item_metrics(rows_images, benchmark)
    blanked = benchmark_item_metrics(rows_blanked, benchmark)
    out: dict[str, Any] = {}
    for name, d in paired_differences(blanked, with_images, resamples, seed).items():  # B - A: images - blanked
        if d["n"]:
            out[name] = {"n": d["n"], "images": d["b"], "blanked": d["a"], "images_minus_blanked": d["diff"],
                         **({"images_minus_blanked_ci95": d["diff_ci95"]} if "diff_ci95" in d else {})}
    paired = {p[0] for p in with_images} | {p[0] for p in blanked}
    for key, value in summary_images.items():
        other = summary_blanked.get(key)
        if (key not in paired and key.startswith(LEXICAL_PREFIXES) and not key.endswith("_ci95")
                and isinstance(value, (int, float)) and isinstance(other, (int, float))):
            out[key] = {"images": value, "blanked": other, "images_minus_blanked": value - other}
    return out


# report metrics compared without intervals (no per-item scores): the lexical ones and the model-based ones
LEXICAL_PREFIXES = ("bleu_", "rouge_l", "cider_d", "meteor", "radgraph_f1", "ratescore", "green", "radcliq",
                    "inv_radcliq")


def merge_shards(bench_dir: Path, world_size: int, wait_s: float = 0.0) -> list[dict[str, Any]]:
    """All ranks' rows in item order, once every rank has left its ``.done`` marker."""
    shard_dir = bench_dir / "shards"
    deadline = time.monotonic() + wait_s
    while True:
        missing = [r for r in range(world_size) if not (shard_dir / f"rank{r}.done").exists()]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(f"ranks {missing} of {world_size} have not finished in {shard_dir}; "
                               "rerun with merge_only=true once they have")
        time.sleep(2.0)
    rows = [row for r in range(world_size) for row in read_jsonl(shard_dir / f"rank{r}.jsonl")]
    return sorted(rows, key=lambda row: row["index"])


class DuplicateItemIds(ValueError):
    """A benchmark whose item ids repeat: answers and scores are kept by id, so they would mix."""


def check_unique_ids(name: str, items: list[EvalItem | MalformedItem]) -> None:
    counts = Counter(item.id for item in items)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise DuplicateItemIds(f"benchmark '{name}' has {len(repeated)} item ids used more than once, e.g. "
                               f"{repeated[:5]}; answers and scores are kept by id: give every item its own id")


def run_benchmark(benchmark: Benchmark, opts: RunOptions, answer: ModelAnswerer | None = None,
                  predictions: Mapping[str, str] | None = None,
                  items: list[EvalItem | MalformedItem] | None = None,
                  folder: str | None = None) -> dict[str, Any] | None:
    """Score this rank's share; on rank 0 merge and return the summary (other ranks return None).

    ``items``: the benchmark's items when the caller has read them already (else read here).
    ``folder``: the run folder's sub-folder for this benchmark (default its name; ``<name>@blank`` for the
    images-blanked run)."""
    bench_dir = opts.out_dir / (folder or benchmark.name)
    all_items = list(benchmark.items()) if items is None else items  # a wrong root fails here, before model work
    check_unique_ids(benchmark.name, all_items)
    if opts.limit is not None:
        all_items = all_items[: int(opts.limit)]
    mine = [(i, item) for i, item in enumerate(all_items) if i % opts.world_size == opts.rank]
    rows = score_shard(benchmark, mine, opts, answer=answer, predictions=predictions)
    if opts.world_size > 1:
        shard_dir = bench_dir / "shards"
        (shard_dir / f"rank{opts.rank}.done").unlink(missing_ok=True)
        _write_jsonl(shard_dir / f"rank{opts.rank}.jsonl", rows)
        (shard_dir / f"rank{opts.rank}.done").write_text(json.dumps({"rows": len(rows)}))
        if opts.rank != 0:
            return None
        rows = merge_shards(bench_dir, opts.world_size, opts.wait_s)
    return finish(benchmark, bench_dir, rows, opts.bootstrap)


def finish(benchmark: Benchmark, bench_dir: Path, rows: list[dict[str, Any]],
           bootstrap: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Write the merged per-item rows (report rows with their CheXpert labels) and return the summary."""
    from medgpt_oss.eval.bootstrap import add_chexpert_labels

    add_chexpert_labels(rows)
    _write_jsonl(bench_dir / "predictions.jsonl", rows)
    return summarize(benchmark, rows, bootstrap)
