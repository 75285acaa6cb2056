"""The model/data contract: what the data side must know about a model to feed it.

Both sides import this module and nothing of each other: a model states its contract
(``MedVLM.input_spec``), data modules, ``prepare`` and evaluation read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from medgpt_oss.harmony import ChatSettings


@dataclass
class ModelInputSpec:
    """Tokenizer, image token and its count per image, encoder input size and normalisation, chat settings."""

    tokenizer: PreTrainedTokenizerBase
    image_token: str
    tokens_per_image: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    chat: ChatSettings = ChatSettings()  # the harmony system message's settings the model trains with
