"""Finding and reading a data set's published files under a root folder, or saying where they should be.

Shared by the format readers of this package, the training sources (``data/sources``) and the evaluation
benchmarks (``eval/benchmarks``): all read files exactly as published, and a wrong root must name the
expected files, where to get them and the override that points at them.

Text encoding: every JSON and CSV file is decoded as UTF-8 with ``surrogateescape``, so a stray non-UTF-8
byte never breaks the file's structure (the delimiters are ASCII) but survives as a lone surrogate inside
the one field that holds it (:func:`has_bad_text` finds it): ``prepare`` skips exactly that record
("non_utf8") and a benchmark reports that item as malformed, instead of failing a file of 100k good
records. A file that is not valid JSON fails as a whole: its record boundaries cannot be trusted. JSONL
files: :mod:`medgpt_oss.data.jsonl`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from medgpt_oss.data.jsonl import has_lone_surrogate

Record = TypeVar("Record")


@dataclass
class Skip:
    """A record that cannot become a sample or an item, by id, kind and reason (``prepare`` counts it, a
    benchmark reports it as malformed)."""

    id: str
    kind: str      # short, countable: empty_findings, missing_field, ...
    reason: str    # the specific problem
    fix: str = ""
    split: str = ""
    expected: bool = False  # a known property of the data set (IU X-ray's empty findings), not broken input:
                            # counted and reported, but strict=true does not stop on it


class BadField(ValueError):
    """A record field that is missing or not of its published type (raised by :func:`text`)."""

    def __init__(self, kind: str, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.kind, self.reason, self.fix = kind, reason, fix


def json_type(value: Any) -> str:
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
        raise BadField("bad_field", f"'{key}' is {json_type(value)} ({value!r:.60}), not text",
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


def image_path(folder: str, name: str) -> str:
    """``folder/name``, relative to the root; a name that is an absolute path or climbs out with ``..`` stays
    so, for the image readers to refuse as outside the root."""
    return (PurePosixPath(folder) / name).as_posix()


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


class PublishedLayout:
    """Mixin: subclasses set ``layout``, ``origin``, ``kind`` and ``layout_error_class``; instances
    have ``root`` and ``name``."""

    layout: str = ""   # the expected files, shown when the root is wrong
    origin: str = ""   # where to get them
    kind: str = "source"                                  # the config group: source.root=... / benchmark.root=...
    layout_error_class: type[Exception] = FileNotFoundError
    root: Path
    name: str

    def root_hint(self) -> str:
        return f"{self.kind}.root=<that folder>"

    def layout_error(self, problem: str) -> Exception:
        return self.layout_error_class(
            f"{self.kind} '{self.name}': {problem}\n  expected under {self.root}:\n    "
            + self.layout.strip().replace("\n", "\n    ")
            + (f"\n  get the files from: {self.origin}" if self.origin else "")
            + f"\n  then pass {self.root_hint()}"
        )

    def require(self, *candidates: str) -> Path:
        """The first of ``candidates`` that exists under the root, else a layout error naming them."""
        if not self.root.is_dir():
            raise self.layout_error(f"root folder '{self.root}' does not exist")
        for rel in candidates:
            if (self.root / rel).exists():
                return self.root / rel
        raise self.layout_error(f"none of {list(candidates)} found in '{self.root}'")

    def require_folder(self, *candidates: str) -> str:
        """:meth:`require`, as the path relative to the root that the records' image paths start with; an
        absolute folder elsewhere stays absolute. Whether its images may be read is the image readers' own
        ``inside_root`` check (refused as ``outside_root`` unless ``allow_outside_root``), as for any path."""
        folder = self.require(*candidates)
        return folder.relative_to(self.root).as_posix() if folder.is_relative_to(self.root) else folder.as_posix()

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
            raise self.layout_error(f"'{path}' must hold a JSON list of records, not {json_type(data)}")
        for i, rec in enumerate(data):
            yield f"{path.name}[{i}]", rec

    def read_csv(self, path: Path) -> Iterator[dict[str, str]]:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            yield from csv.DictReader(fh)

    def each(self, split: str, entries: Iterable[tuple[str, Any]],
             convert: Callable[[str, dict[str, Any]], Iterator[Record | Skip]],
             record_id: Callable[[dict[str, Any]], Any] | None = None,
             id_prefix: str | None = None) -> Iterator[Record | Skip]:
        """``convert(rid, record)`` for every raw entry of a published file, so that one bad record never stops
        a run: an entry that is not a JSON object, a field of the wrong type or a record ``convert`` cannot
        parse becomes a counted skip with the record's id (``record_id(record)``, after ``id_prefix``, default
        the data set's name and "-") or, without one, where it is (e.g. ``vqa_rad-trainset.json[12]``). An id
        of ``0`` is an id. A record's results are yielded only once all of them parsed."""
        prefix = f"{self.name}-" if id_prefix is None else id_prefix
        objects, unparsed, first_error = 0, 0, None
        for where, rec in entries:
            if isinstance(rec, Skip):
                rec.split = rec.split or split
                yield rec
                continue
            rid = f"{prefix}{where}"
            if not isinstance(rec, dict):
                yield Skip(rid, "bad_record", f"{where} is {json_type(rec)}, not a record object",
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
            # Not one record of the file parsed: a wrong data set for this file, or a bug -- not bad data.
            raise RuntimeError(f"{self.name}: none of the {objects} records of split '{split}' could be parsed; "
                               f"is this the right {self.kind} for the file? First error: {first_error!r}") \
                from first_error
