"""Resolve pretrained weights to a local folder without ever touching the network.

Every model part calls :func:`resolve_pretrained` before it builds anything, and
``train.py`` calls :func:`check_pretrained` on every part first, so a run whose
weights are missing fails within seconds, before any data work.
"""

from __future__ import annotations

import os
from pathlib import Path

SCALES = ("full", "tiny")


class MissingWeightsError(FileNotFoundError):
    """Raised when a model's weights are neither a local folder nor in the HF cache."""


# Hub repositories that serve files only to a logged-in account that accepted the model's licence on its page.
GATED = {
    "google/medsiglip-448": "Health AI Developer Foundations terms of use",
}


def missing_weights_message(model_id: str, override_key: str) -> str:
    name = model_id.rstrip("/").split("/")[-1]
    lines = [
        f"Pretrained weights for '{model_id}' are not available offline.",
        "  Supply them in one of two ways:",
        "  1. download them on a machine with network access (`hf` ships with huggingface_hub >= 0.34),",
        "     into the Hugging Face cache:",
        f"       hf download {model_id}",
        "     and copy ~/.cache/huggingface (or $HF_HOME) here; or into a folder of their own:",
        f"       hf download {model_id} --local-dir /local/dir/{name}",
        "  2. point the config at a local folder holding the files:",
        f"       {override_key}=/local/dir/{name}",
    ]
    if model_id in GATED:
        lines += [
            f"  '{model_id}' is gated: log in to https://huggingface.co/{model_id} and accept its licence",
            f"  ({GATED[model_id]}), then run `hf auth login` with a token of that account before downloading.",
        ]
    lines.append("  Or train the tiny random-initialised variant offline with scale=tiny.")
    return "\n".join(lines)


def resolve_pretrained(model_id: str, override_key: str = "pretrained") -> Path:
    """Return a local folder with ``model_id``'s files, or raise :class:`MissingWeightsError`.

    ``model_id`` is either a local folder or a hub id looked up in the local
    Hugging Face cache only (``local_files_only``): nothing is downloaded.
    """
    path = Path(os.path.expanduser(str(model_id)))
    if path.is_dir():
        return path
    if path.is_absolute() or str(model_id).startswith((".", "~")):
        raise MissingWeightsError(
            f"Local weights folder '{model_id}' does not exist.\n"
            + missing_weights_message(str(model_id), override_key)
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model_id), local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise MissingWeightsError(missing_weights_message(str(model_id), override_key)) from exc


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got '{scale}'")
    return scale
