"""The model/data contract: what the data side must know about a model to feed it.

Both sides import this module and nothing of each other. :func:`input_spec_from_config` computes the
contract from the model's config groups alone -- no model is built and no weight is read (at full scale the
weights folders' config and tokenizer files are) -- so ``train.py`` builds its data module, ``prepare``
validates records and ``plan`` sizes images before or without the model. A built model states the same
contract itself (``MedVLM.input_spec``); :func:`check_agreement` compares the two, field by field.

The rules here are those the model classes follow when they build (``models/encoders.py``,
``models/projectors.py``, ``models/llm.py``): how an encoder class reads its image size, patch size and
normalisation, how many tokens a projector makes of its patches, where the tokenizer comes from. The
normalisation defaults and the pixel-shuffle count are defined here and used there; the rest is restated, and
``tests/test_contract.py`` checks every encoder and projector option against the built model. A class not
listed here (a user's own) is asked itself: ``VisionEncoder.input_contract`` and
``Projector.output_tokens_contract``, classmethods that state nothing unless the class overrides them. A class
that states nothing raises :class:`NoContractRule`: then only the built model can say its contract.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from medgpt_oss.harmony import IMAGE_TOKEN, ChatSettings

Triple = tuple[float, float, float]

# Each encoder family's normalisation when its checkpoint does not state one (and always at tiny scale).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


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


@dataclass(frozen=True)
class ImageInput:
    """One encoder input (an image, or one tile of a tiled image): its side, patch size and normalisation,
    and the image tokens the projector makes of it. Tiling (``data.max_tiles``) repeats this per tile."""

    image_size: int
    patch_size: int
    image_mean: Triple
    image_std: Triple
    tokens_per_image: int

    @property
    def patch_tokens(self) -> int:
        """Patch features the encoder returns (class tokens dropped): a square grid."""
        return (self.image_size // self.patch_size) ** 2


class EncoderInput(NamedTuple):
    """What an encoder class reads from its config: the side of its square input, patch size and normalisation."""

    image_size: int
    patch_size: int
    image_mean: Triple
    image_std: Triple


class ContractMismatchError(ValueError):
    """A built model states another input contract than its config gives."""


class NoContractRule(ValueError):
    """An encoder or projector class whose contract neither this module nor the class states: only the built
    model can say it (``MedVLM.input_spec``)."""


# -- encoders: (encoder config, local weights folder or None at tiny scale) -> EncoderInput ------------------

def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _hf_tower(config_class: str, mean: Triple, std: Triple) -> Callable[..., EncoderInput]:
    """A transformers vision tower: its vision config class reads the sizes (a two-tower checkpoint's
    ``vision_config`` included, with the class defaults), ``preprocessor_config.json`` the normalisation."""

    def read(encoder: dict[str, Any], folder: Path | None) -> EncoderInput:
        import transformers

        config_cls = getattr(transformers, config_class)
        if folder is None:
            config, image_mean, image_std = config_cls(**encoder["tiny"]), mean, std
        else:
            config = config_cls.from_pretrained(folder)
            image_mean, image_std = mean, std
            if (folder / "preprocessor_config.json").is_file():
                preprocess = json.loads((folder / "preprocessor_config.json").read_text())
                image_mean, image_std = preprocess.get("image_mean", mean), preprocess.get("image_std", std)
        return EncoderInput(config.image_size, config.patch_size, image_mean, image_std)

    return read


def _open_clip_timm(encoder: dict[str, Any], folder: Path | None) -> EncoderInput:
    """An open_clip checkpoint's timm tower: ``open_clip_config.json``'s ``vision_cfg`` (or the tiny dict, the
    same fields) gives the image size; the patch size is ``timm_model_kwargs.patch_size`` when given, else
    the one timm's ViT names carry (``vit_base_patch16_224``)."""
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if folder is None:
        vision = encoder["tiny"]
    else:
        path = folder / "open_clip_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"'{folder}' has no open_clip_config.json (not an open_clip checkpoint?)")
        config = json.loads(path.read_text())
        vision = config.get("model_cfg", config)["vision_cfg"]
        preprocess = config.get("preprocess_cfg", {})
        mean, std = preprocess.get("mean", mean), preprocess.get("std", std)
    patch = (vision.get("timm_model_kwargs") or {}).get("patch_size")
    if patch is None:
        named = re.search(r"patch(\d+)", str(vision["timm_model_name"]))
        if named is None:
            raise ValueError(f"timm model '{vision['timm_model_name']}' does not name its patch size; give "
                             "timm_model_kwargs.patch_size")
        patch = named.group(1)
    return EncoderInput(int(vision.get("image_size", 224)), int(patch), mean, std)


