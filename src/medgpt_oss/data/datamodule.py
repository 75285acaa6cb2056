"""LightningDataModule over conversation records in JSONL files (MedSynth or prepared real data)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
    return records


class ConversationDataset(Dataset):
    """Records of one split, optionally restricted to some tasks, processed lazily."""

    def __init__(self, path: Path, processor: SampleProcessor, tasks: Sequence[str] | None = None) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"split file '{path}' does not exist; set data.root to a prepared data folder")
        records = read_jsonl(path)
        self.records = [r for r in records if tasks is None or r.get("task") in tasks]
        if not self.records:
            found = sorted({str(r.get("task")) for r in records})
            raise ValueError(f"'{path}' has no records of tasks {list(tasks or [])}; it has tasks {found}")
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.processor(self.records[index])


class ConversationDataModule(L.LightningDataModule):
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
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.input_spec = input_spec
        self.train_split, self.val_split = train_split, val_split
        self.tasks = list(tasks) if tasks else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.synth = dict(synth) if synth else None
        self.seed = seed
        self.processor = SampleProcessor(input_spec, self.root, system_prompt=system_prompt, max_length=max_length)
        self.datasets: dict[str, ConversationDataset] = {}

    def prepare_data(self) -> None:
        if self.synth is not None:
            from medgpt_oss.data.synthetic import ensure_medsynth

            ensure_medsynth(self.root, **self.synth)

    def setup(self, stage: str | None = None) -> None:
        for split in filter(None, (self.train_split, self.val_split)):
            if split not in self.datasets:
                self.datasets[split] = ConversationDataset(self.root / f"{split}.jsonl", self.processor, self.tasks)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=self.processor.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_split, shuffle=False) if self.val_split else []
