"""What a stage checkpoint holds besides Lightning's own state, in plain types only (checkpoints load with
``torch.load(weights_only=True)``).

Its ``state_dict`` keeps only the weights that differ from the base weights (what trains, plus what the
previous stage handed over): a 20B run's checkpoint stays small, and the rest comes back from the same base
weights. Beside it: the embedding rows the LLM added for the image token, the steps the learning-rate
schedule spans, and the RNG states, which Lightning does not save.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

ADDED_ROWS_KEY = "added_token_rows"
SCHEDULE_TOTAL_KEY = "lr_schedule_total"
RNG_KEY = "rng_states"


def saved_weights(state_dict: dict[str, torch.Tensor], saved_keys: set[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k in saved_keys}


def check_trainable_weights(state_dict: dict[str, torch.Tensor], trainable_keys: set[str]) -> None:
    missing = trainable_keys - set(state_dict)
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")


def rng_states() -> dict[str, Any]:
    """The RNG states a run continues from (dropout, e.g. LoRA's, must continue the same stream)."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(_numpy_state_from_plain(states["numpy"]))


def _numpy_state_to_plain(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached
