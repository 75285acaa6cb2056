"""Vision encoders: image -> a grid of patch-token features for the projector.

One small interface (:class:`VisionEncoder`) and one subclass per checkpoint
format. Each config choice in ``conf/encoder/`` names its class with
``_target_``; nothing here dispatches on model names.

Every encoder has two scales that share the class and the forward code:

* ``scale="full"`` resolves ``pretrained`` to a local folder *first* (fails in
  milliseconds with a how-to message when the weights are missing) and loads it;
* ``scale="tiny"`` builds the same architecture from the ``tiny`` overrides with a
  deterministic random init (seeded by ``init_seed``), never touching disk.

``feature_layer`` follows transformers' ``output_hidden_states`` indexing for
every encoder: index 0 is the embedding output, index ``i`` the output of block
``i``, so ``-1`` is the last block and ``-2`` the penultimate (LLaVA's recipe).
No final norm is applied on any layer, not even ``-1``: transformers'
``hidden_states[-1]`` is taken before ``post_layernorm`` too, so a given
``feature_layer`` means the same thing for CLIP, SigLIP and timm towers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from medgpt_oss.contract import (
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, EncoderInput, Triple,
)
from medgpt_oss.models.hub import check_scale, resolve_pretrained

OVERRIDE_KEY = "encoder.pretrained"

# Config fields of a transformers vision tower that are bookkeeping, not architecture.
NOT_ARCHITECTURE = {
    "_name_or_path", "architectures", "dtype", "transformers_version", "model_type", "id2label", "label2id",
    "problem_type", "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
    "is_encoder_decoder",
}


class VisionEncoder(nn.Module):
    """Abstract backbone: ``pixel_values [N,3,H,W] -> [N, num_tokens, hidden_size]``.

    Args:
        pretrained: hub id or local folder (recorded as ``pretrained_id``).
        scale: ``"full"`` loads ``pretrained``; ``"tiny"`` builds from ``tiny``, random init.
        tiny: config overrides for the tiny model (unknown keys are rejected).
        tower / image_mean / image_std: wrap this already-built model instead (its weights as they are).
        feature_layer: hidden-state index to return (see the module docstring).
        init_seed: seed of the tiny random init.
        dtype: torch dtype name for full-scale loading (default float32).

    Subclasses implement :meth:`_load_pretrained`, :meth:`_build_tiny`,
    :meth:`_hidden_states`, :meth:`fsdp_wrap_modules` and :meth:`architecture`; both builders must set
    ``hidden_size``, ``image_size``, ``patch_size``, ``image_mean``, ``image_std``
    and ``num_layers`` (transformer blocks in the model).
    """

    hidden_size: int
    image_size: int
    patch_size: int
    image_mean: Triple
    image_std: Triple
    num_layers: int

    def __init__(
        self,
        pretrained: str,
        scale: str = "full",
        tiny: dict[str, Any] | None = None,
        feature_layer: int = -2,
        init_seed: int = 0,
        dtype: str | None = None,
        tower: nn.Module | None = None,
        image_mean: Triple | None = None,
        image_std: Triple | None = None,
    ) -> None:
        super().__init__()
        self.pretrained_id = str(pretrained)
        self.scale = check_scale(scale)
        self.feature_layer = int(feature_layer)
        if tower is not None:  # an already-built tower (e.g. of a loaded LLaVA export): nothing built or loaded
            self._adopt(tower, image_mean, image_std)
        elif self.scale == "full":
            folder = resolve_pretrained(self.pretrained_id, OVERRIDE_KEY)  # before any building
            # float32 unless asked: transformers 5 would otherwise load in whatever dtype the
            # hub repo happens to be stored in ("auto").
            self._load_pretrained(folder, getattr(torch, dtype) if dtype else torch.float32)
        else:
            if not tiny:
                raise ValueError(f"{type(self).__name__}: scale=tiny needs a `tiny` dict of config overrides")
            # Same config -> bit-identical weights (checkpoints rely on it), without
            # disturbing the caller's RNG stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(init_seed))
                self._build_tiny(_plain(tiny))
        self._layer_index()  # reject a bad feature_layer at build time, not at first batch

    # -- interface -------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        """The transformer block class(es) to auto-wrap for FSDP."""
        raise NotImplementedError

    @classmethod
    def input_contract(cls, config: dict[str, Any]) -> EncoderInput | None:
        """Image size, patch size and normalisation from the ``encoder`` config group alone (at full scale, from
        the weights folder's config files; no weights loaded), for the data side before any model is built
        (``contract.py``, whose own rules cover this module's classes). A class of your own overrides it to state
        its contract; ``None`` (this default): known only once built, so ``train`` builds the model first."""
        return None

    def architecture(self) -> dict[str, Any]:
        """The ``tiny`` dict from which this class builds this exact architecture (``scale="tiny"``): an
        export's ``config.json`` holds it, and the exported weights replace the random init."""
        raise NotImplementedError(f"{type(self).__name__} cannot describe its architecture for an export; "
                                  "give it an architecture() method")

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self._hidden_states(pixel_values, self._layer_index())

    # -- for subclasses --------------------------------------------------------------
    def _load_pretrained(self, folder: Path, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def _build_tiny(self, tiny: dict[str, Any]) -> None:
        raise NotImplementedError

    def _adopt(self, tower: nn.Module, mean: Triple | None, std: Triple | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot wrap an already-built tower")

    def _hidden_states(self, pixel_values: Tensor, index: int) -> Tensor:
        """Patch tokens of hidden state ``index`` (0 = embeddings, i = block i)."""
        raise NotImplementedError

    def _layer_index(self) -> int:
        n = self.num_layers + 1  # embeddings + one entry per block
        if not -n <= self.feature_layer < n:
            raise ValueError(f"feature_layer={self.feature_layer} out of range for {self.num_layers} layers")
        return self.feature_layer % n


def _plain(config: Any) -> dict[str, Any]:
    """A plain dict from a Hydra-instantiated DictConfig (nested ones included)."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


def _check_keys(tiny: dict[str, Any], allowed: set[str], what: str) -> None:
    # Hub config classes accept any kwarg silently; a typo in a tiny dict (or a key the
    # class ignores) would otherwise give a different model than the YAML suggests.
    unknown = sorted(set(tiny) - allowed)
    if unknown:
        raise ValueError(f"unknown tiny config keys {unknown} for {what}; known: {sorted(allowed)}")


def _read_mean_std(folder: Path, mean: Triple, std: Triple) -> tuple[Triple, Triple]:
    """Mean/std from the folder's ``preprocessor_config.json``, else the given defaults."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    return tuple(map(float, mean)), tuple(map(float, std))  # type: ignore[return-value]


class _HFVisionEncoder(VisionEncoder):
    """A transformers vision tower (``CLIPVisionModel``, ``SiglipVisionModel``)."""

    model_cls: type  # transformers PreTrainedModel subclass
    config_cls: type
    default_mean: Triple
    default_std: Triple
    has_cls_token: bool
    config_overrides: dict[str, Any] = {}  # forced on both scales

    def _load_pretrained(self, folder: Path, dtype: torch.dtype) -> None:
        # The hub repos hold the full two-tower model; the vision class loads its own keys
        # and ignores the text ones. A *missing* vision key would be silently random-init,
        # so check for it.
        model, info = self.model_cls.from_pretrained(
            folder, dtype=dtype, output_loading_info=True, **self.config_overrides
        )
        problems = ("missing_keys", "mismatched_keys", "error_msgs", "conversion_errors")
        bad = {k: v for k, v in info.items() if k in problems and v}
        if bad:
            raise RuntimeError(f"{self.model_cls.__name__} weights in '{folder}' do not match its config: {bad}")
        self._set_model(model, *_read_mean_std(folder, self.default_mean, self.default_std))

    def _build_tiny(self, tiny: dict[str, Any]) -> None:
        _check_keys(tiny, set(self.config_cls().to_dict()), self.config_cls.__name__)
        config = self.config_cls(**{**tiny, **self.config_overrides})
        self._set_model(self.model_cls(config), self.default_mean, self.default_std)

    def _adopt(self, tower: nn.Module, mean: Triple | None, std: Triple | None) -> None:
        if not isinstance(tower, self.model_cls):
            raise TypeError(f"{type(self).__name__} wraps a {self.model_cls.__name__}, not {type(tower).__name__}")
        self._set_model(tower, tuple(map(float, mean or self.default_mean)), tuple(map(float, std or self.default_std)))

    def _set_model(self, model: nn.Module, mean: Triple, std: Triple) -> None:
        cfg = model.config
        if not isinstance(cfg.image_size, int) or not isinstance(cfg.patch_size, int):
            raise ValueError(f"only square images/patches are supported, got {cfg.image_size}/{cfg.patch_size}")
        self.model = model
        self.hidden_size, self.image_size, self.patch_size = cfg.hidden_size, cfg.image_size, cfg.patch_size
        self.num_layers = cfg.num_hidden_layers
        self.image_mean, self.image_std = mean, std

    @property
    def _tower(self) -> nn.Module:
        # transformers 5 flattened the vision models; 4.x nests them under .vision_model.
        # (A property, not an attribute: a second registration would duplicate state-dict keys.)
        return getattr(self.model, "vision_model", self.model)

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        return {type(layer) for layer in self._tower.encoder.layers}

    def architecture(self) -> dict[str, Any]:
        allowed = set(self.config_cls().to_dict()) - NOT_ARCHITECTURE
        return {k: v for k, v in self.model.config.to_dict().items() if k in allowed}

    def _hidden_states(self, pixel_values: Tensor, index: int) -> Tensor:
        dtype = self._tower.embeddings.patch_embedding.weight.dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[index]
        return features[:, 1:] if self.has_cls_token else features


class CLIPEncoder(_HFVisionEncoder):
    """OpenAI CLIP vision tower (e.g. ``openai/clip-vit-large-patch14-336``); CLS dropped."""

    config_cls, model_cls = CLIPVisionConfig, CLIPVisionModel
    default_mean, default_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    has_cls_token = True


class SiglipEncoder(_HFVisionEncoder):
    """SigLIP vision tower (SigLIP-so400m, MedSigLIP-448); no CLS token.

    The attention-pooling head is never used for patch features, so it is not built
    (``vision_use_head=False``, as LLaVA-OneVision does): no dead parameters that
    DDP would complain about when the encoder trains.
    """

    config_cls, model_cls = SiglipVisionConfig, SiglipVisionModel
    default_mean, default_std = SIGLIP_MEAN, SIGLIP_STD
    has_cls_token = False
    config_overrides = {"vision_use_head": False}


class OpenCLIPTimmEncoder(VisionEncoder):
    """Image tower of an open_clip checkpoint whose trunk is a timm ViT (BiomedCLIP).

    Reads the open_clip hub format without instantiating open_clip (its text tower
    would need the BiomedBERT config from the hub): ``open_clip_config.json``'s
    ``model_cfg.vision_cfg`` names the timm model, and the ``visual.trunk.*`` keys of
    ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` are exactly that
    timm model's state dict (open_clip's ``TimmModel.trunk``). ``visual.head.*`` (the
    projection to the CLIP embedding space) and the text keys are not used.

    ``vision_cfg.timm_model_kwargs`` (our extension, e.g. ``embed_dim``, ``depth``,
    ``num_heads``, ``patch_size``) is passed to ``timm.create_model``; the tiny dict
    takes the same fields: ``timm_model_name``, ``image_size``, ``timm_model_kwargs``.
    """

    WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's preference
    TINY_KEYS = {"timm_model_name", "image_size", "timm_model_kwargs"}

    def _load_pretrained(self, folder: Path, dtype: torch.dtype) -> None:
        config_path = folder / "open_clip_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"'{folder}' has no open_clip_config.json (not an open_clip checkpoint?)")
        config = json.loads(config_path.read_text())
        vision_cfg = config.get("model_cfg", config)["vision_cfg"]
        if not vision_cfg.get("timm_model_name"):
            raise ValueError(f"{config_path}: no vision_cfg.timm_model_name; only timm image towers are supported")
        weights = next((folder / f for f in self.WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"'{folder}' holds none of {self.WEIGHT_FILES}")
        preprocess = config.get("preprocess_cfg", {})
        self._build(vision_cfg, preprocess.get("mean", OPENAI_CLIP_MEAN), preprocess.get("std", OPENAI_CLIP_STD))

        prefix = "visual.trunk."
        state = {k[len(prefix) :]: v for k, v in _load_state_dict(weights).items() if k.startswith(prefix)}
        if not state:
            raise KeyError(f"{weights} has no '{prefix}*' keys: not an open_clip timm-tower checkpoint")
        try:
            self.trunk.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(
                f"'{prefix}*' weights in {weights} do not fit timm model "
                f"'{vision_cfg['timm_model_name']}' built from {config_path}:\n{exc}"
            ) from exc
        self.trunk.to(dtype)

    def _build_tiny(self, tiny: dict[str, Any]) -> None:
        _check_keys(tiny, self.TINY_KEYS, type(self).__name__)
        self._build(tiny, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def _build(self, vision_cfg: dict[str, Any], mean: Any, std: Any) -> None:
        import timm

        image_size = int(vision_cfg.get("image_size", 224))
        # num_classes=0, global_pool='': we want tokens, not a pooled/classified vector;
        # neither changes the state-dict keys of open_clip's trunk (it calls
        # reset_classifier(0), which leaves the same modules).
        self.trunk = timm.create_model(
            vision_cfg["timm_model_name"],
            pretrained=False,
            num_classes=0,
            global_pool="",
            img_size=image_size,
            **dict(vision_cfg.get("timm_model_kwargs") or {}),
        )
        patch = self.trunk.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"only square patches are supported, got {patch}")
        self.hidden_size, self.image_size, self.patch_size = self.trunk.embed_dim, image_size, patch[0]
        self.num_layers = len(self.trunk.blocks)
        self.image_mean, self.image_std = tuple(map(float, mean)), tuple(map(float, std))
        # The fields of the tiny dict (or of the checkpoint's vision_cfg) that chose this architecture.
        self._vision_cfg = {k: vision_cfg[k] for k in self.TINY_KEYS if k in vision_cfg}

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        return {type(block) for block in self.trunk.blocks}

    def architecture(self) -> dict[str, Any]:
        return dict(self._vision_cfg)

    def _layer_index(self) -> int:
        index = super()._layer_index()
        if index == 0:  # forward_intermediates only yields block outputs
            raise ValueError("feature_layer selecting the embeddings is not supported for timm towers")
        return index

    def _hidden_states(self, pixel_values: Tensor, index: int) -> Tensor:
        dtype = self.trunk.patch_embed.proj.weight.dtype
        # Prefix (CLS) tokens come back stripped; stop_early skips the unused last block(s).
        (features,) = self.trunk.forward_intermediates(
            pixel_values.to(dtype), indices=[index - 1], norm=False, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )
        return features


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    """Read an open_clip checkpoint the way ``open_clip.factory.load_state_dict`` does."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if next(iter(state), "").startswith("module."):  # saved from a DDP-wrapped model
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state
