"""Where the Hydra config tree lives and small helpers over composed configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medgpt_oss import schemas

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries conf/ inside the package; a source checkout (editable install) has it at the top.
CONF_DIR = _PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parents[1] / "conf"
MODEL_GROUPS = ("encoder", "projector", "llm", "lora")

# conf/paths/default.yaml roots outputs at ${cwd:} unless MEDGPT_ROOT is set. Not ${hydra:runtime.cwd}: a
# multirun resolves hydra.sweep.dir (which goes through paths.log_dir) before Hydra's runtime config exists.
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
# The model groups' option files extend these typed schemas (``- /schema/<name>@_here_`` in their defaults lists).
schemas.register()


class MissingExtraError(RuntimeError):
    """A config choice needs an optional dependency that is not installed."""


def available_stages() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_option(group: str, option: str) -> DictConfig:
    """conf/<group>/<option>.yaml as the file holds it, interpolations unresolved, without its defaults list
    (the schema it extends): one part to build or compare outside a composed config."""
    config = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    config.pop("defaults", None)
    return config


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The model parts of a composed config as plain, resolved dicts (what a stage saves as hparams)."""
    return {name: OmegaConf.to_container(cfg[name], resolve=True) if cfg.get(name) else None for name in MODEL_GROUPS}
