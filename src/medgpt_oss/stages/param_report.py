"""What a stage trains, said at the start of each fit: a table for the log and counts for the loggers."""

from __future__ import annotations


def parameter_table(summary: dict[str, dict[str, int]]) -> str:
    """``summary``: ``MedVLM.parameter_summary()``."""
    lines = ["component   trainable / total parameters"]
    for name, counts in summary.items():
        state = "TRAINS" if counts["trainable"] else "frozen"
        lines.append(f"{name:<11} {counts['trainable']:>12,} / {counts['total']:>14,}  {state}")
    return "\n".join(lines)


def parameter_counts(summary: dict[str, dict[str, int]]) -> dict[str, int]:
    """The same counts as hyper-parameters (``params/<component>_trainable``, ``params/<component>_total``)."""
    counts = {}
    for name, component in summary.items():
        counts[f"params/{name}_trainable"] = component["trainable"]
        counts[f"params/{name}_total"] = component["total"]
    return counts
