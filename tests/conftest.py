"""Shared fixtures: composing the real Hydra configs, a small MedSynth set, the tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from medgpt_oss.config import CONF_DIR, group_options
from medgpt_oss.models.tokenizer import load_tokenizer

SMALL_MEDSYNTH = {"seed": 0, "n_train": 48, "n_val": 8, "n_test": 8, "image_size": 128}
# Every encoder the config offers (conf/encoder/*.yaml): a test "for each encoder" covers a new one without an edit.
ENCODERS = group_options("encoder")


def compose_train(overrides: list[str], out_dir: Path, data_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml as `python -m medgpt_oss.train` would, with run folders under out_dir."""
    return compose_config("train", overrides, out_dir, data_dir)


def compose_config(name: str, overrides: list[str], out_dir: Path, data_dir: Path | None = None,
                   conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/<name>.yaml as its `python -m medgpt_oss.<command>` would, with run folders under out_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.runtime.cwd = str(out_dir)
        cfg.hydra.job.num = 0
        if "paths" in cfg:
            cfg.paths.root_dir = str(out_dir)
            if data_dir is not None:
                cfg.paths.data_dir = str(data_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The shipped tiny harmony tokenizer with the image token added, as the model adds it."""
    return load_tokenizer()


@pytest.fixture(scope="session")
def medsynth_dir(tmp_path_factory) -> Path:
    """A small MedSynth set shared by the tests; `data.synth` points at the same arguments."""
    from medgpt_oss.data.medsynth.generate import ensure_medsynth

    data_dir = tmp_path_factory.mktemp("data")
    ensure_medsynth(data_dir / "medsynth", **SMALL_MEDSYNTH)
    return data_dir


def small_data_overrides() -> list[str]:
    return [f"data.synth.{k}={v}" for k, v in SMALL_MEDSYNTH.items()]
