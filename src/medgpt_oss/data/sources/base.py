"""What every published-format source shares: the record it yields, the layout error, conversation helpers.

A source knows where a data set's published files are and how to turn them into
LLaVA-style conversations; it does not open images or tokenize -- ``prepare``
validates every record the same way whatever its source. Data sets that are also
benchmarks are read by ``data/published`` (one reader for training and evaluation);
a source of one only turns the reader's records into conversations. File reading and
its encoding policy: :mod:`medgpt_oss.data.published.layout`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.jsonl import BadLine, json_lines
from medgpt_oss.data.published.layout import PublishedLayout, Skip
from medgpt_oss.data.published.vqa import VQAQuestion


@dataclass
class SourceRecord:
    """One conversation sample, as the source publishes it (images are paths, not yet read)."""

    id: str
    task: str
    split: str
    conversations: list[dict[str, str]]
    images: list[Path] = field(default_factory=list)  # in <image> order
    meta: dict[str, Any] = field(default_factory=dict)


class SourceLayoutError(FileNotFoundError):
    """The source root is missing or does not hold the published files."""


def turns(*texts: str) -> list[dict[str, str]]:
    """Alternating human/gpt LLaVA turns."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def stable_choice(key: str, options: list[str] | tuple[str, ...]) -> str:
    """The same option for the same key on every run and machine (unlike ``hash``)."""
    return options[int(hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest(), 16) % len(options)]


def stable_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """A deterministic split for sources that publish none."""
    u = int(hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 0xFFFFFFFF
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

    def read_jsonl(self, path: Path) -> Iterator[tuple[int, dict[str, Any] | Skip]]:
        """(line number, record) pairs; a line that is not a JSON object is a Skip, not a failed file."""
        for line_no, rec in json_lines(path):
            if isinstance(rec, BadLine):
                yield line_no, Skip(f"{self.name}-{rec.where}", "non_utf8" if rec.non_utf8 else "bad_json_line",
                                    f"{rec.where}: {rec.problem}", "fix or delete the line")
                continue
            yield line_no, rec


def vqa_records(root: Path, questions: Iterable[VQAQuestion | Skip]) -> Iterator[SourceRecord | Skip]:
    """One conversation per VQA question, its task the question's answer type (closed | open)."""
    for q in questions:
        yield q if isinstance(q, Skip) else SourceRecord(q.id, q.answer_type, q.split,
                                                         turns(f"<image>\n{q.question}", q.answer),
                                                         [root / q.image], q.meta)
