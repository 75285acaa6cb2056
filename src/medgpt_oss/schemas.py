"""Typed schemas of the model's config groups (conf/encoder, projector, llm, lora), registered with Hydra.

Each option file extends its schema first in its defaults list (``- /schema/encoder@_here_``), so Hydra
checks the file and every override against it while composing: a misspelt key (``feature_layr: -2`` in a
file) or a value of the wrong type (``encoder.feature_layer=abc``) stops the run before anything is built,
with an error naming the config path. A key no field declares can still be added with ``+`` (Hydra's
append); ``tiny`` (the random-init model's architecture) is an open mapping, as each class reads its own.

The fields are exactly the keys the option files hold, all required (``MISSING``): a schema adds no value
of its own, so a composed config is what its file says, and checkpoints record the same settings as before.
A field is ``| None`` wherever its class takes ``None``, so ``null`` composes where the class accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SCHEMA_GROUP = "schema"


@dataclass
class PretrainedPartSchema:
    """What every pretrained model part's file holds: its class, weights, scale, tiny init seed and dtype."""

    _target_: str = MISSING
    pretrained: str = MISSING
    scale: str = MISSING
    init_seed: int = MISSING
    dtype: str | None = MISSING


@dataclass
class EncoderSchema(PretrainedPartSchema):
    """conf/encoder/*.yaml: a :class:`medgpt_oss.models.encoders.VisionEncoder` subclass and its settings."""

    feature_layer: int = MISSING
    tiny: dict[str, Any] | None = MISSING


@dataclass
class LinearProjectorSchema:
    """conf/projector/*.yaml: a :class:`medgpt_oss.models.projectors.Projector`, partial (the model fills in
    in_dim and out_dim from the encoder and LLM)."""

    _target_: str = MISSING
    _partial_: bool = MISSING


@dataclass
class MLPProjectorSchema(LinearProjectorSchema):
    depth: int = MISSING


@dataclass
class PixelShuffleProjectorSchema(LinearProjectorSchema):
    factor: int = MISSING


@dataclass
class LLMSchema(PretrainedPartSchema):
    """conf/llm/*.yaml: :class:`medgpt_oss.models.llm.LanguageModel` and its settings."""

    attn_implementation: str | None = MISSING
    loss_chunk_size: int | None = MISSING
    image_token: str = MISSING
    chat: Any = MISSING
    activation_checkpointing: str | None = MISSING
    compile: str | None = MISSING
    tiny: dict[str, Any] | None = MISSING


@dataclass
class LoraSchema:
    """conf/lora/*.yaml (all but ``none``): :class:`medgpt_oss.models.lora.LoraSettings`."""

    _target_: str = MISSING
    rank: int = MISSING
    alpha: int | None = MISSING
    dropout: float = MISSING
    target_modules: list[str] = MISSING
    target_parameters: list[str] = MISSING


@dataclass
class QLoraSchema(LoraSchema):
    """LoRA on a model stored in 4-bit (models/quantize.py)."""

    quantize: str | None = MISSING
    quantize_modules: list[str] | None = MISSING


SCHEMAS = {
    "encoder": EncoderSchema,
    "linear_projector": LinearProjectorSchema,
    "mlp_projector": MLPProjectorSchema,
    "pixel_shuffle_projector": PixelShuffleProjectorSchema,
    "llm": LLMSchema,
    "lora": LoraSchema,
    "qlora": QLoraSchema,
}


def register() -> None:
    """Store every schema as ``schema/<name>`` in Hydra's ConfigStore (before any config is composed)."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group=SCHEMA_GROUP, name=name, node=schema)