ENCODER_INPUTS: dict[str, Callable[[dict[str, Any], Path | None], EncoderInput]] = {
    "medgpt_oss.models.encoders.CLIPEncoder": _hf_tower("CLIPVisionConfig", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "medgpt_oss.models.encoders.SiglipEncoder": _hf_tower("SiglipVisionConfig", SIGLIP_MEAN, SIGLIP_STD),
    "medgpt_oss.models.encoders.OpenCLIPTimmEncoder": _open_clip_timm,
}


# -- projectors: (projector config, patch tokens) -> image tokens -------------------------------------------

def pixel_shuffle_tokens(num_tokens: int, factor: int) -> int:
    """Each ``factor x factor`` block of a square patch grid folds into one token."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or side % factor:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {factor}, got {num_tokens} tokens")
    return num_tokens // (factor * factor)


PROJECTOR_TOKENS: dict[str, Callable[[dict[str, Any], int], int]] = {
    "medgpt_oss.models.projectors.LinearProjector": lambda projector, n: n,
    "medgpt_oss.models.projectors.MLPProjector": lambda projector, n: n,
    "medgpt_oss.models.projectors.PixelShuffleProjector": lambda projector, n: pixel_shuffle_tokens(
        n, int(projector.get("factor", 2))),
}


def _stated_by_class(part: str, config: dict[str, Any], method: str, *args: Any) -> Any:
    """What the class a config names states through its classmethod ``method``; :class:`NoContractRule` when
    it states nothing. Only a class outside the tables is imported here (a user's own, which building the model
    would import anyway)."""
    from hydra.utils import get_object

    target = config.get("_target_")
    stated = getattr(get_object(str(target)), method, None)
    answer = stated(config, *args) if callable(stated) else None
    if answer is None:
        raise NoContractRule(f"{part}._target_={target!r} states no model/data contract: it is not one of "
                             f"medgpt_oss/contract.py's classes and has no {method}() classmethod of its own")
    return answer


def image_input(encoder: Mapping[str, Any], projector: Mapping[str, Any]) -> ImageInput:
    """What one image is to the model of these ``encoder`` and ``projector`` config groups. At full scale the
    encoder's weights folder (``encoder.pretrained``) is found offline and its config files read. A class outside
    the tables states its own part (:func:`_stated_by_class`), or :class:`NoContractRule` is raised."""
    from medgpt_oss.models.hub import check_scale, resolve_pretrained

    encoder, projector = _plain(encoder), _plain(projector)
    read = ENCODER_INPUTS.get(encoder.get("_target_"))
    if read is None:
        image_size, patch_size, mean, std = _stated_by_class("encoder", encoder, "input_contract")
    else:
        full = check_scale(encoder.get("scale", "full")) == "full"
        folder = resolve_pretrained(encoder["pretrained"], "encoder.pretrained") if full else None
        image_size, patch_size, mean, std = read(encoder, folder)
    patch_tokens = (int(image_size) // int(patch_size)) ** 2
    count = PROJECTOR_TOKENS.get(projector.get("_target_"))
    tokens = (count(projector, patch_tokens) if count is not None
              else _stated_by_class("projector", projector, "output_tokens_contract", patch_tokens))
    return ImageInput(int(image_size), int(patch_size), tuple(map(float, mean)), tuple(map(float, std)),
                      int(tokens))


def model_tokenizer(llm: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer the ``llm`` config group's model uses, with the image token (and any harmony control
    token it lacks) added as the model adds them: ``llm.tokenizer`` if set, else the weights folder's at full
    scale and the shipped tiny harmony tokenizer at tiny scale."""
    from medgpt_oss.models.hub import check_scale, resolve_pretrained
    from medgpt_oss.models.tokenizer import load_tokenizer

    llm = _plain(llm)
    source = llm.get("tokenizer")
    if check_scale(llm.get("scale", "full")) == "full":
        source = (resolve_pretrained(source, "llm.tokenizer") if source
                  else resolve_pretrained(llm["pretrained"], "llm.pretrained"))
    return load_tokenizer(source, llm.get("image_token", IMAGE_TOKEN))


def input_spec_from_config(model: Mapping[str, Any]) -> ModelInputSpec:
    """The contract of the model that ``model``'s ``encoder``, ``projector`` and ``llm`` groups build (a
    composed config, or a stage's saved ``model`` hyper-parameters), without building it."""
    llm = _plain(model["llm"])
    image = image_input(model["encoder"], model["projector"])
    return ModelInputSpec(
        tokenizer=model_tokenizer(llm),
        image_token=llm.get("image_token", IMAGE_TOKEN),
        tokens_per_image=image.tokens_per_image,
        image_size=image.image_size,
        image_mean=image.image_mean,
        image_std=image.image_std,
        chat=ChatSettings.of(llm.get("chat")),
    )


# -- agreement ----------------------------------------------------------------------------------------------

def _tokenizer_difference(config: PreTrainedTokenizerBase, model: PreTrainedTokenizerBase) -> str | None:
    """How two tokenizers differ in what the data side uses (vocabulary with added tokens, padding, end)."""
    a, b = config.get_vocab(), model.get_vocab()
    if a != b:
        only_config = sorted(set(a) - set(b))[:5]
        only_model = sorted(set(b) - set(a))[:5]
        moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:5]
        return (f"vocabularies differ ({len(a)} vs {len(b)} tokens; only in the config's: {only_config}, only in "
                f"the model's: {only_model}, other ids: {moved})")
    for name in ("pad_token", "eos_token", "bos_token"):
        if getattr(config, name) != getattr(model, name):
            return f"{name} {getattr(config, name)!r} vs {getattr(model, name)!r}"
    return None


def check_agreement(config: ModelInputSpec, model: ModelInputSpec) -> None:
    """Raise :class:`ContractMismatchError` naming every field where a built model's own contract differs
    from the one its config gives (data tokenized by one would not fit the other)."""
    problems = []
    for field in fields(ModelInputSpec):
        if field.name == "tokenizer":
            difference = _tokenizer_difference(config.tokenizer, model.tokenizer)
        else:
            a, b = getattr(config, field.name), getattr(model, field.name)
            difference = None if a == b else f"{a!r} from the config, {b!r} from the model"
        if difference:
            problems.append(f"{field.name}: {difference}")
    if problems:
        raise ContractMismatchError("the built model's input contract differs from its config's:\n  "
                                    + "\n  ".join(problems))
