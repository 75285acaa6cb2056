"""The prepared data format: Parquet shards of conversation records with their image bytes inside.

``python -m medgpt_oss.prepare`` writes it, the streaming data module reads it::

    <root>/manifest.json                  what is where, and the prepare report
    <root>/<split>/shard-00000.parquet    records, in row groups of ``row_group_records``

Why Parquet through pyarrow (already a dependency for the evaluation sets):
one file holds thousands of records with their images, so a cluster file
system sees few large files; a row group is the unit a data loader worker
reads, shuffles and can skip without decoding, which makes sharding across
nodes/ranks/workers and exact resume a matter of counting; and any tool
(pandas, DuckDB, ``datasets``) can open a shard to inspect it.

Images are stored as the encoded file bytes (PNG/JPEG as published, DICOM
rendered to PNG by ``prepare``), decoded only at training time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "medgpt-oss-shards"
VERSION = 1
MANIFEST = "manifest.json"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("conversations", pa.string()),  # JSON list of LLaVA turns {"from", "value"}
        ("images", pa.list_(pa.binary())),  # encoded image files, in <image> order
        ("image_names", pa.list_(pa.string())),  # where each image came from (for error messages)
        ("meta", pa.string()),  # JSON object: the source's own fields (answer_type, modality, ...)
    ]
)


@dataclass
class PreparedRecord:
    id: str
    task: str
    conversations: list[dict[str, str]]
    images: list[bytes] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "conversations": json.dumps(self.conversations, ensure_ascii=False),
            "images": self.images,
            "image_names": self.image_names,
            "meta": json.dumps(self.meta, ensure_ascii=False),
        }


def row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A shard row -> the record dict the SampleProcessor takes (images as bytes, not paths)."""
    return {
        "id": row["id"],
        "task": row["task"],
        "conversations": json.loads(row["conversations"]),
        "image_bytes": list(row["images"]),
        "image": list(row["image_names"]),
        "meta": json.loads(row["meta"]),
    }


class ShardWriter:
    """Writes one split's records into ``<root>/<split>/shard-NNNNN.parquet`` files of bounded size."""

    def __init__(self, root: str | Path, split: str, shard_records: int = 2048, row_group_records: int = 128) -> None:
        if row_group_records < 1 or shard_records < row_group_records:
            raise ValueError("need 1 <= row_group_records <= shard_records")
        self.root, self.split = Path(root), split
        self.shard_records, self.row_group_records = shard_records, row_group_records
        (self.root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[dict[str, Any]] = []
        self._in_shard = 0
        self.records = 0

    def write(self, record: PreparedRecord) -> None:
        self._pending.append(record.to_row())
        self.records += 1
        if len(self._pending) == self.row_group_records:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            name = f"{self.split}/shard-{len(self.shards):05d}.parquet"
            self._writer = pq.ParquetWriter(self.root / name, SCHEMA)
            self.shards.append({"path": name, "records": 0, "row_groups": 0})
        self._writer.write_table(pa.Table.from_pylist(self._pending, schema=SCHEMA),
                                 row_group_size=self.row_group_records)
        self.shards[-1]["records"] += len(self._pending)
        self.shards[-1]["row_groups"] += 1
        self._in_shard += len(self._pending)
        self._pending = []
        if self._in_shard >= self.shard_records:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._in_shard = None, 0

    def close(self) -> dict[str, Any]:
        """Finish the split; returns its manifest entry."""
        self._flush()
        self._close_shard()
        return {"records": self.records, "shards": self.shards}


def write_manifest(root: str | Path, source: str, splits: dict[str, dict[str, Any]], report: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST
    manifest = {"format": FORMAT, "version": VERSION, "source": source, "splits": splits, "report": report}
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"'{root}' is not a prepared data folder (no {MANIFEST}); "
            "create one with: python -m medgpt_oss.prepare source=<name> source.root=<dir> out=<dir>"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"'{path}' is format {manifest.get('format')} v{manifest.get('version')}, "
                         f"this code reads {FORMAT} v{VERSION}; prepare the data again")
    return manifest


class ShardError(ValueError):
    """A shard file that cannot be read (truncated, overwritten, not Parquet); the message names it."""


def open_shard(path: str | Path) -> pq.ParquetFile:
    """A shard's Parquet file (its footer read); a truncated or foreign file is a :class:`ShardError` naming it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"shard '{path}' cannot be read ({exc}); the file is truncated or was changed after "
                         "prepare: prepare the folder again") from None


def read_row_group(path: str | Path, row_group: int, columns: list[str] | None = None) -> pa.Table:
    try:
        return open_shard(path).read_row_group(row_group, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"shard '{path}', row group {row_group}, cannot be read ({exc}); prepare the folder "
                         "again") from None


def iter_row_group(root: str | Path, shard_path: str, row_group: int) -> Iterator[dict[str, Any]]:
    """The records of one row group, in order (reads that row group only)."""
    table = read_row_group(Path(root) / shard_path, row_group)
    yield from (row_to_record(row) for row in table.to_pylist())
