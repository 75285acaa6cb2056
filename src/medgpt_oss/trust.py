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


def check_class_path(path: Any, where: str, trusted: Iterable[str] = (), base: type | None = None) -> type:
    """The class ``path`` names, if it is one of this project's (or listed in ``trusted``); else refused.

    The module is imported only after its name passed the check: importing a module runs its code. The
    class must also be *defined* in this project (not merely imported by one of its modules, like
    ``medgpt_oss.models.llm.AutoModelForCausalLM``) and, when ``base`` is given, subclass it.
    """
    if not isinstance(path, str) or "." not in path:
        raise UntrustedCodeError(f"{where} = {path!r} is not a 'package.module.Class' path")
    module_name, _, name = path.rpartition(".")
    is_trusted = path in set(trusted)
    if not is_trusted and not _in_project(module_name):
        raise UntrustedCodeError(
            f"{where} = '{path}' is not a class of {PROJECT}: a checkpoint or export from elsewhere may only "
            f"name this project's classes. If you trust the file and that class, add it to trusted_targets=[{path}]"
        )
    obj = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(obj, type):
        raise UntrustedCodeError(f"{where} = '{path}' is not a class (functions are never called from a file)")
    if not is_trusted and not _in_project(obj.__module__):
        raise UntrustedCodeError(f"{where} = '{path}' is {obj.__module__}.{obj.__qualname__}, not a class of {PROJECT}")
    if base is not None and not issubclass(obj, base):
        raise UntrustedCodeError(f"{where} = '{path}' is not a {base.__name__}")
    return obj


def _in_project(module_name: str) -> bool:
    return module_name == PROJECT or module_name.startswith(PROJECT + ".")


# Hyper-parameter keys Lightning merges into a stage's constructor arguments (the new key and, for old
# checkpoints, two past ones): each is read from the file.
HPARAMS_KEYS = ("hyper_parameters", "hparams", "module_arguments")


def check_targets(config: Any, where: str, trusted: Iterable[str] = (),
                  bases: Mapping[str, type] | None = None) -> None:
    """Every ``_target_`` in a stored config (nested dicts and lists) must pass :func:`check_class_path`;
    ``bases`` maps a key path (``"model.encoder"``) to the class its target must subclass."""
    trusted, bases = tuple(trusted), dict(bases or {})

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "_target_":
                    check_class_path(value, f"{where}.{path}._target_" if path else f"{where}._target_", trusted,
                                     bases.get(path))
                else:
                    walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(config, "")


def check_checkpoint(checkpoint: Mapping[str, Any], trusted: Iterable[str] = ()) -> None:
    """The parts of a (weights-only loaded) stage checkpoint that choose code: every hyper-parameter key
    Lightning reads (``_target_`` s of the model parts, each of its part's base class) and the stage class."""
    from medgpt_oss.models.encoders import VisionEncoder
    from medgpt_oss.models.llm import LanguageModel
    from medgpt_oss.models.lora import LoraSettings
    from medgpt_oss.models.projectors import Projector

    bases = {"model.encoder": VisionEncoder, "model.projector": Projector, "model.llm": LanguageModel,
             "model.lora": LoraSettings}
    for key in HPARAMS_KEYS:
        check_targets(checkpoint.get(key) or {}, f"checkpoint {key}", trusted, bases)
    if "stage_class" in checkpoint:
        from medgpt_oss.stages.base import VLMStage

        check_class_path(checkpoint["stage_class"], "checkpoint stage_class", trusted, VLMStage)


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
    """A data path that leaves its data root (``..``, an absolute path, a symlink pointing out), or that
    cannot be resolved at all (a NUL byte, a symlink loop)."""


def inside_root(root: Any, path: Any) -> Any:
    """``root / path`` with symlinks resolved, if it stays inside ``root``; else :class:`OutsideRootError`.

    A record names files by path, so without this a data folder could make ``prepare`` embed any
    readable file of the machine in its shards (``../../home/me/.ssh/id_rsa``, ``/etc/shadow``, a
    symlink to either).
    """
    from pathlib import Path

    try:
        base = Path(root).resolve()
        full = (Path(root) / path).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop: no file it could name
        raise OutsideRootError(f"'{path}' cannot be resolved to a file ({exc})") from None
    if full != base and base not in full.parents:
        raise OutsideRootError(f"'{path}' resolves to '{full}', outside the data root '{base}'")
    return full
