"""LightningDataModule over prepared shard folders: ``data=prepared data.root=<dir>`` or ``data=mixture``.

Training streams endlessly (``data/streaming.py``), so a run is as long as ``trainer.max_steps``
says; ``max_steps=-1`` is refused because it would never end. Validation is one finite pass over
the val split of every source. The checkpoint holds the batches this rank's loop consumed; resuming
needs the same seed, world size, workers and batch size, because together they decide the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from medgpt_oss.data.datamodule import CountsSkippedSamples
from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor
from medgpt_oss.data.shards import read_manifest
from medgpt_oss.data.streaming import FiniteConversations, StreamingConversations

# What decides the stream: a checkpoint's position only means something if these are unchanged.
STREAM_KEYS = ("seed", "world_size", "num_workers", "batch_size", "sources", "tasks", "shuffle_buffer", "pack_length",
               "pack_lookahead", "pack_rows")


def warn_if_prepared_for_other_tokens(root: str, tokens_per_image: int) -> None:
    """Warn when ``prepare`` validated the folder for another image-token count than this model's (its
    manifest records the contract it used). Not an error: every sample is tokenized again for this model as it
    is read, and one now over ``data.max_length`` is a counted skip -- but a whole folder of them is a wasted
    run, so say it first."""
    try:
        report = read_manifest(root).get("report")
    except (OSError, ValueError):
        return  # a missing or unreadable folder: the stream names it when it opens it
    recorded = report.get("contract") if isinstance(report, dict) else None
    prepared_for = recorded.get("tokens_per_image") if isinstance(recorded, dict) else None
    if not isinstance(prepared_for, int) or prepared_for == tokens_per_image:
        return  # the same count, or a folder from before prepare recorded its contract
    rank_zero_warn(
        f"prepared data '{root}' was validated with {prepared_for} image tokens per image (prepare's scale="
        f"{recorded.get('scale')}, encoder {recorded.get('encoder')}, projector {recorded.get('projector')}), but "
        f"this model makes {tokens_per_image}: samples are re-checked against data.max_length as they are read and "
        "those too long are skipped. Fix: re-run python -m medgpt_oss.prepare with the scale=, encoder= and "
        "projector= of this training run")


class PreparedDataModule(CountsSkippedSamples, L.LightningDataModule):
    """Train/val loaders over one prepared folder (``root``) or weighted ones (``sources``)."""

    # The training stream never ends: a run is trainer.max_steps long, and the stage sizes its LR schedule
    # from that without setting up the data early (see VLMStage.configure_optimizers).
    endless = True

    def __init__(
        self,
        input_spec: ModelInputSpec,
        root: str | None = None,
        sources: Sequence[dict[str, Any]] | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        tasks: Sequence[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        max_length: int | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
        pack_length: int | None = None,
        pack_lookahead: int | None = None,
        pack_rows: int = 1,
        shuffle_buffer: int = 1024,
        strict: bool = False,
        max_tiles: int | None = None,
        dicom: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (root is None) == (not sources):
            raise ValueError("give exactly one of data.root=<prepared dir> (data=prepared) or "
                             "data.sources=[{root: <dir>, weight: <w>}, ...] (data=mixture)")
        given = [{"root": root, "weight": 1.0}] if root is not None else [dict(s) for s in sources]
        for s in given:
            if set(s) != {"root", "weight"}:
                raise ValueError(f"each data.sources entry needs exactly 'root' and 'weight', got {s}")
        self.sources = [(str(Path(s["root"])), float(s["weight"])) for s in given]
        for source_root, _ in self.sources:
            warn_if_prepared_for_other_tokens(source_root, input_spec.tokens_per_image)
        self.train_split, self.val_split = train_split, val_split
        self.tasks = list(tasks) if tasks else None
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pack_length, self.shuffle_buffer, self.strict = pack_length, shuffle_buffer, strict
        # With pack_length: batches of pack_rows rows planned over pack_lookahead drawn records (0: batch_size
        # records packed among themselves).
        self.pack_lookahead = pack_lookahead if pack_length and pack_lookahead else None
        self.pack_rows = pack_rows
        # Images come from the shards' bytes, so the root only names things in messages.
        # max_tiles: InternVL-style dynamic tiling; dicom: how embedded DICOM bytes render (as for data=medsynth).
        self.processor = SampleProcessor(input_spec, self.sources[0][0], system_prompt=system_prompt,
                                         max_length=max_length, max_tiles=max_tiles, dicom=dicom)
        self.batches_consumed = 0
        self.train_dataset: StreamingConversations | None = None
        self._restored: dict[str, Any] | None = None

    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def stream_settings(self) -> dict[str, Any]:
        world_size, _ = self._world()
        return {"seed": self.seed, "world_size": world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "sources": [list(s) for s in self.sources], "tasks": self.tasks,
                "shuffle_buffer": self.shuffle_buffer, "pack_length": self.pack_length,
                "pack_lookahead": self.pack_lookahead, "pack_rows": self.pack_rows}

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.max_steps < 0:
            raise ValueError("prepared data streams without end: set trainer.max_steps (epochs never finish; "
                             "validation needs an int trainer.val_check_interval with check_val_every_n_epoch=null)")
        world_size, rank = self._world()
        max_length = self.processor.formatter.max_length
        if self.pack_lookahead and (max_length is None or max_length > self.pack_length):
            # An endless stream cannot check every record first: cap samples at the row, so a longer one is a
            # counted skip, never an error hours into the run.
            raise ValueError(f"planned packing needs data.max_length <= data.pack_length={self.pack_length} "
                             f"(now {max_length}): set data.max_length={self.pack_length}")
        if self._restored is not None:
            self._check_resumable(self._restored)
        self.train_dataset = StreamingConversations(
            self.sources, self.processor, self.batch_size, self.seed, split=self.train_split, tasks=self.tasks,
            shuffle_buffer=self.shuffle_buffer, strict=self.strict, pack_length=self.pack_length,
            world_size=world_size, rank=rank, num_workers=self.num_workers, pack_lookahead=self.pack_lookahead,
            pack_rows=self.pack_rows)
        self.train_dataset.start_batches = self.batches_consumed
        # The dataset yields whole batches (batch_size=None); workers restart from the position on each iter.
        return DataLoader(self.train_dataset, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_split:
            return []
        # Every rank scores the whole split: the same batches everywhere, so the all-gathers of a sharded
        # (FSDP) forward line up; split by rank, one rank could run out first and the others would hang.
        dataset = FiniteConversations([root for root, _ in self.sources], self.processor, self.batch_size,
                                      split=self.val_split, tasks=self.tasks, strict=self.strict,
                                      pack_length=self.pack_length)
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    # -- exact resume --------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # Called once per batch the loop really uses (after any prefetch): the count is exact.
        if self.trainer is not None and self.trainer.training:
            self.batches_consumed += 1
            self._count_skipped(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed, "skipped_total": self.skipped_total,
                "empty_batches_total": self.empty_batches_total, **self.stream_settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_consumed = int(state["batches_consumed"])
        self.skipped_total = int(state.get("skipped_total", 0))
        self.empty_batches_total = int(state.get("empty_batches_total", 0))
        self._restored = state
        if self.train_dataset is not None:
            self._check_resumable(state)
            self.train_dataset.start_batches = self.batches_consumed

    def _check_resumable(self, state: dict[str, Any]) -> None:
        now = self.stream_settings()
        changed = {k: (state.get(k), now[k]) for k in STREAM_KEYS if state.get(k) != now[k]}
        if changed:
            detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"cannot resume the data stream exactly: {detail}. The stream position is a batch "
                             "count that only means something with the same settings; set them back "
                             "(e.g. data.num_workers, trainer.devices) or start a new run with init_from=<ckpt>")
