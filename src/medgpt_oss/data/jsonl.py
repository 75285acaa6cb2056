"""The one reader of JSONL files (records, predictions, shards, run rows): every bad line names file and line.

:func:`json_lines` never stops at a bad line; it hands it over as a :class:`BadLine`, so each caller decides
whether one bad line is a counted skip (a million-line record file with one bad line is still a million
records) or an error (a predictions file must be whole). :func:`read_jsonl` is the strict form.

Text is decoded as UTF-8 with ``surrogateescape``: a byte that is not UTF-8 never breaks the reading of the
lines after it; its line is a :class:`BadLine` of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class BadLine(ValueError):
    """A line that is not a JSON object; ``str()`` names the file and the line."""

    def __init__(self, path: str | Path, line_no: int, problem: str, non_utf8: bool = False) -> None:
        super().__init__(f"{path}:{line_no}: {problem}")
        self.line_no, self.problem, self.non_utf8 = line_no, problem, non_utf8
        self.where = f"{Path(path).name}:{line_no}"  # short form, for ids and skip reasons


def has_lone_surrogate(text: str) -> bool:
    """Text that holds half of a UTF-16 pair (a ``\\ud800`` JSON escape, or a byte that was not UTF-8 read with
    surrogateescape): no tokenizer can encode it."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """``(line number, record)`` for every non-blank line; a line that holds bytes that are not UTF-8, is not
    valid JSON or is not a JSON object comes as a :class:`BadLine` instead of its record."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if has_lone_surrogate(line):  # surrogateescape kept the bytes that were not UTF-8
                yield line_no, BadLine(path, line_no, "bytes that are not UTF-8 -- re-encode the file as UTF-8",
                                       non_utf8=True)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, BadLine(path, line_no, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield line_no, BadLine(path, line_no, f"a JSON {type(record).__name__}, not a record object")
                continue
            yield line_no, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a file that must be whole (shards, run rows): the first bad line is its
    :class:`BadLine` error."""
    records = []
    for _, record in json_lines(path):
        if isinstance(record, BadLine):
            raise record
        records.append(record)
    return records


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSONL record file, and one problem per bad line (naming file and line).

    A record without an id is named by where it is.
    """
    records, problems = [], []
    for line_no, record in json_lines(path):
        if isinstance(record, BadLine):
            problems.append(f"{record.where}: {record.problem}")
            continue
        record.setdefault("id", f"{Path(path).name}:{line_no}")
        records.append(record)
    return records, problems
