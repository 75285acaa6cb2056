"""Endless, resumable streams of batches from prepared shard folders (``data/shards.py``).

Units of work are (shard, row group) pairs, enumerated from the manifest and the
Parquet footers: the only per-item structures are numpy arrays with one entry per
row group (12 bytes each), so memory does not grow with the number of records.

One stream per *global worker* ``g = rank * num_workers + worker`` of ``G = world_size * num_workers``:

- per source and pass ``p``, all units are permuted by a generator seeded with
  ``(seed, source, p)`` and worker ``g`` takes ``units[g::G]``;
- the records of those units go through a shuffle buffer of ``shuffle_buffer``
  records (generator seeded by ``(seed, source, g, p)``), drained at the end of the
  pass, so each pass yields each of the worker's records exactly once;
- with several sources, a per-worker generator picks the source of every sample by
  weight; each source runs through its own passes independently;
- the worker cuts its stream into batches of ``batch_size`` *drawn* records. A record
  that fails processing is skipped (counted in the batch's ``skipped``), so a batch
  may hold fewer samples, but the ``b``-th batch of a worker always covers records
  ``[b * batch_size, (b + 1) * batch_size)`` of its stream. With planned packing
  (``pack_lookahead``) a batch is instead ``pack_rows`` rows planned over a window of
  drawn records (:class:`~medgpt_oss.data.packing.RowPlanner`), a function of the
  records' text lengths, so replaying the draws replays the rows too.

The DataLoader takes batches from its workers round-robin and the stream never
ends, so the training position is one number, the batches the loop consumed on this
rank: worker ``w`` produced ``ceil((n - w) / num_workers)`` of them. On resume the fresh
loader's worker ``i`` continues stream ``(i + n) % num_workers`` (round-robin starts at worker 0), and
replays the draws for those records on (unit, row) references -- reading
only the ``task`` column when tasks are filtered, never an image -- and loads full
rows only for what is left in its buffer. The same (seed, world size, num_workers,
batch size, pack settings) is required to resume;
:class:`medgpt_oss.data.prepared.PreparedDataModule` checks it.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from medgpt_oss.data.packing import RowPlanner
from medgpt_oss.data.shards import open_shard, read_manifest, read_row_group, row_to_record
from medgpt_oss.data.processor import SampleProcessor

_MIX_STREAM = 1_000_003  # keeps the source-picking generator apart from the shuffling ones
_TEXT_UNITS = 256  # row groups whose text columns a packed replay keeps at hand


@dataclass
class ShardIndex:
    """The row groups of one split of one prepared folder: the unit list, one entry per row group."""

    root: Path
    split: str
    shard_paths: list[str]
    unit_shard: np.ndarray  # int32 [units]: index into shard_paths
    unit_group: np.ndarray  # int32 [units]: row group inside the shard
    unit_rows: np.ndarray  # int32 [units]: records in the row group

    @classmethod
    def open(cls, root: str | Path, split: str) -> ShardIndex:
        root = Path(root)
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise ValueError(f"prepared folder '{root}' has no split '{split}'; it has {sorted(manifest['splits'])}")
        shards = manifest["splits"][split]["shards"]
        paths, shard_of, group_of, rows_of = [], [], [], []
        for i, shard in enumerate(shards):
            meta = open_shard(root / shard["path"]).metadata  # the footer only: a truncated shard fails here, named
            if meta.num_rows != shard["records"] or meta.num_row_groups != shard["row_groups"]:
                raise ValueError(f"'{root / shard['path']}' holds {meta.num_rows} records in {meta.num_row_groups} "
                                 f"row groups, the manifest says {shard['records']} in {shard['row_groups']}; "
                                 "the folder was changed after prepare: prepare it again")
            paths.append(shard["path"])
            for g in range(meta.num_row_groups):
                shard_of.append(i)
                group_of.append(g)
                rows_of.append(meta.row_group(g).num_rows)
        if not paths:
            raise ValueError(f"prepared folder '{root}' has no shards in split '{split}'")
        return cls(root, split, paths, np.asarray(shard_of, np.int32), np.asarray(group_of, np.int32),
                   np.asarray(rows_of, np.int32))

    def __len__(self) -> int:
        return len(self.unit_rows)

    @property
    def records(self) -> int:
        return int(self.unit_rows.sum())

    def _read(self, unit: int, columns: list[str] | None = None):
        return read_row_group(self.root / self.shard_paths[self.unit_shard[unit]], int(self.unit_group[unit]), columns)

    def rows(self, unit: int, tasks: frozenset[str] | None) -> np.ndarray:
        """Row numbers of the unit's records whose task is wanted (reads the ``task`` column only)."""
        if tasks is None:
            return np.arange(self.unit_rows[unit])
        column = self._read(unit, columns=["task"]).column("task")
        return np.flatnonzero(np.isin(np.asarray(column.to_pylist(), dtype=object), list(tasks)))

    def load(self, unit: int, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The records at ``rows`` of a unit, image bytes included (not decoded)."""
        table = self._read(unit)
        return [row_to_record(r) for r in table.take(np.asarray(rows, dtype=np.int64)).to_pylist()]


def _generator(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


class _SourceStream:
    """One source's endless record stream for one global worker (see the module docstring).

    Items are ``(unit, row)`` references while ``lazy`` (skipping on resume) and record dicts
    after :meth:`materialise`; the random draws are the same either way.
    """

    def __init__(self, index: ShardIndex, source: int, worker: int, workers: int, seed: int, buffer: int,
                 tasks: frozenset[str] | None) -> None:
        if len(index) < workers:
            raise ValueError(f"'{index.root}' split '{index.split}' has {len(index)} row groups for {workers} "
                             "data loader workers in all ranks; each needs at least one: use fewer workers/devices "
                             "or prepare with smaller row groups")
        self.index, self.source, self.worker, self.workers = index, source, worker, workers
        self.seed, self.capacity, self.tasks = seed, max(1, buffer), tasks
        self.lazy = True
        self.buffer: list[Any] = []
        self.incoming: deque[Any] = deque()
        self._start_pass(0)

    def _start_pass(self, number: int) -> None:
        self.pass_number = number
        order = _generator(self.seed, self.source, number).permutation(len(self.index))
        self.units = order[self.worker::self.workers]
        self.next_unit = 0
        self.rng = _generator(self.seed, self.source, self.worker, number)
        self.drawn_in_pass = 0

    def _read_unit(self, unit: int) -> list[Any]:
        rows = self.index.rows(unit, self.tasks)
        if self.lazy:
            return [(unit, int(r)) for r in rows]
        return self.index.load(unit, rows) if len(rows) else []

    def __next__(self) -> Any:
        while True:
            if self.incoming:
                item = self.incoming.popleft()
                if len(self.buffer) < self.capacity:
                    self.buffer.append(item)
                    continue
                j = int(self.rng.integers(self.capacity))
                out, self.buffer[j] = self.buffer[j], item
                self.drawn_in_pass += 1
                return out
            if self.next_unit < len(self.units):
                self.incoming.extend(self._read_unit(int(self.units[self.next_unit])))
                self.next_unit += 1
                continue
            if self.buffer:  # end of the pass: drain the buffer in random order
                j = int(self.rng.integers(len(self.buffer)))
                self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
                self.drawn_in_pass += 1
                return self.buffer.pop()
            if self.drawn_in_pass == 0:
                raise ValueError(f"worker {self.worker} of {self.workers} found no records of tasks "
                                 f"{sorted(self.tasks or [])} in its share of '{self.index.root}' split "
                                 f"'{self.index.split}'; use fewer workers/devices or check data.tasks")
            self._start_pass(self.pass_number + 1)

    def skip(self, count: int) -> None:
        for _ in range(count):
            next(self)

    def materialise(self) -> None:
        """Turn the references left in the buffer into records (one read per unit), then stream records."""
        refs = self.buffer + list(self.incoming)
        by_unit: dict[int, list[int]] = {}
        for unit, row in refs:
            by_unit.setdefault(unit, []).append(row)
        loaded = {}
        for unit, rows in by_unit.items():
            loaded.update({(unit, r): rec for r, rec in zip(rows, self.index.load(unit, rows))})
        self.buffer = [loaded[ref] for ref in self.buffer]
        self.incoming = deque(loaded[ref] for ref in self.incoming)
        self.lazy = False


def batches_produced(consumed: int, worker: int, num_workers: int) -> int:
    """How many batches worker ``worker`` produced when the loop has taken ``consumed`` (round-robin)."""
    workers = max(1, num_workers)
    return max(0, (consumed - worker + workers - 1) // workers)


class StreamingConversations(IterableDataset):
    """Endless batches from weighted prepared sources; position = batches consumed on this rank."""

    def __init__(self, sources: Sequence[tuple[str | Path, float]], processor: SampleProcessor, batch_size: int,
                 seed: int, split: str = "train", tasks: Sequence[str] | None = None, shuffle_buffer: int = 1024,
                 strict: bool = False, pack_length: int | None = None, world_size: int = 1, rank: int = 0,
                 num_workers: int = 0, pack_lookahead: int | None = None, pack_rows: int = 1) -> None:
        weights = np.asarray([float(w) for _, w in sources], dtype=np.float64)
        if not len(sources) or (weights <= 0).any():
            raise ValueError(f"need at least one source, each with a weight > 0; got {list(sources)}")
        self.indexes = [ShardIndex.open(root, split) for root, _ in sources]
        self.cdf = np.cumsum(weights / weights.sum())
        self.processor, self.batch_size, self.seed = processor, batch_size, seed
        self.tasks = frozenset(tasks) if tasks else None
        self.shuffle_buffer, self.strict, self.pack_length = shuffle_buffer, strict, pack_length
        self.world_size, self.rank, self.num_workers = world_size, rank, num_workers
        # pack_lookahead (with pack_length): each batch is pack_rows rows planned over a window of this many
        # drawn records (RowPlanner), not batch_size records packed among themselves.
        self.pack_lookahead = pack_lookahead if pack_length and pack_lookahead else None
        self.pack_rows = pack_rows
        self.start_batches = 0  # batches this rank's loop consumed before (set on resume)

    def _worker(self) -> tuple[int, int]:
        """(which worker's stream this process continues, its global worker id)."""
        info = get_worker_info()
        local, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise RuntimeError(f"dataset built for {self.num_workers} workers runs in a loader with {workers}")
        # A fresh loader asks worker 0 first, but the next batch is due from stream (consumed % workers):
        # rotate the roles so round-robin continues where it stopped.
        role = (local + self.start_batches) % workers
        return role, self.rank * workers + role

    def __iter__(self) -> Iterator[dict[str, Any]]:
        local, worker = self._worker()
        workers = self.world_size * max(1, self.num_workers)
        streams = [_SourceStream(index, s, worker, workers, self.seed, self.shuffle_buffer, self.tasks)
                   for s, index in enumerate(self.indexes)]
        mixer = _generator(self.seed, worker, _MIX_STREAM)
        if self.pack_lookahead:
            yield from self._planned_batches(streams, mixer, batches_produced(self.start_batches, local,
                                                                              self.num_workers))
            return
        # Resume: replay this worker's draws on references, without reading any image.
        skip = batches_produced(self.start_batches, local, self.num_workers) * self.batch_size
        picks = self._pick_sources(mixer, skip)
        for s, stream in enumerate(streams):
            stream.skip(int((picks == s).sum()))
            stream.materialise()
        while True:
            samples = [self.processor.process(next(streams[s]), strict=self.strict)
                       for s in self._pick_sources(mixer, self.batch_size)]
            yield self.processor.collate_kept(samples, self.pack_length)


    def _pick_sources(self, mixer: np.random.Generator, count: int) -> np.ndarray:
        """The sources of the next ``count`` draws, by weight (rounding in the last cdf entry stays in range)."""
        return np.minimum(np.searchsorted(self.cdf, mixer.random(count), side="right"), len(self.indexes) - 1)

    def _planned_batches(self, streams: list[_SourceStream], mixer: np.random.Generator,
                         replay: int) -> Iterator[dict[str, Any]]:
        """Batches of ``pack_rows`` rows planned over a window of drawn records; the first ``replay`` batches
        are planned on (unit, row) references, with lengths from the text columns alone, and not yielded."""
        planner = RowPlanner(self.pack_length, self.pack_lookahead)
        window: dict[int, tuple[int, Any]] = {}  # stream position -> (source, record or reference)
        texts: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()  # replay: units' text columns

        def length(source: int, item: Any) -> int:
            record = item
            if not isinstance(item, dict):
                unit, row = item
                if (source, unit) not in texts:
                    table = self.indexes[source]._read(unit, columns=["id", "conversations", "image_names"])
                    texts[source, unit] = [{"id": r["id"], "conversations": json.loads(r["conversations"]),
                                            "image": list(r["image_names"])} for r in table.to_pylist()]
                    if len(texts) > _TEXT_UNITS:  # the shuffle buffer interleaves a few units at a time
                        texts.popitem(last=False)
                texts.move_to_end((source, unit))
                record = texts[source, unit][row]
            n = self.processor.sample_length(record)
            if n > self.pack_length:
                raise ValueError(f"record '{record['id']}' has {n} tokens, more than data.pack_length="
                                 f"{self.pack_length}: raise data.pack_length or set data.max_length <= pack_length "
                                 "(longer samples are then skipped and counted)")
            return n

        def next_rows() -> list[list[tuple[int, Any]]]:
            rows = []
            for _ in range(self.pack_rows):
                while planner.wants_more():
                    s = int(self._pick_sources(mixer, 1)[0])
                    item = next(streams[s])
                    window[planner.add(length(s, item))] = (s, item)
                rows.append([window.pop(p) for p in planner.next_row()])
            return rows

        for _ in range(replay):
            next_rows()
        texts.clear()  # only references need text columns; live records carry their own
        for stream in streams:
            stream.materialise()
        refs: dict[tuple[int, int], list[int]] = {}
        for s, item in window.values():
            refs.setdefault((s, item[0]), []).append(item[1])
        loaded = {(s, unit, row): record for (s, unit), rows in refs.items()
                  for row, record in zip(rows, self.indexes[s].load(unit, rows))}
        window = {p: (s, loaded[s, item[0], item[1]]) for p, (s, item) in window.items()}
        while True:
            samples = [{**self.processor.process(record, strict=self.strict), "row": r}
                       for r, row in enumerate(next_rows()) for _, record in row]
            yield self.processor.collate_kept(samples, self.pack_length)


class FiniteConversations(IterableDataset):
    """One ordered pass over a split (validation), units split across ranks and workers."""

    def __init__(self, roots: Sequence[str | Path], processor: SampleProcessor, batch_size: int, split: str = "val",
                 tasks: Sequence[str] | None = None, strict: bool = False, pack_length: int | None = None,
                 world_size: int = 1, rank: int = 0) -> None:
        self.indexes = [ShardIndex.open(root, split) for root in roots]
        self.processor, self.batch_size, self.pack_length = processor, batch_size, pack_length
        self.tasks, self.strict = (frozenset(tasks) if tasks else None), strict
        self.world_size, self.rank = world_size, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        local, workers = (0, 1) if info is None else (info.id, info.num_workers)
        worker, total = self.rank * workers + local, self.world_size * workers
        units = [(index, u) for index in self.indexes for u in range(len(index))][worker::total]
        samples: list[dict[str, Any]] = []
        for index, unit in units:
            rows = index.rows(unit, self.tasks)
            for record in index.load(unit, rows) if len(rows) else []:
                samples.append(self.processor.process(record, strict=self.strict))
                if len(samples) == self.batch_size:
                    yield self.processor.collate_kept(samples, self.pack_length)
                    samples = []
        if samples:
            yield self.processor.collate_kept(samples, self.pack_length)


def stream_ids(batches: Iterator[dict[str, Any]], count: int) -> list[list[str]]:
    """The sample ids of the next ``count`` batches (what tests and debugging compare)."""
    return [list(next(batches)["ids"]) for _ in range(count)]


