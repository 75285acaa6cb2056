"""Vision encoders: tiny configs, real on-disk formats through the full-scale path, fail-fast."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import timm
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from medgpt_oss.config import load_option
from medgpt_oss.models.encoders import (
    CLIPEncoder,
    OpenCLIPTimmEncoder,
    SiglipEncoder,
    VisionEncoder,
)
from medgpt_oss.models.hub import MissingWeightsError
from tests.conftest import ENCODERS

CHOICES = ENCODERS
MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]  # non-default, so a pick-up is visible


def encoder_cfg(choice: str, scale: str = "tiny", init_seed: int = 0, **overrides):
    encoder = load_option("encoder", choice)
    root = OmegaConf.create({"scale": scale, "init_seed": init_seed, "encoder": encoder})
    for key, value in overrides.items():
        root.encoder[key] = value
    return root.encoder


def tiny_dict(choice: str) -> dict:
    return OmegaConf.to_container(load_option("encoder", choice).tiny)


def pixels(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(123))


# --------------------------------------------------------------------- tiny configs
@pytest.mark.parametrize("choice", CHOICES)
def test_tiny_config_forward_shape(choice: str) -> None:
    enc = instantiate(encoder_cfg(choice))
    assert isinstance(enc, VisionEncoder)
    size = 80 if choice == "medsiglip" else 64  # medsiglip: siglip's tower at a larger image, as the real pair
    assert (enc.image_size, enc.patch_size, enc.hidden_size) == (size, 8, 64)
    assert enc.grid_size == size // 8 and enc.num_tokens == (size // 8) ** 2 and enc.num_layers == 2
    assert enc.pretrained_id == load_option("encoder", choice).pretrained
    out = enc(pixels(size=size))
    assert out.shape == (2, enc.num_tokens, enc.hidden_size)
    assert torch.isfinite(out).all()


def test_the_four_tiny_encoders_are_four_distinct_arms() -> None:
    """A tiny encoder ablation compares four different encoders: no two tiny configs (class + tiny block) agree,
    and siglip / medsiglip differ as the real ones do -- the same tower (patch, width, depth) at a larger image."""
    import itertools

    specs = {c: (load_option("encoder", c)._target_, tiny_dict(c)) for c in CHOICES}
    for a, b in itertools.combinations(CHOICES, 2):
        assert specs[a] != specs[b], (a, b)
    siglip, medsiglip = tiny_dict("siglip"), tiny_dict("medsiglip")
    assert medsiglip["image_size"] > siglip["image_size"]
    assert {k: v for k, v in medsiglip.items() if k != "image_size"} == {k: v for k, v in siglip.items()
                                                                        if k != "image_size"}
    outputs = {}
    for choice in CHOICES:
        enc = instantiate(encoder_cfg(choice))
        outputs[choice] = enc(pixels(size=enc.image_size))
        assert outputs[choice].shape == (2, enc.num_tokens, enc.hidden_size)
        assert torch.isfinite(outputs[choice]).all()
    assert outputs["medsiglip"].shape[1] > outputs["siglip"].shape[1]


@pytest.mark.parametrize("choice", CHOICES)
def test_tiny_init_is_deterministic_per_seed(choice: str) -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = instantiate(encoder_cfg(choice, init_seed=0)).state_dict()
    assert torch.equal(torch.rand(3), expected_next), "building must not consume the caller's RNG"
    b = instantiate(encoder_cfg(choice, init_seed=0)).state_dict()
    c = instantiate(encoder_cfg(choice, init_seed=1)).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("choice", CHOICES)
def test_fsdp_wrap_modules_are_the_blocks(choice: str) -> None:
    enc = instantiate(encoder_cfg(choice))
    classes = enc.fsdp_wrap_modules()
    assert len(classes) == 1
    blocks = [m for m in enc.modules() if type(m) in classes]
    assert len(blocks) == enc.num_layers
    assert all("Layer" in c.__name__ or c.__name__ == "Block" for c in classes)


def test_unknown_tiny_key_and_bad_feature_layer_fail() -> None:
    with pytest.raises(ValueError, match="initializer_range"):  # SigLIP ignores it: say so
        SiglipEncoder("x", scale="tiny", tiny={**tiny_dict("siglip"), "initializer_range": 0.2})
    with pytest.raises(ValueError, match="hidden_sise"):
        CLIPEncoder("x", scale="tiny", tiny={**tiny_dict("clip"), "hidden_sise": 8})
    with pytest.raises(ValueError, match="feature_layer"):
        CLIPEncoder("x", scale="tiny", tiny=tiny_dict("clip"), feature_layer=3)
    with pytest.raises(ValueError, match="embeddings"):
        OpenCLIPTimmEncoder("x", scale="tiny", tiny=tiny_dict("biomedclip"), feature_layer=0)
    with pytest.raises(ValueError, match="tiny"):
        CLIPEncoder("x", scale="tiny")
    with pytest.raises(ValueError, match="scale"):
        CLIPEncoder("x", scale="small", tiny=tiny_dict("clip"))


# ------------------------------------------------- transformers save_pretrained folders
def _clip_vision(tiny: dict) -> CLIPVisionModel:
    return CLIPVisionModel(CLIPVisionConfig(**tiny))


def _clip_full(tiny: dict) -> CLIPModel:  # the hub repo's layout: both towers in one checkpoint
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=49408)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=tiny, projection_dim=16))


def _siglip_vision(tiny: dict) -> SiglipVisionModel:
    return SiglipVisionModel(SiglipVisionConfig(**tiny))


def _siglip_full(tiny: dict) -> SiglipModel:
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    return SiglipModel(SiglipConfig(text_config=text, vision_config=tiny))


HF_CASES = {
    "clip-vision": (CLIPEncoder, "clip", _clip_vision, CLIPImageProcessor, True),
    "clip-full": (CLIPEncoder, "clip", _clip_full, CLIPImageProcessor, True),
    "siglip-vision": (SiglipEncoder, "siglip", _siglip_vision, SiglipImageProcessor, False),
    "siglip-full": (SiglipEncoder, "siglip", _siglip_full, SiglipImageProcessor, False),
}


@pytest.mark.parametrize("case", list(HF_CASES))
@pytest.mark.parametrize("feature_layer", [-2, -1])
def test_full_scale_loads_save_pretrained_folder(case: str, feature_layer: int, tmp_path: Path) -> None:
    enc_cls, choice, make, processor_cls, has_cls = HF_CASES[case]
    torch.manual_seed(0)
    saved = make(tiny_dict(choice)).eval()
    saved.save_pretrained(tmp_path)
    processor_cls(image_mean=MEAN, image_std=STD).save_pretrained(tmp_path)

    enc = enc_cls(str(tmp_path), scale="full", feature_layer=feature_layer)
    assert enc.pretrained_id == str(tmp_path)
    assert enc.image_mean == tuple(MEAN) and enc.image_std == tuple(STD)
    assert (enc.image_size, enc.patch_size, enc.hidden_size, enc.num_tokens) == (64, 8, 64, 64)

    vision = getattr(saved, "vision_model", saved)  # a CLIPModel/SiglipModel holds its vision model there
    x = pixels()
    with torch.no_grad():
        expected = vision(pixel_values=x, output_hidden_states=True).hidden_states[feature_layer]
        got = enc(x)
    torch.testing.assert_close(got, expected[:, 1:] if has_cls else expected)


def test_full_scale_defaults_and_dtype(tmp_path: Path) -> None:
    _siglip_vision(tiny_dict("siglip")).save_pretrained(tmp_path)  # no preprocessor_config.json
    enc = SiglipEncoder(str(tmp_path), scale="full", dtype="bfloat16")
    assert enc.image_mean == enc.image_std == (0.5, 0.5, 0.5)
    assert not hasattr(enc.model, "head"), "the unused pooling head is not built"
    assert enc(pixels()).dtype == torch.bfloat16
    _siglip_vision(tiny_dict("siglip")).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    enc = SiglipEncoder(str(tmp_path / "bf16"), scale="full")  # not transformers' "auto" dtype
    assert {p.dtype for p in enc.parameters()} == {torch.float32}


def test_full_scale_missing_vision_weight_fails(tmp_path: Path) -> None:
    _clip_vision(tiny_dict("clip")).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if "layers.1.mlp.fc1.weight" in k)
    del state[dropped]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="missing_keys"):
        CLIPEncoder(str(tmp_path), scale="full")


# ---------------------------------------------------------------- open_clip (BiomedCLIP)
TINY_TIMM = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


def _open_clip_trunk(name: str, image_size: int, kwargs: dict) -> torch.nn.Module:
    """The trunk as open_clip's TimmModel(pool='', proj='linear') builds it: default head, then reset."""
    trunk = timm.create_model(name, pretrained=False, img_size=image_size, **kwargs)
    trunk.reset_classifier(0)
    return trunk.eval()


