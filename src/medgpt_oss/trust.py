"""Files from elsewhere are data: what a checkpoint or an export folder may make this program run.

A Lightning checkpoint stores the config its model was built from (``_target_`` class paths
that ``hydra.utils.instantiate`` calls) and the stage class to rebuild; an export's
``config.json`` names its encoder and projector classes. Read naively, a crafted file chooses
the callable (``builtins.exec``, ``torch.load(..., weights_only=False)`` on a file of its
choice, a module whose import runs code). So every class path read from such a file must name
a class of this project -- checked *before* its module is imported -- or be one the user
listed in ``trusted_targets`` (config). Pickle payloads are refused by loading every checkpoint
with ``torch.load(weights_only=True)``, resume included. ``docs/security.md`` says what a file
from elsewhere can and cannot do.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

PROJECT = "medgpt_oss"


class UntrustedCodeError(ValueError):
    """A file from elsewhere names code this program will not run (the message names the key)."""


def check_class_path(path: Any, where: str, trusted: Iterable[str] = ()) -> type:
    """The class ``path`` names, if it is one of this project's (or listed in ``trusted``); else refused.

    The module is imported only after its name passed the check: importing a module runs its code.
    """
    if not isinstance(path, str) or "." not in path:
        raise UntrustedCodeError(f"{where} = {path!r} is not a 'package.module.Class' path")
    module_name, _, name = path.rpartition(".")
    if path not in set(trusted) and not (module_name == PROJECT or module_name.startswith(PROJECT + ".")):
        raise UntrustedCodeError(
            f"{where} = '{path}' is not a class of {PROJECT}: a checkpoint or export from elsewhere may only "
            f"name this project's classes. If you trust the file and that class, add it to trusted_targets=[{path}]"
        )
    obj = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(obj, type):
        raise UntrustedCodeError(f"{where} = '{path}' is not a class (functions are never called from a file)")
    return obj


def check_targets(config: Any, where: str, trusted: Iterable[str] = ()) -> None:
    """Every ``_target_`` in a stored config (nested dicts and lists) must pass :func:`check_class_path`."""
    trusted = tuple(trusted)
    if isinstance(config, Mapping):
        for key, value in config.items():
            path = f"{where}.{key}"
            if key == "_target_":
                check_class_path(value, path, trusted)
            else:
                check_targets(value, path, trusted)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_targets(value, f"{where}[{i}]", trusted)


def check_checkpoint(checkpoint: Mapping[str, Any], trusted: Iterable[str] = ()) -> None:
    """The parts of a (weights-only loaded) stage checkpoint that choose code: hyper-parameters, stage class."""
    check_targets(checkpoint.get("hyper_parameters") or {}, "checkpoint hyper_parameters", trusted)
    if "stage_class" in checkpoint:
        check_class_path(checkpoint["stage_class"], "checkpoint stage_class", trusted)


def load_checkpoint(path: Any) -> dict[str, Any]:
    """A checkpoint file as plain data (tensors, numbers, strings, containers): pickled objects of any other
    kind -- the way a pickle runs code -- are refused, naming the file."""
    import pickle

    from lightning.fabric.utilities.cloud_io import _load

    try:
        return _load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntrustedCodeError(f"'{path}' holds pickled objects other than weights and plain data, which could run "
                                 f"code; it is refused ({first_line})") from None


class OutsideRootError(ValueError):
    """A data path that leaves its data root (``..``, an absolute path, a symlink pointing out)."""


def inside_root(root: Any, path: Any) -> Any:
    """``root / path`` with symlinks resolved, if it stays inside ``root``; else :class:`OutsideRootError`.

    A record names files by path, so without this a data folder could make ``prepare`` embed any
    readable file of the machine in its shards (``../../home/me/.ssh/id_rsa``, ``/etc/shadow``, a
    symlink to either).
    """
    from pathlib import Path

    base = Path(root).resolve()
    full = (Path(root) / path).resolve()
    if full != base and base not in full.parents:
        raise OutsideRootError(f"'{path}' resolves to '{full}', outside the data root '{base}'")
    return full
