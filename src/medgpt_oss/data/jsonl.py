"""Reading JSONL files (records, predictions, shards) with errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
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


def has_lone_surrogate(text: str) -> bool:
    """Text that holds half of a UTF-16 pair (a ``\\ud800`` JSON escape, or a byte that was not UTF-8 read with
    surrogateescape): no tokenizer can encode it."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of a JSONL file, and one problem per line that is not one (naming file and line).

    A line that is not valid JSON, not an object, or holds bytes that are not UTF-8 is a problem to count,
    not a reason to stop reading the other lines (a record file of a million lines with one bad line is
    still a million records).
    """
    records, problems = [], []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{Path(path).name}:{line_no}"
            if has_lone_surrogate(line):  # surrogateescape kept the bytes that were not UTF-8
                problems.append(f"{where}: bytes that are not UTF-8 -- re-encode the file as UTF-8")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{where}: a JSON {type(record).__name__}, not a record object")
                continue
            record.setdefault("id", where)  # a record without an id is named by where it is
            records.append(record)
    return records, problems