def _write_open_clip(folder: Path, trunk: torch.nn.Module, fmt: str = "bin", drop: str | None = None) -> None:
    config = {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 64,
                "timm_model_kwargs": TINY_TIMM,
            },
            "text_cfg": {
                "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 256,
            },
        },
        "preprocess_cfg": {"mean": MEAN, "std": STD},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {f"visual.trunk.{k}": v.clone() for k, v in trunk.state_dict().items() if k != drop}
    state["visual.head.proj.weight"] = torch.randn(512, 64)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["text.proj.0.weight"] = torch.randn(8, 8)
    state["logit_scale"] = torch.tensor(4.6)
    if fmt == "bin":
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    else:
        save_file(state, folder / "open_clip_model.safetensors")


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("feature_layer", [-2, -1])
def test_full_scale_loads_open_clip_checkpoint(fmt: str, feature_layer: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trunk = _open_clip_trunk("vit_base_patch16_224", 64, TINY_TIMM)
    _write_open_clip(tmp_path, trunk, fmt)
    enc = OpenCLIPTimmEncoder(str(tmp_path), scale="full", feature_layer=feature_layer)
    assert enc.image_mean == tuple(MEAN) and enc.image_std == tuple(STD)
    assert (enc.image_size, enc.patch_size, enc.hidden_size, enc.num_tokens) == (64, 8, 64, 64)

    captured = {}  # reference: the block's raw output inside timm's own forward
    trunk.blocks[feature_layer].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    x = pixels()
    with torch.no_grad():
        trunk(x)
        got = enc(x)
    torch.testing.assert_close(got, captured["x"][:, trunk.num_prefix_tokens :])


def test_open_clip_checkpoint_errors(tmp_path: Path) -> None:
    trunk = _open_clip_trunk("vit_base_patch16_224", 64, TINY_TIMM)
    _write_open_clip(tmp_path, trunk, drop="blocks.1.attn.qkv.weight")
    with pytest.raises(RuntimeError, match=r"blocks\.1\.attn\.qkv\.weight"):
        OpenCLIPTimmEncoder(str(tmp_path), scale="full")

    torch.save({"text.proj.0.weight": torch.zeros(1)}, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(KeyError, match="visual.trunk"):
        OpenCLIPTimmEncoder(str(tmp_path), scale="full")

    (tmp_path / "open_clip_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        OpenCLIPTimmEncoder(str(tmp_path), scale="full")


def test_trunk_keys_match_open_clip_timm_model() -> None:
    """Our trunk for BiomedCLIP's real vision_cfg has exactly the keys open_clip saves under visual.trunk."""
    from open_clip.timm_model import TimmModel

    with torch.device("meta"):  # shapes only: no 86M-parameter init on CPU
        theirs = TimmModel("vit_base_patch16_224", embed_dim=512, image_size=224, pool="", proj="linear")
        ours = OpenCLIPTimmEncoder(
            "x", scale="tiny", tiny={"timm_model_name": "vit_base_patch16_224", "image_size": 224}
        )
    their_keys = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k for k in their_keys if not k.startswith("trunk.")} == {"head.proj.weight"}
    assert {f"trunk.{k}": v.shape for k, v in ours.trunk.state_dict().items()} == {
        k: v for k, v in their_keys.items() if k.startswith("trunk.")
    }
    assert (ours.hidden_size, ours.patch_size, ours.num_tokens) == (768, 16, 196)


# ------------------------------------------------------------------------- fail fast
@pytest.mark.parametrize("choice", CHOICES)
def test_full_scale_without_weights_fails_fast(choice: str, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import
    cfg = encoder_cfg(choice, scale="full")
    start = time.perf_counter()
    with pytest.raises(InstantiationException) as info:  # Hydra wraps what the target raises
        instantiate(cfg)
    assert time.perf_counter() - start < 5
    assert isinstance(info.value.__cause__, MissingWeightsError)
    message = str(info.value.__cause__)
    assert cfg.pretrained in message and "encoder.pretrained=" in message
