"""LightningDataModule over conversation records in JSONL files (MedSynth or prepared real data)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from medgpt_oss.data.conversation import IGNORE_INDEX
from medgpt_oss.data.jsonl import read_records
from medgpt_oss.data.packing import PackedBatchSampler
from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor
from medgpt_oss.data.published.layout import BadField, file_names, has_bad_text


class ConversationDataset(Dataset):
    """Records of one split, optionally restricted to some tasks, processed lazily.

    Every record's structure is checked here, when the data module is set up, never inside the training
    loop: a line that is not a record object, or a record without a conversation of turns or with an
    ``image`` that is not file names, is a counted skip named in ``problems`` (``strict``: an error at once).
    """

    def __init__(self, path: Path, processor: SampleProcessor, tasks: Sequence[str] | None = None,
                 strict: bool = False) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"split file '{path}' does not exist; set data.root to a prepared data folder")
        records, self.problems = read_records(path)
        kept = []
        for record in records:
            problem = record_problem(record)
            if problem is not None:
                self.problems.append(f"record '{record['id']}' ({path.name}): {problem}")
            elif tasks is None or record.get("task") in tasks:
                kept.append(record)
        if strict and self.problems:
            raise ValueError(f"{self.problems[0]} (data.strict=false skips and counts such records instead)")
        self.records = kept
        if not self.records:
            found = sorted({str(r.get("task")) for r in records})
            bad = f"; {len(self.problems)} bad records, e.g. {self.problems[0]}" if self.problems else ""
            raise ValueError(f"'{path}' has no usable records of tasks {list(tasks or [])}; it has tasks {found}{bad}")
        self.processor, self.strict = processor, strict

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):  # (sample, row) from PackedBatchSampler: the sample keeps its planned row
            sample = self.processor.process(self.records[index[0]], strict=self.strict)
            return {**sample, "row": index[1]}
        return self.processor.process(self.records[index], strict=self.strict)

    def lengths(self) -> list[int]:
        """Every record's sample length in tokens (text only), computed once."""
        if not hasattr(self, "_lengths"):
            self._lengths = [self.processor.sample_length(record) for record in self.records]
        return self._lengths


