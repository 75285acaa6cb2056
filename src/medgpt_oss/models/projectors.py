"""Projectors: vision features [N, tokens, in_dim] -> LLM embeddings [N, tokens', out_dim].

Configs instantiate these with ``_partial_: true``; the VLM supplies ``in_dim``
(encoder width) and ``out_dim`` (LLM width), so a projector config never
repeats sizes that belong to other parts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medgpt_oss.contract import pixel_shuffle_tokens


class Projector(nn.Module):
    """Base: knows how many output tokens it makes from ``num_tokens`` input tokens."""

    def output_tokens(self, num_tokens: int) -> int:
        return num_tokens

    @classmethod
    def output_tokens_contract(cls, config: dict[str, Any], num_tokens: int) -> int | None:
        """:meth:`output_tokens` from the ``projector`` config group alone, for the data side before any model is
        built (``contract.py``). A class of your own overrides it to state its count; ``None`` (this default):
        the count is known only once built, so ``train`` builds the model before the data module."""
        return None


class LinearProjector(Projector):
    """A single linear map (LLaVA-1.0)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLPProjector(Projector):
    """Linear -> GELU -> Linear (LLaVA-1.5 ``mlp2x_gelu``; the MedGPT-oss release)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class PixelShuffleProjector(Projector):
    """InternVL-style: fold each ``factor x factor`` patch block into one token, then MLP.

    Cuts visual tokens by ``factor**2`` (4x at the default factor 2), which is
    what makes many images or tiles per sample affordable.
    """

    def __init__(self, in_dim: int, out_dim: int, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        folded = in_dim * factor * factor
        self.mlp = nn.Sequential(nn.LayerNorm(folded), nn.Linear(folded, out_dim), nn.GELU(),
                                 nn.Linear(out_dim, out_dim))

    def output_tokens(self, num_tokens: int) -> int:
        return pixel_shuffle_tokens(num_tokens, self.factor)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = features.shape
        side, f = math.isqrt(tokens), self.factor
        self.output_tokens(tokens)
        # [N, H, W, C] -> [N, H/f, f, W/f, f, C] -> [N, H/f, W/f, f*f*C]
        x = features.reshape(n, side // f, f, side // f, f, dim).permute(0, 1, 3, 2, 4, 5)
        return self.mlp(x.reshape(n, (side // f) ** 2, f * f * dim))
