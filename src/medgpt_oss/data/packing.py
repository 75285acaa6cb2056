"""Sequence packing: several samples per row, attention kept inside each sample.

Each row holds whole samples back to back; position ids restart at 0 for every
sample and no 2D attention mask is passed, which makes transformers build a
block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), so
no token attends across samples. Labels are the samples' own labels, so every
loss mask stays intact. Padding at a row's end is its own masked "sample".
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

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
    """Collate samples into packed rows (same keys as an unpacked batch, plus ``position_ids``).

    Samples that carry a ``row`` (from :class:`PackedBatchSampler`) keep the planned rows; otherwise the
    batch is packed first-fit decreasing.
    """
    if samples and all("row" in s for s in samples):
        planned: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            planned.setdefault(s["row"], []).append(i)
        rows = list(planned.values())
        overfull = [sum(len(samples[i]["input_ids"]) for i in row) for row in rows]
        if max(overfull) > pack_length:
            raise ValueError(f"a planned row holds {max(overfull)} tokens, more than pack_length={pack_length}: "
                             "the sample lengths changed after planning")
    else:
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


class RowPlanner:
    """Rows planned online over a window of waiting samples (see :func:`plan_window`).

    Samples are added in stream order (``add`` returns each one's stream position) while ``wants_more``;
    ``next_row`` takes the oldest waiting sample, then, while anything fits, the longest waiting sample
    that fits the room left (the oldest among equals). Depends on the lengths alone.
    """

    def __init__(self, pack_length: int, lookahead: int) -> None:
        if lookahead < 1:
            raise ValueError(f"pack lookahead must be >= 1 sample, got {lookahead}")
        self.pack_length, self.lookahead = pack_length, lookahead
        self.lengths: dict[int, int] = {}  # waiting position -> length
        self.by_length: list[tuple[int, int]] = []  # (length, -position), sorted: the best fit is one bisect away
        self.arrival: deque[int] = deque()  # waiting positions, oldest first (taken ones removed lazily)
        self.added = 0

    @property
    def waiting(self) -> int:
        return len(self.lengths)

    def wants_more(self) -> bool:
        return self.waiting < self.lookahead

    def add(self, length: int) -> int:
        if length > self.pack_length:
            raise ValueError(f"sample {self.added} of the stream has {length} tokens, more than "
                             f"pack_length={self.pack_length}; raise data.pack_length or lower data.max_length")
        position, self.added = self.added, self.added + 1
        self.lengths[position] = length
        bisect.insort(self.by_length, (length, -position))
        self.arrival.append(position)
        return position

    def _take(self, position: int) -> int:
        length = self.lengths.pop(position)
        del self.by_length[bisect.bisect_left(self.by_length, (length, -position))]
        return length

    def next_row(self) -> list[int]:
        while self.arrival[0] not in self.lengths:
            self.arrival.popleft()
        first = self.arrival.popleft()
        row, room = [first], self.pack_length - self._take(first)
        while self.by_length:
            fit = bisect.bisect_right(self.by_length, (room, 0)) - 1  # longest with length <= room, oldest of equals
            if fit < 0:
                break
            position = -self.by_length[fit][1]
            room -= self._take(position)
            row.append(position)
        return row


def plan_window(lengths: Sequence[int], pack_length: int, lookahead: int) -> list[list[int]]:
    """Rows over a stream of sample lengths, each row filled from a window of the next ``lookahead`` samples.

    Every row starts with the oldest waiting sample (so no sample waits for more than ``lookahead``
    later ones and the order stays close to the shuffle), then takes, while anything fits, the longest
    waiting sample that fits the room left (the oldest among equals). Rows come out in stream order of
    their first sample; the plan depends on nothing but the lengths, so it can be recomputed on resume.
    Zero-length samples (records that will be skipped) ride along without taking room.
    """
    planner, rows = RowPlanner(pack_length, lookahead), []
    stream = iter(lengths)
    for length in stream:
        planner.add(length)
        while not planner.wants_more():
            rows.append(planner.next_row())
    while planner.waiting:
        rows.append(planner.next_row())
    return rows


class PackedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``rows`` packed rows per rank, planned over shuffled passes with a lookahead window.

    Pass ``e`` shuffles all samples with the same seeded permutation as
    :class:`~medgpt_oss.data.datamodule.ResumableShuffleSampler`, plans rows with :func:`plan_window`
    and cuts them into global batches of ``rows x num_replicas`` rows; rank ``r`` takes rows
    ``r::num_replicas`` of each, so the ranks together train the batches one process trains with
    ``rows x num_replicas`` rows, and every rank gets the same number of batches (a last global batch with
    fewer rows than ranks is left out of the pass; one with fewer than ``rows x num_replicas`` gives some
    ranks one row less). Passes differ in length (the rows depend on the shuffle), while Lightning takes an
    epoch's length once: so runs of more than one pass are bounded by ``trainer.max_steps`` (the data
    module requires it), and epoch numbers are counters, not passes. The plan is a function of the
    lengths alone, so the position is two numbers, ``(epoch, batches_done)``, advanced per trained batch
    by the data module; a resumed run re-plans the pass and continues at the next batch. Items are
    ``(sample index, row in the batch)``.
    """

    def __init__(self, lengths: Sequence[int], seed: int, pack_length: int, rows: int, lookahead: int,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if rows < 1:
            raise ValueError(f"need at least one packed row per batch, got {rows}")
        self.lengths, self.size, self.seed = lengths, len(lengths), seed
        self.pack_length, self.rows, self.lookahead = pack_length, rows, lookahead
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.batches_done = 0, 0
        self._planned: tuple[int, list[list[list[int]]]] | None = None

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """The pass's global batches, each a list of rows of sample indices."""
        if self._planned is None or self._planned[0] != epoch:
            order = self.order(epoch)
            rows = [[order[p] for p in row]
                    for row in plan_window([self.lengths[i] for i in order], self.pack_length, self.lookahead)]
            per_batch = self.rows * self.num_replicas
            batches = [rows[i:i + per_batch] for i in range(0, len(rows), per_batch)]
            if batches and len(batches[-1]) < self.num_replicas:
                batches.pop()
            self._planned = (epoch, batches)
        return self._planned[1]

    def __len__(self) -> int:
        self._next_pass_if_done()
        return len(self.plan(self.epoch))

    def _next_pass_if_done(self) -> None:
        if self.batches_done >= len(self.plan(self.epoch)):
            self.epoch, self.batches_done = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        self._next_pass_if_done()
        for batch in self.plan(self.epoch)[self.batches_done:]:
            mine = batch[self.rank::self.num_replicas]
            yield [(index, r) for r, row in enumerate(mine) for index in row]