def record_problem(record: dict[str, Any]) -> str | None:
    """What makes a record unusable before any image is read or token made (``None``: nothing)."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        return "no 'conversations' list of turns -- give [{from, value}, ...]"
    if has_bad_text(turns):
        return "a turn holds a lone surrogate (text that is not valid UTF-8) -- re-encode the source as UTF-8"
    try:
        file_names(record, "image", single=True)
    except BadField as bad:
        return bad.reason
    if not isinstance(record.get("task", ""), str):
        return f"'task' is {record['task']!r:.60}, not text"
    return None


class CountsSkippedSamples:
    """Data module mixin: running totals of skipped bad samples, in every batch, the checkpoint and the log.

    Collation leaves ``skipped`` (this batch, this rank) in each batch. Here the counts are summed over
    ranks (every rank calls this once per training batch, so the collective lines up) and the batch
    carries ``skipped_total`` and ``empty_batches_total`` for the stage to log as ``data/skipped`` and
    ``data/skipped_batches``. The totals are reported when fit ends.
    """

    skipped_total: int = 0
    empty_batches_total: int = 0
    skipped_examples: list[str]

    def _count_skipped(self, batch: dict[str, Any]) -> None:
        empty = not bool((batch["labels"] != IGNORE_INDEX).any())
        counts = torch.tensor([int(batch.get("skipped", 0)), int(empty)])
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        skipped, empty_ranks = (int(c) for c in counts)
        self.skipped_total += skipped
        self.empty_batches_total += empty_ranks
        if not hasattr(self, "skipped_examples"):
            self.skipped_examples = []
        self.skipped_examples += batch.get("skipped_reasons", [])[: 20 - len(self.skipped_examples)]
        batch.update(skipped_total=self.skipped_total, empty_batches_total=self.empty_batches_total)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self.skipped_total:
            examples = "\n  ".join(getattr(self, "skipped_examples", []))
            rank_zero_info(f"skipped {self.skipped_total} bad training samples (data.strict=true stops at the first); "
                           f"first ones on rank 0:\n  {examples}")


class ResumableShuffleSampler(Sampler[int]):
    """An endless stream of shuffled passes over the data, cut into epochs, that resumes exactly.

    Pass ``e`` is a permutation seeded by ``(seed, e)``; ``consumed`` counts the
    samples the training loop has actually used, summed over all ranks (the
    datamodule advances it per trained batch, so prefetching never skews it). Each
    ``iter()`` continues the stream from ``consumed`` to the end of the current pass,
    so a run resumed from a checkpoint -- mid-epoch or not, on any number of ranks --
    sees exactly the samples the uninterrupted run would have seen.

    With ``num_replicas`` ranks, rank ``r`` takes every ``num_replicas``-th sample of
    the stream starting at ``r``: the ranks' ``k``-th batches together are exactly the
    one-process batch ``k`` of size ``num_replicas x batch_size``. Lightning must not wrap
    this sampler again (``trainer.use_distributed_sampler=false``). Every rank gets the same
    number of samples per pass (unequal counts would hang DDP), so the last
    ``< num_replicas`` samples of a pass are skipped; the next pass reshuffles everything.
    """

    def __init__(self, length: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if length < num_replicas:
            raise ValueError(f"{length} training samples cannot feed {num_replicas} ranks; use fewer devices")
        self.length, self.seed, self.consumed = length, seed, 0
        self.num_replicas, self.rank = num_replicas, rank

    def __len__(self) -> int:
        return self.length // self.num_replicas

    def __iter__(self):
        epoch, offset = divmod(self.consumed, self.length)
        if self.length - offset < self.num_replicas:  # only the skipped tail is left: start the next pass
            epoch, offset = epoch + 1, 0
            self.consumed = epoch * self.length
        per_rank = (self.length - offset) // self.num_replicas
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.length, generator=generator)[offset + self.rank :: self.num_replicas]
        return iter(order[:per_rank].tolist())


class ConversationDataModule(CountsSkippedSamples, L.LightningDataModule):
    """Train/val loaders over ``{root}/{split}.jsonl``. ``synth`` generates MedSynth there first."""

    def __init__(
        self,
        root: str,
        input_spec: ModelInputSpec,
        train_split: str = "train",
        val_split: str | None = "val",
        tasks: Sequence[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        max_length: int | None = None,
        system_prompt: str | None = None,
        synth: dict[str, Any] | None = None,
        seed: int = 0,
        pack_length: int | None = None,
        pack_lookahead: int | None = None,
        pack_rows: int = 1,
        strict: bool = False,
        max_tiles: int | None = None,
        dicom: dict[str, Any] | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.input_spec = input_spec
        self.train_split, self.val_split = train_split, val_split
        self.tasks = list(tasks) if tasks else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.synth = dict(synth) if synth else None
        self.seed = seed
        self.pack_length = pack_length
        # pack_lookahead (with pack_length): rows planned over a window of this many shuffled samples,
        # pack_rows rows per batch (batch_size unused); 0/None: first-fit within each batch of batch_size samples.
        self.pack_lookahead = pack_lookahead if pack_length and pack_lookahead else None
        self.pack_rows = pack_rows
        self.strict = strict  # true: the first bad sample stops training, naming it; false: skipped and counted
        # max_tiles: InternVL-style dynamic tiling (None/1: off); dicom: DicomOptions (frames, ct_windows).
        # allow_outside_root: image paths may leave root (absolute, .., symlinks); off, they are skipped by name.
        self.processor = SampleProcessor(input_spec, self.root, system_prompt=system_prompt, max_length=max_length,
                                         max_tiles=max_tiles, dicom=dicom, allow_outside_root=allow_outside_root)
        self.datasets: dict[str, ConversationDataset] = {}
        self.train_sampler: ResumableShuffleSampler | PackedBatchSampler | None = None
        self._consumed_to_restore: int | tuple[int, int] = 0

    def prepare_data(self) -> None:
        if self.synth is not None:
            from medgpt_oss.data.medsynth.generate import ensure_medsynth

            ensure_medsynth(self.root, **self.synth)

    def setup(self, stage: str | None = None) -> None:
        for split in filter(None, (self.train_split, self.val_split)):
            if split not in self.datasets:
                dataset = ConversationDataset(self.root / f"{split}.jsonl", self.processor, self.tasks,
                                              strict=self.strict)
                self.datasets[split] = dataset
                if dataset.problems:
                    rank_zero_info(f"{split}: skipped {len(dataset.problems)} bad records at setup "
                                   f"(data.strict=true stops at the first):\n  " + "\n  ".join(dataset.problems[:20]))
                    if split == self.train_split:  # counted with the samples skipped in training (data/skipped)
                        self.skipped_total += len(dataset.problems)

    def _loader(self, split: str, sampler: Sampler | None = None) -> DataLoader:
        batches = {"batch_sampler": sampler} if isinstance(sampler, PackedBatchSampler) else \
            {"batch_size": self.batch_size, "sampler": sampler}
        return DataLoader(
            self.datasets[split],
            **batches,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.processor.collate_kept(samples, self.pack_length)

    def train_dataloader(self) -> DataLoader:
        world_size, rank = 1, 0
        if self.trainer is not None and self.trainer.world_size > 1:
            # Our sampler shards by rank itself; Lightning's wrapper would shard it a second time.
            if self.trainer._accelerator_connector.use_distributed_sampler:
                raise ValueError(
                    f"training on {self.trainer.world_size} processes needs trainer.use_distributed_sampler=false "
                    "(ResumableShuffleSampler shards the data by rank and keeps the resume position itself)"
                )
            world_size, rank = self.trainer.world_size, self.trainer.global_rank
        dataset = self.datasets[self.train_split]
        if self.pack_lookahead:
            trainer = self.trainer
            if trainer is not None and trainer.max_steps < 0 and trainer.max_epochs != 1:
                raise ValueError("planned packing (data.pack_lookahead) makes every pass a different number of "
                                 "batches, which Lightning's epochs cannot follow: set trainer.max_steps (or "
                                 "trainer.max_epochs=1, or data.pack_lookahead=0)")
            lengths = dataset.lengths()
            too_long = [(dataset.records[i]["id"], n) for i, n in enumerate(lengths) if n > self.pack_length]
            if too_long:
                raise ValueError(f"{len(too_long)} samples are longer than data.pack_length={self.pack_length}, e.g. "
                                 f"record '{too_long[0][0]}' ({too_long[0][1]} tokens): raise data.pack_length or set "
                                 f"data.max_length <= pack_length (longer samples are then skipped and counted)")
            self.train_sampler = PackedBatchSampler(lengths, self.seed, self.pack_length, self.pack_rows,
                                                    self.pack_lookahead, world_size, rank)
            self.train_sampler.epoch, self.train_sampler.batches_done = self._packed_position(self._consumed_to_restore)
        else:
            if isinstance(self._consumed_to_restore, tuple):
                raise ValueError("the checkpoint planned packed rows (data.pack_lookahead), this run does not: "
                                 "resume with the checkpoint's data.pack_* settings")
            self.train_sampler = ResumableShuffleSampler(len(dataset), self.seed, num_replicas=world_size, rank=rank)
            self.train_sampler.consumed = self._consumed_to_restore
        return self._loader(self.train_split, self.train_sampler)

    def _packed_position(self, restored: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(restored, int):
            if restored:
                raise ValueError("the checkpoint's data position counts samples of unplanned batches, this run plans "
                                 "packed rows: add data.pack_lookahead=0 to resume it")
            return 0, 0
        saved, now = self._restored_packing, self._packing()
        changed = [f"{k}: {saved.get(k)} -> {now[k]}" for k in now if saved.get(k) != now[k]]
        if changed:
            raise ValueError(f"the checkpoint planned packed rows with other settings ({', '.join(changed)}); "
                             "resume with the checkpoint's data.pack_* settings and number of devices")
        return restored

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_split) if self.val_split else []

    # -- exact resume: the data position is part of the checkpoint -----------------------------

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # Called once per batch the loop really uses (after any prefetch), so this count is exact.
        if self.trainer is not None and self.trainer.training and self.train_sampler is not None:
            if isinstance(self.train_sampler, PackedBatchSampler):
                self.train_sampler.batches_done += 1  # every rank trains one batch of each planned global batch
            else:
                # Every rank draws the same number of samples per step, so the global count is exact too.
                drawn = len(batch["ids"]) + batch.get("skipped", 0)
                self.train_sampler.consumed += drawn * self.train_sampler.num_replicas
            self._count_skipped(batch)
        return batch

    def _packing(self) -> dict[str, Any]:
        """What a planned-packing position depends on: a resume must plan the same rows."""
        return {"pack_length": self.pack_length, "pack_rows": self.pack_rows, "pack_lookahead": self.pack_lookahead,
                "world_size": self.train_sampler.num_replicas}

    def state_dict(self) -> dict[str, Any]:
        state = {"seed": self.seed, "skipped_total": self.skipped_total,
                 "empty_batches_total": self.empty_batches_total}
        sampler = self.train_sampler
        if isinstance(sampler, PackedBatchSampler):
            return {**state, "train_packed_position": [sampler.epoch, sampler.batches_done], "packing": self._packing()}
        if isinstance(self._consumed_to_restore, tuple):  # restored, not trained yet: keep what was restored
            return {**state, "train_packed_position": list(self._consumed_to_restore),
                    "packing": self._restored_packing}
        consumed = sampler.consumed if sampler is not None else self._consumed_to_restore
        return {**state, "train_samples_consumed": consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint was trained with data seed {state['seed']}, this run uses {self.seed}")
        if "train_packed_position" in state:
            self._consumed_to_restore = tuple(state["train_packed_position"])
            self._restored_packing = dict(state["packing"])
        else:
            self._consumed_to_restore = state["train_samples_consumed"]
        self.skipped_total = state.get("skipped_total", 0)
        self.empty_batches_total = state.get("empty_batches_total", 0)
        if isinstance(self.train_sampler, PackedBatchSampler):
            self.train_sampler.epoch, self.train_sampler.batches_done = self._packed_position(self._consumed_to_restore)
        elif self.train_sampler is not None:
            self.train_sampler.consumed = self._consumed_to_restore
