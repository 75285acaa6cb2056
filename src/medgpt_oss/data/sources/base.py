"""What every published-format source shares: the record it yields, the skip it reports, file readers.

A source knows where a data set's published files are and how to turn them into
LLaVA-style conversations; it does not open images or tokenize -- ``prepare``
validates every record the same way whatever its source.

Text encoding: every JSON/JSONL/CSV file is decoded as UTF-8 with
``surrogateescape``, so a stray non-UTF-8 byte never breaks the file's structure
(the delimiters are ASCII) but survives as a lone surrogate inside the one field
that holds it. ``prepare`` then skips exactly that record ("non_utf8") instead
of failing a file of 100k good records. A file that is not valid JSON at all
fails as a whole: its record boundaries cannot be trusted.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.layout import PublishedLayout

SPLITS = ("train", "val", "test")


@dataclass
class SourceRecord:
    """One conversation sample, as the source publishes it (images are paths, not yet read)."""

    id: str
    task: str
    split: str
    conversations: list[dict[str, str]]
    images: list[Path] = field(default_factory=list)  # in <image> order
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skip:
    """A record that cannot become a sample; ``prepare`` reports it by id, kind and reason."""

    id: str
    kind: str      # short, countable: empty_findings, missing_field, ...
    reason: str    # the specific problem
    fix: str = ""
    split: str = ""
    expected: bool = False  # a known property of the data set (IU X-ray's empty findings), not broken input:
                            # counted and reported, but strict=true does not stop on it


class SourceLayoutError(FileNotFoundError):
    """The source root is missing or does not hold the published files."""


def turns(*texts: str) -> list[dict[str, str]]:
    """Alternating human/gpt LLaVA turns."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def stable_choice(key: str, options: list[str] | tuple[str, ...]) -> str:
    """The same option for the same key on every run and machine (unlike ``hash``)."""
    return options[int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest(), 16) % len(options)]


def stable_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """A deterministic split for sources that publish none."""
    u = int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


class Source(PublishedLayout):
    """Base class. Subclasses set ``name``, ``layout``, ``origin`` and implement :meth:`records`."""

    name: str = "source"
    kind = "source"
    layout_error_class = SourceLayoutError

    def __init__(self, root: str | Path, allow_outside_root: bool = False) -> None:
        self.root = Path(root).expanduser()
        # False: every image path must resolve inside root (symlinks followed), else the record is an
        # outside_root skip; true for folders whose records point at images elsewhere, if you trust them.
        self.allow_outside_root = bool(allow_outside_root)

    def records(self) -> Iterator[SourceRecord | Skip]:
        raise NotImplementedError

    # -- readers (see the module docstring for the encoding policy) ----------------------------

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as exc:
            raise self.layout_error(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from exc

    def read_jsonl(self, path: Path) -> Iterator[tuple[int, dict[str, Any] | Skip]]:
        """(line number, record) pairs; a line that is not a JSON object is a Skip, not a failed file."""
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    yield line_no, Skip(f"{self.name}-{path.name}:{line_no}", "bad_json_line",
                                        f"{path.name}:{line_no}: {exc}", "fix or delete the line")
                    continue
                yield line_no, rec

    def read_csv(self, path: Path) -> Iterator[dict[str, str]]:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            yield from csv.DictReader(fh)


def has_bad_text(value: Any) -> bool:
    """True if any string inside holds a byte that was not UTF-8 (a lone surrogate)."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(has_bad_text(k) or has_bad_text(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_bad_text(v) for v in value)
    return False
