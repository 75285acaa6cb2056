"""Proof that the model learned from pixels: MedSynth test split, with and without its images.

Closed (yes/no) and multiple-choice questions are answered by greedy decoding and
scored with the harness's extraction (an unparseable answer is wrong); reports are
scored by finding-level F1 against the findings drawn. The same closed questions
are asked again with every image replaced by a black one: a model that really
reads the images must fall to chance there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medgpt_oss.data.datamodule import read_jsonl
from medgpt_oss.data.synthetic import findings_from_report
from medgpt_oss.eval.extraction import extract_choice, extract_yes_no
from medgpt_oss.eval.generation import Generator, load_vlm

FINDINGS = ("nodule", "effusion", "cardiomegaly")


def _answers(generator: Generator, records: list[dict[str, Any]], batch_size: int,
             blank: bool = False) -> list[str | None]:
    """Final-channel answers; ``None`` for a reply without one (scored wrong)."""
    outputs: list[str | None] = []
    for start in range(0, len(records), batch_size):
        samples = [generator.prepare(r) for r in records[start:start + batch_size]]
        if blank:
            black = generator.processor.transform.blank()
            for s in samples:
                s["pixel_values"] = black.expand_as(s["pixel_values"]).clone()
        outputs += generator.generate(samples)
    return outputs


def finding_f1(predicted: list[list[str]], gold: list[list[str]]) -> float:
    """Micro F1 of positive findings over all reports."""
    tp = sum(len(set(p) & set(g)) for p, g in zip(predicted, gold))
    fp = sum(len(set(p) - set(g)) for p, g in zip(predicted, gold))
    fn = sum(len(set(g) - set(p)) for p, g in zip(predicted, gold))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def evaluate_medsynth(ckpt: str | Path, out_dir: str | Path, root: str | Path | None = None, limit: int | None = 300,
                      batch_size: int = 32, benchmark: str = "medsynth", device: str = "cpu") -> dict[str, Any]:
    """Score a checkpoint on MedSynth's test split; writes per-item rows to ``out_dir``."""
    root = Path(root) if root else _data_root_of(ckpt)
    records = read_jsonl(root / "test.jsonl")
    by_task = {t: [r for r in records if r["task"] == t][:limit] for t in ("closed", "mcq", "report")}
    generator = Generator(load_vlm(str(ckpt), device), root, max_new_tokens=96)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    closed = _answers(generator, by_task["closed"], batch_size)
    closed_blank = _answers(generator, by_task["closed"], batch_size, blank=True)
    for r, out, out_blank in zip(by_task["closed"], closed, closed_blank):
        rows.append({"id": r["id"], "task": "closed", "gold": r["answer"], "output": out,
                     "correct": out is not None and extract_yes_no(out) == r["answer"],
                     "output_images_blanked": out_blank,
                     "correct_images_blanked": out_blank is not None and extract_yes_no(out_blank) == r["answer"]})
    mcq = _answers(generator, by_task["mcq"], batch_size)
    for r, out in zip(by_task["mcq"], mcq):
        rows.append({"id": r["id"], "task": "mcq", "gold": r["answer"], "output": out,
                     "correct": out is not None and extract_choice(out, r["options"]) == r["answer"]})
    reports = _answers(generator, by_task["report"], batch_size)
    predicted = [findings_from_report(out or "") for out in reports]
    for r, out, pred in zip(by_task["report"], reports, predicted):
        rows.append({"id": r["id"], "task": "report", "gold": r["findings"], "output": out, "predicted": pred})

    def accuracy(task: str, key: str = "correct") -> float:
        scored = [row[key] for row in rows if row["task"] == task]
        return sum(scored) / len(scored) if scored else float("nan")

    summary = {
        "closed_accuracy": accuracy("closed"),
        "closed_accuracy_images_blanked": accuracy("closed", "correct_images_blanked"),
        # Replies with no final channel (unparseable, scored wrong): with blanked images a tiny model may not
        # even write the channel header, which is why its blanked accuracy can fall below chance.
        "closed_unparseable": sum(out is None for out in closed),
        "closed_unparseable_images_blanked": sum(out is None for out in closed_blank),
        "mcq_accuracy": accuracy("mcq"),
        "mcq_chance": 0.25,
        "report_f1": finding_f1(predicted, [r["findings"] for r in by_task["report"]]),
        "n_closed": len(by_task["closed"]),
        "n_mcq": len(by_task["mcq"]),
        "n_report": len(by_task["report"]),
    }
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _data_root_of(ckpt: str | Path) -> Path:
    """The data folder a run trained on, from the (resolved) config.yaml saved beside its checkpoints."""
    from omegaconf import OmegaConf

    config = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no config.yaml beside '{ckpt}'; pass root=<medsynth folder>")
    return Path(OmegaConf.load(config).data.root)
