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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.jsonl import has_lone_surrogate
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


class BadField(ValueError):
    """A record field that is missing or not of its published type (raised by :func:`text`)."""

    def __init__(self, kind: str, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.kind, self.reason, self.fix = kind, reason, fix


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def text(rec: dict[str, Any], key: str, optional: bool = False) -> str | None:
    """A text field, stripped. Never stringified: ``null``, numbers, booleans and lists are not questions or
    answers (``str()`` would train on "None", "True", "nan", "['a', 'b']"). ``optional``: a missing or
    ``null`` field is ``None`` rather than a skip."""
    value = rec.get(key)
    if value is None and optional:
        return None
    if key not in rec:
        raise BadField("missing_field", f"no field '{key}'", f"give every record a '{key}'")
    if not isinstance(value, str):
        raise BadField("bad_field", f"'{key}' is {_json_type(value)} ({value!r:.60}), not text",
                       f"give '{key}' as a string")
    return value.strip()


def file_names(rec: dict[str, Any], key: str, single: bool = False) -> list[str]:
    """A field naming image files: a list of names (``single``: or one name), or missing/``null`` (none).
    Anything else (a number, a list holding a ``null``) is a :class:`BadField`, never a path made of ``str()``."""
    value = rec.get(key)
    names = [] if value is None else [value] if single and isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        wanted = "a file name or a list of them" if single else "a list of file names"
        raise BadField("bad_field", f"'{key}' is {value!r:.60}, not {wanted}", f"give '{key}' as {wanted}")
    return names


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

    def each(self, split: str, entries: Iterable[tuple[str, Any]],
             convert: Callable[[str, dict[str, Any]], Iterator[SourceRecord | Skip]],
             record_id: Callable[[dict[str, Any]], Any] | None = None,
             id_prefix: str | None = None) -> Iterator[SourceRecord | Skip]:
        """``convert(rid, record)`` for every raw entry of a published file, so that one bad record never stops
        a run: an entry that is not a JSON object, a field of the wrong type or a record ``convert`` cannot
        parse becomes a counted skip with the record's id (``record_id(record)``, after ``id_prefix``, default
        the source's name and "-") or, without one, where it is (e.g. ``vqa_rad-trainset.json[12]``). An id of
        ``0`` is an id. A record's samples are yielded only once all of them parsed."""
        prefix = f"{self.name}-" if id_prefix is None else id_prefix
        objects, unparsed, first_error = 0, 0, None
        for where, rec in entries:
            if isinstance(rec, Skip):
                rec.split = rec.split or split
                yield rec
                continue
            rid = f"{prefix}{where}"
            if not isinstance(rec, dict):
                yield Skip(rid, "bad_record", f"{where} is {_json_type(rec)}, not a record object",
                           "give each record as a JSON object", split)
                continue
            objects += 1
            own_id = record_id(rec) if record_id else None
            if isinstance(own_id, (str, int)) and not isinstance(own_id, bool) and str(own_id).strip():
                rid = f"{prefix}{own_id}"
            try:
                items = list(convert(rid, rec))
            except BadField as bad:
                yield Skip(rid, bad.kind, f"{where}: {bad.reason}", bad.fix, split)
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                unparsed += 1
                first_error = first_error or exc
                yield Skip(rid, "bad_record", f"{where}: {type(exc).__name__}: {exc}",
                           "check the record against the published schema", split)
                continue
            yield from items
        if objects and unparsed == objects:
            # Not one record of the file parsed: a wrong source for this file, or a bug -- not bad data.
            raise RuntimeError(f"{self.name}: none of the {objects} records of split '{split}' could be parsed; "
                               f"is this the right source= for the file? First error: {first_error!r}") from first_error

    # -- readers (see the module docstring for the encoding policy) ----------------------------

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as exc:
            raise self.layout_error(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from exc

    def json_list(self, path: Path) -> Iterator[tuple[str, Any]]:
        """``(where, entry)`` for each entry of a file holding one JSON list (``where``: ``name[i]``)."""
        data = self.read_json(path)
        if not isinstance(data, list):
            raise self.layout_error(f"'{path}' must hold a JSON list of records, not {_json_type(data)}")
        for i, rec in enumerate(data):
            yield f"{path.name}[{i}]", rec

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
    """True if any string inside holds a lone surrogate: a byte that was not UTF-8 (surrogateescape), or a
    ``\\ud800``-style escape in valid JSON. Neither is text a tokenizer can encode."""
    if isinstance(value, str):
        return has_lone_surrogate(value)
    if isinstance(value, dict):
        return any(has_bad_text(k) or has_bad_text(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_bad_text(v) for v in value)
    return False
