"""Sequence packing: several samples per row, attention kept inside each sample.

Each row holds whole samples back to back; position ids restart at 0 for every
sample and no 2D attention mask is passed, which makes transformers build a
block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), so
no token attends across samples. Labels are the samples' own labels, so every
loss mask stays intact. Padding at a row's end is its own masked "sample".
"""

from __future__ import annotations

from typing import Any

import torch

from medgpt_oss.data.conversation import IGNORE_INDEX


def plan_rows(lengths: list[int], pack_length: int) -> list[list[int]]:
    """First-fit decreasing: sample indices per row, each row's total length <= pack_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > pack_length:
            raise ValueError(f"sample of {lengths[i]} tokens exceeds pack_length={pack_length}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(pack_length - lengths[i])
    return rows


def pack(samples: list[dict[str, Any]], pack_length: int, pad_id: int) -> dict[str, Any]:
    """Collate samples into packed rows (same keys as an unpacked batch, plus ``position_ids``)."""
    rows = plan_rows([len(s["input_ids"]) for s in samples], pack_length)
    width = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    pixels, ids, row_of = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            s = samples[i]
            n = len(s["input_ids"])
            input_ids[r, start:start + n] = s["input_ids"]
            labels[r, start:start + n] = s["labels"]
            position_ids[r, start:start + n] = torch.arange(n)
            pixels.append(s["pixel_values"])  # row-major order = the order image slots are filled
            ids.append(s["id"])
            row_of.append(r)
            start += n
        position_ids[r, start:] = torch.arange(width - start)
    return {
        "ids": ids,
        "row_of_sample": row_of,
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "pixel_values": torch.cat(pixels),
    }
