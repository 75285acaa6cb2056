"""The ``lora`` config group's class (conf/lora/*.yaml): which LLM weights get LoRA adapters and, for QLoRA,
which are stored in 4-bit.

:class:`LanguageModel` wraps its model with :meth:`LoraSettings.peft_config` (peft); ``quantize`` and
``quantize_modules`` choose what :mod:`medgpt_oss.models.quantize` stores in NF4. ``lora=none`` is no
settings at all (``None``): the LLM trains fully or stays frozen, as the stage says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: int | None = None                       # None: 2 x rank
    dropout: float = 0.0                           # peft's parameter-LoRA (target_parameters) needs 0
    target_modules: tuple[str, ...] = ()           # module names peft wraps (q_proj, ...)
    target_parameters: tuple[str, ...] = ()        # 3-D parameters peft wraps (GPT-oss experts)
    quantize: str | None = None                    # nf4: QLoRA (models/quantize.py); None: full precision
    quantize_modules: tuple[str, ...] | None = None  # what quantize stores in 4-bit; None: its defaults

    def __post_init__(self) -> None:
        # Lists from YAML (ListConfig included) become tuples: the settings are a value, compared and hashed.
        for name in ("target_modules", "target_parameters", "quantize_modules"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.rank)

    @classmethod
    def of(cls, config: LoraSettings | Mapping[str, Any] | None) -> LoraSettings | None:
        """Settings from a ``lora`` config as conf/lora/ holds it or a checkpoint stored it (its ``_target_``
        names this class); ``None`` or an empty config (``lora=none``) is no LoRA."""
        if config is None or isinstance(config, LoraSettings):
            return config
        fields = {str(k): v for k, v in config.items() if k != "_target_"}
        return cls(**fields) if fields else None

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists, no tuples): what checkpoints and export folders record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def peft_config(self, dropout: float | None = None):
        """peft's ``LoraConfig`` (``dropout``: override, e.g. 0 to merge adapters)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout if dropout is None else dropout,
            target_modules=list(self.target_modules) or None,
            target_parameters=list(self.target_parameters) or None,
            bias="none",
        )
