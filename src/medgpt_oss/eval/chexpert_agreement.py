"""Agreement of the rule-based CheXpert labeler (``chexpert.py``) with human labels on IU X-ray.

Reads the Kaggle "Chest X-rays (Indiana University)" ``indiana_reports.csv`` (columns uid, MeSH, Problems,
image, indication, comparison, findings, impression), labels findings + impression with ``label_report``
and compares with the curated MeSH terms mapped to CheXpert observations by ``MESH_MAP``:

    python -m medgpt_oss.eval.chexpert_agreement --reports indiana_reports.csv

Prints per-observation precision / recall / F1 and micro figures; the last line is JSON. Reports whose MeSH
is "No Indexing" (no human labels) or whose findings and impression are both empty are skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from medgpt_oss.eval.chexpert import POSITIVE, UNCERTAIN, label_report

# MeSH heading (the part before the first "/"), an optional qualifier the term must also carry, and the
# CheXpert observation it names. A term maps where the labeler's own phrase list for that observation
# describes the same finding (e.g. "scar" and "interstitial marking" are Lung Opacity phrases; granuloma,
# blunted angles and emphysema are "no_finding" phrases, so they map to nothing). Enlarged Cardiomediastinum,
# Pleural Other and Support Devices are left out: MeSH has no term that matches their phrase lists cleanly
# ("Mediastinum/prominent" is rare and loose, "fibrosis" is Pleural Other to the labeler but lung fibrosis to
# MeSH, and devices are split over "Surgical Instruments" (clips), "Foreign Bodies", "Implanted Medical Device").
MESH_MAP: tuple[tuple[str, str | None, str], ...] = (
    ("normal", None, "No Finding"),  # the whole MeSH field is "normal"
    ("Cardiomegaly", None, "Cardiomegaly"),
    ("Cardiac Shadow", "enlarged", "Cardiomegaly"),
    ("Opacity", None, "Lung Opacity"),
    ("Airspace Disease", None, "Lung Opacity"),
    ("Infiltrate", None, "Lung Opacity"),
    ("Density", "lung", "Lung Opacity"),
    ("Cicatrix", "lung", "Lung Opacity"),
    ("Markings", "interstitial", "Lung Opacity"),
    ("Nodule", None, "Lung Lesion"),
    ("Mass", None, "Lung Lesion"),
    ("Cavitation", None, "Lung Lesion"),
    ("Opacity", "round", "Lung Lesion"),  # the labeler's "nodular opacity" / "nodular density"
    ("Density", "round", "Lung Lesion"),
    ("Pulmonary Edema", None, "Edema"),
    ("Pulmonary Congestion", None, "Edema"),
    ("Heart Failure", None, "Edema"),  # the labeler's "chf" / "heart failure" are Edema phrases
    ("Consolidation", None, "Consolidation"),
    ("Pneumonia", None, "Pneumonia"),
    ("Pulmonary Atelectasis", None, "Atelectasis"),
    ("Pneumothorax", None, "Pneumothorax"),
    ("Hydropneumothorax", None, "Pneumothorax"),
    ("Hemopneumothorax", None, "Pneumothorax"),
    ("Pleural Effusion", None, "Pleural Effusion"),
    ("Hydropneumothorax", None, "Pleural Effusion"),
    ("Hemothorax", None, "Pleural Effusion"),
    ("Fractures, Bone", None, "Fracture"),
)
MAPPED = tuple(dict.fromkeys(obs for _, _, obs in MESH_MAP))


def mesh_observations(mesh: str) -> set[str]:
    """Observations the ``;``-separated MeSH terms of one report name."""
    found = set()
    for term in (t.strip() for t in mesh.split(";")):
        heading, *qualifiers = [p.strip() for p in term.split("/")]
        for head, qualifier, observation in MESH_MAP:
            if heading.lower() == head.lower() and (qualifier is None or qualifier in qualifiers):
                found.add(observation)
    return found


def read_reports(path: str | Path) -> list[tuple[str, str]]:
    """(report text, MeSH) for every labelled row with text: findings + impression."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        text = " ".join(p.strip() for p in (row.get("findings") or "", row.get("impression") or "") if p.strip())
        if text and (row.get("MeSH") or "").strip() not in ("", "No Indexing"):
            out.append((text, row["MeSH"]))
    return out


def agreement(pairs: Iterable[tuple[dict[str, int | None], set[str]]], uncertain_as_positive: bool = False,
              observations: Sequence[str] = MAPPED) -> dict:
    """Per-observation and micro precision / recall / F1 of labeler positives against reference sets."""
    wanted = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
    counts = {o: [0, 0, 0] for o in observations}  # tp, fp, fn
    n = 0
    for labels, reference in pairs:
        n += 1
        for o in observations:
            pred, ref = labels[o] in wanted, o in reference
            counts[o][0] += pred and ref
            counts[o][1] += pred and not ref
            counts[o][2] += ref and not pred

    def prf(tp: int, fp: int, fn: int) -> dict:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return {"precision": p, "recall": r, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                "support": tp + fn, "tp": tp, "fp": fp, "fn": fn}

    per = {o: prf(*c) for o, c in counts.items()}
    micro = prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
    return {"n_reports": n, "uncertain_as_positive": uncertain_as_positive, "per_label": per, "micro": micro}


def evaluate(path: str | Path, uncertain_as_positive: bool = False) -> dict:
    return agreement(((label_report(text), mesh_observations(mesh)) for text, mesh in read_reports(path)),
                     uncertain_as_positive)


def format_table(result: dict) -> str:
    lines = [f"{'observation':<20} {'P':>6} {'R':>6} {'F1':>6} {'support':>8}"]
    for name, s in [*result["per_label"].items(), ("micro", result["micro"])]:
        lines.append(f"{name:<20} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} {s['support']:8d}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Precision/recall/F1 of the CheXpert-style labeler against the "
                                                 "MeSH terms of the IU X-ray indiana_reports.csv.")
    parser.add_argument("--reports", required=True, help="the Kaggle IU X-ray indiana_reports.csv (or a part)")
    parser.add_argument("--uncertain-as-positive", action="store_true",
                        help="count the labeler's uncertain (-1) as positive (default: as not positive)")
    args = parser.parse_args(argv)
    result = evaluate(args.reports, args.uncertain_as_positive)
    print(f"{result['n_reports']} reports")
    print(format_table(result))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
