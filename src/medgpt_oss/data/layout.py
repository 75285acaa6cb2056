"""Finding a data set's published files under a root folder, or saying where they should be.

Shared by the training sources (``data/sources``) and the evaluation benchmarks (``eval/benchmarks``):
both read files exactly as published, and a wrong root must name the expected files, where to get
them and the override that points at them.
"""

from __future__ import annotations

from pathlib import Path


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
