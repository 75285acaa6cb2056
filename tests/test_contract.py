"""The model/data contract from the config alone equals what the built model states, and builds no model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from medgpt_oss.config import group_options, load_option
from medgpt_oss.contract import (
    ContractMismatchError, EncoderInput, ModelInputSpec, NoContractRule, check_agreement, image_input,
    input_spec_from_config,
)
from medgpt_oss.models.encoders import VisionEncoder
from medgpt_oss.models.projectors import Projector
from medgpt_oss.models.vlm import MedVLM
from tests.conftest import ENCODERS, compose_config, compose_train

PROJECTORS = group_options("projector")
LLMS = group_options("llm")
REPO = Path(__file__).resolve().parents[1]


def model_config(encoder: str = "clip", projector: str = "mlp2x_gelu", llm: str = "gpt_oss", scale: str = "tiny"):
    """The model groups of the shipped configs, as a composed config holds them."""
    cfg = OmegaConf.create({"scale": scale, "init_seed": 0, "chat": load_option("chat", "harmony"), "lora": None})
    cfg.encoder, cfg.projector, cfg.llm = (load_option(g, o) for g, o in
                                           (("encoder", encoder), ("projector", projector), ("llm", llm)))
    return cfg


def assert_same_spec(config: ModelInputSpec, model: ModelInputSpec) -> None:
    """Field by field; the tokenizers by their vocabulary (added tokens included) and special tokens."""
    assert config.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert {str(t) for t in config.tokenizer.added_tokens_decoder.values()} == \
        {str(t) for t in model.tokenizer.added_tokens_decoder.values()}
    assert (config.tokenizer.pad_token, config.tokenizer.eos_token) == (model.tokenizer.pad_token,
                                                                       model.tokenizer.eos_token)
    assert config.image_token == model.image_token
    assert config.tokenizer.convert_tokens_to_ids(config.image_token) == \
        model.tokenizer.convert_tokens_to_ids(model.image_token)
    assert config.tokens_per_image == model.tokens_per_image
    assert config.image_size == model.image_size
    assert config.image_mean == model.image_mean and config.image_std == model.image_std
    assert config.chat == model.chat
    check_agreement(config, model)


# -- (a) the config's contract is the built model's --------------------------------------------------------

@pytest.mark.parametrize("projector", PROJECTORS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_config_contract_equals_the_built_models_for_every_encoder_and_projector(encoder, projector):
    cfg = model_config(encoder, projector)
    assert_same_spec(input_spec_from_config(cfg), MedVLM.from_config(cfg).input_spec())


@pytest.mark.parametrize("llm", LLMS)
def test_config_contract_equals_the_built_models_for_every_llm(llm):
    cfg = model_config(llm=llm)
    assert_same_spec(input_spec_from_config(cfg), MedVLM.from_config(cfg).input_spec())


def test_full_scale_contract_reads_the_weights_folders_as_the_model_does(tmp_path):
    """scale=full: image size, patch and normalisation from the encoder folder's config.json and
    preprocessor_config.json, the tokenizer from the LLM folder; the model loaded from the same folders agrees."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR
    from tests.test_encoders import MEAN, STD, _clip_full, tiny_dict

    encoder_dir, llm_dir = tmp_path / "clip", tmp_path / "gpt_oss"
    _clip_full({**tiny_dict("clip"), "image_size": 96}).save_pretrained(encoder_dir)
    CLIPImageProcessor(image_mean=MEAN, image_std=STD).save_pretrained(encoder_dir)
    tiny = OmegaConf.to_container(load_option("llm", "gpt_oss").tiny)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(tiny.pop("model_type"), **tiny)).save_pretrained(llm_dir)
    AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR).save_pretrained(llm_dir)

    cfg = model_config("clip", "pixel_shuffle", scale="full")
    cfg.encoder.pretrained, cfg.llm.pretrained = str(encoder_dir), str(llm_dir)
    spec = input_spec_from_config(cfg)
    assert (spec.image_size, spec.tokens_per_image) == (96, (96 // 8) ** 2 // 4)
    assert spec.image_mean == tuple(MEAN) and spec.image_std == tuple(STD)
    assert_same_spec(spec, MedVLM.from_config(cfg).input_spec())


HF_FOLDERS = ["clip-vision", "clip-full", "siglip-vision", "siglip-full"]


@pytest.mark.parametrize("preprocessor", [True, False])
@pytest.mark.parametrize("case", HF_FOLDERS + ["open_clip"])
def test_full_scale_image_input_equals_the_loaded_encoders(case, preprocessor, tmp_path):
    from tests.test_encoders import (
        HF_CASES, MEAN, STD, TINY_TIMM, _open_clip_trunk, _write_open_clip, encoder_cfg, tiny_dict,
    )

    if case == "open_clip":
        choice = "biomedclip"
        _write_open_clip(tmp_path, _open_clip_trunk("vit_base_patch16_224", 64, TINY_TIMM))
        if not preprocessor:
            config = json.loads((tmp_path / "open_clip_config.json").read_text())
            del config["preprocess_cfg"]
            (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    else:
        _, choice, make, processor_cls, _ = HF_CASES[case]
        make(tiny_dict(choice)).save_pretrained(tmp_path)
        if preprocessor:
            processor_cls(image_mean=MEAN, image_std=STD).save_pretrained(tmp_path)
    cfg = encoder_cfg(choice, scale="full", pretrained=str(tmp_path))
    image = image_input(cfg, load_option("projector", "mlp2x_gelu"))
    encoder = hydra.utils.instantiate(cfg)
    assert (image.image_size, image.patch_size) == (encoder.image_size, encoder.patch_size) == (64, 8)
    assert image.patch_tokens == image.tokens_per_image == encoder.num_tokens
    assert (image.image_mean, image.image_std) == (encoder.image_mean, encoder.image_std)
    assert (image.image_mean == tuple(MEAN)) is preprocessor


PUBLISHED_PATCH_TOKENS = {"clip": 576, "siglip": 729, "medsiglip": 1024, "biomedclip": 196}


@pytest.mark.parametrize("projector", PROJECTORS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_real_architectures_give_the_models_token_counts(encoder, projector, tmp_path):
    """At the published architectures (as `plan` uses them, no weights): the contract's counts are those of the
    encoder and projector built on the meta device -- and a grid pixel shuffle cannot fold fails in both."""
    from medgpt_oss.plan import encoder_at_architecture

    cfg = compose_train(["+stage=align", f"encoder={encoder}", f"projector={projector}"], tmp_path)
    arch = encoder_at_architecture(cfg)
    with torch.device("meta"):
        built = hydra.utils.instantiate(arch)
        made = hydra.utils.instantiate(cfg.projector)(in_dim=built.hidden_size, out_dim=8)
    assert built.num_tokens == PUBLISHED_PATCH_TOKENS[encoder]
    try:
        expected = made.output_tokens(built.num_tokens)
    except ValueError:
        with pytest.raises(ValueError, match="pixel shuffle"):
            image_input(arch, cfg.projector)
        return
    image = image_input(arch, cfg.projector)
    assert (image.image_size, image.patch_tokens, image.tokens_per_image) == (
        built.image_size, built.num_tokens, expected)


def test_a_disagreement_names_the_fields():
    from transformers import AutoTokenizer

    from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR

    spec = input_spec_from_config(model_config("clip", "pixel_shuffle"))
    with pytest.raises(ContractMismatchError, match="tokens_per_image: 16 from the config, 64 from the model"):
        check_agreement(spec, input_spec_from_config(model_config("clip", "mlp2x_gelu")))
    # a tokenizer without the image token, another image token and size
    other = replace(spec, tokenizer=AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR), image_token="<|img|>",
                    image_size=32)
    with pytest.raises(ContractMismatchError) as info:
        check_agreement(spec, other)
    message = str(info.value)
    assert "image_token: '<|image|>' from the config, '<|img|>' from the model" in message
    assert "image_size: 64 from the config, 32 from the model" in message
    assert "tokenizer: vocabularies differ" in message and "only in the config's: ['<|image|>']" in message
    assert "tokens_per_image" not in message and "image_mean" not in message and "chat" not in message


# -- classes of the user's own (docs/security.md: `encoder._target_: mylab.encoders.MyTower`) ---------------------

class PatchTower(VisionEncoder):
    """A user's own encoder, as small as trains: a patch embedding and two linear blocks. It states no contract,
    so only the built model can say what it is fed."""

    MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def _build_tiny(self, tiny: dict) -> None:
        self.image_size, self.patch_size = int(tiny["image_size"]), int(tiny["patch_size"])
        self.hidden_size, self.num_layers = int(tiny["hidden_size"]), 2
        self.image_mean, self.image_std = self.MEAN, self.STD
        self.patches = torch.nn.Conv2d(3, self.hidden_size, self.patch_size, self.patch_size)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(self.hidden_size, self.hidden_size) for _ in range(2))

    def _hidden_states(self, pixel_values: torch.Tensor, index: int) -> torch.Tensor:
        hidden = self.patches(pixel_values).flatten(2).transpose(1, 2)
        for block in self.blocks[:index]:
            hidden = torch.relu(block(hidden))
        return hidden

    def fsdp_wrap_modules(self) -> set[type[torch.nn.Module]]:
        return {torch.nn.Linear}


class StatedPatchTower(PatchTower):
    """The same tower, stating its contract from its config as the built-in classes' rules do."""

    @classmethod
    def input_contract(cls, config: dict) -> EncoderInput:
        tiny = config["tiny"]
        return EncoderInput(int(tiny["image_size"]), int(tiny["patch_size"]), cls.MEAN, cls.STD)


class PairPoolingProjector(Projector):
    """A user's own projector: each pair of patch tokens averaged into one, stated from its config."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_dim, out_dim)

    def output_tokens(self, num_tokens: int) -> int:
        return num_tokens // 2

    @classmethod
    def output_tokens_contract(cls, config: dict, num_tokens: int) -> int:
        return num_tokens // 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features.unflatten(1, (-1, 2)).mean(2))


def test_classes_that_state_their_contract_give_it_without_a_model_built(monkeypatch):
    cfg = model_config()
    cfg.encoder._target_ = f"{__name__}.StatedPatchTower"
    cfg.projector = {"_target_": f"{__name__}.PairPoolingProjector", "_partial_": True}
    with monkeypatch.context() as patched:
        patched.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: pytest.fail(f"a {type(self)} was built"))
        spec = input_spec_from_config(cfg)
    assert (spec.image_size, spec.tokens_per_image, spec.image_mean, spec.image_std) == (
        64, 32, PatchTower.MEAN, PatchTower.STD)
    assert_same_spec(spec, MedVLM.from_config(cfg).input_spec())


@pytest.mark.parametrize("part", ["encoder", "projector"])
def test_a_class_that_states_no_contract_is_named(part):
    cfg = model_config()
    if part == "encoder":
        cfg.encoder._target_ = f"{__name__}.PatchTower"
    else:  # a Projector that does not say how many tokens its config makes
        cfg.projector = {"_target_": "medgpt_oss.models.projectors.Projector", "_partial_": True}
    target = cfg[part]._target_
    with pytest.raises(NoContractRule, match=rf"{part}\._target_='{target}' states no model/data contract"):
        input_spec_from_config(cfg)


# -- (b) without building the model -----------------------------------------------------------------------

@pytest.mark.parametrize("projector", PROJECTORS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_contract_creates_no_torch_module(encoder, projector, monkeypatch):
    def no_modules(self, *args, **kwargs):
        raise AssertionError(f"a {type(self).__name__} was built")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_modules)
    spec = input_spec_from_config(model_config(encoder, projector))
    assert spec.tokens_per_image > 0
    with pytest.raises(AssertionError, match="was built"):  # the patch would catch a model built
        torch.nn.Linear(1, 1)


def test_the_contract_imports_no_model_code():
    code = """
import json, sys
from omegaconf import OmegaConf
from medgpt_oss.config import group_options, load_option
from medgpt_oss.contract import input_spec_from_config
for encoder in group_options("encoder"):
    for projector in group_options("projector"):
        cfg = OmegaConf.create({"scale": "tiny", "init_seed": 0, "chat": load_option("chat", "harmony")})
        cfg.encoder, cfg.projector = load_option("encoder", encoder), load_option("projector", projector)
        cfg.llm = load_option("llm", "gpt_oss")
        input_spec_from_config(cfg)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("medgpt_oss.models", "timm", "lightning")))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        "medgpt_oss.models", "medgpt_oss.models.hub", "medgpt_oss.models.tokenizer"]


# -- (c) prepare validates as the chosen model tokenizes ----------------------------------------------------

@pytest.mark.parametrize(("overrides", "model", "tokens"), [
    ([], ("clip", "mlp2x_gelu"), 64),
    (["encoder=medsiglip", "projector=pixel_shuffle"], ("medsiglip", "pixel_shuffle"), 25),
    (["encoder=biomedclip", "projector=pixel_shuffle"], ("biomedclip", "pixel_shuffle"), 16),
])
def test_prepare_counts_the_image_tokens_of_the_chosen_encoder_and_projector(overrides, model, tokens, tmp_path):
    from medgpt_oss.prepare import load_formatter

    cfg = compose_config("prepare", ["source=vqa_rad", f"source.root={tmp_path}", f"out={tmp_path / 'out'}",
                                     *overrides], tmp_path)
    formatter = load_formatter(cfg)
    built = MedVLM.from_config(model_config(*model)).input_spec()
    assert formatter.num_image_tokens == built.tokens_per_image == tokens
    assert formatter.tokenizer.get_vocab() == built.tokenizer.get_vocab()
    assert formatter.image_token_id == built.tokenizer.convert_tokens_to_ids(built.image_token)
    assert formatter.chat == built.chat


def test_prepare_tokens_per_image_still_overrides_the_models_count(tmp_path):
    from medgpt_oss.prepare import load_formatter

    cfg = compose_config("prepare", ["source=vqa_rad", f"source.root={tmp_path}", f"out={tmp_path / 'out'}",
                                     "encoder=medsiglip", "tokens_per_image=16"], tmp_path)
    assert load_formatter(cfg).num_image_tokens == 16


# -- train builds its data module from the config's contract ------------------------------------------------

def test_train_builds_the_data_module_first_and_refuses_a_model_with_another_contract(tmp_path, medsynth_dir,
                                                                                     monkeypatch):
    from medgpt_oss.data.datamodule import ConversationDataModule
    from medgpt_oss.train import train

    built: list[str] = []
    for cls, name in ((ConversationDataModule, "data module"), (MedVLM, "model")):
        monkeypatch.setattr(cls, "__init__", _recorded(built, name, cls.__init__))
    stated = MedVLM.input_spec
    monkeypatch.setattr(MedVLM, "input_spec", lambda self: replace(stated(self), tokens_per_image=7))
    cfg = compose_train(["+stage=align", "scale=tiny", "trainer.accelerator=cpu", "logger=csv"], tmp_path,
                        medsynth_dir)
    with pytest.raises(ContractMismatchError, match="tokens_per_image: 64 from the config, 7 from the model"):
        train(cfg)
    assert built == ["data module", "model"]  # the data side needed no model


def _recorded(built: list[str], name: str, init):
    def recording(self, *args, **kwargs):
        built.append(name)
        init(self, *args, **kwargs)

    return recording


@pytest.mark.parametrize("tower", ["StatedPatchTower", "PatchTower"])
def test_training_and_evaluation_take_an_encoder_class_of_the_users_own(tower, tmp_path, medsynth_dir, monkeypatch,
                                                                        caplog):
    """A class that states its contract: the data module first, as for the built-in classes. One that states
    none: the model first, its input_spec() builds the data module, and evaluation loads it unchecked."""
    from medgpt_oss.data.datamodule import ConversationDataModule
    from medgpt_oss.eval.generation import load_vlm
    from medgpt_oss.train import train
    from tests.conftest import small_data_overrides
    from tests.test_train import TINY_RUN

    built: list[str] = []
    for cls, name in ((ConversationDataModule, "data module"), (MedVLM, "model")):
        monkeypatch.setattr(cls, "__init__", _recorded(built, name, cls.__init__))
    target = f"{__name__}.{tower}"
    caplog.set_level(logging.INFO)
    cfg = compose_train(TINY_RUN + small_data_overrides() + [f"encoder._target_={target}", "trainer.max_steps=2",
                                                             "trainer.limit_val_batches=0"], tmp_path, medsynth_dir)
    trainer, stage = train(cfg)
    assert trainer.global_step == 2 and type(stage.vlm.encoder).__name__ == tower
    stated = tower == "StatedPatchTower"
    assert built == (["data module", "model"] if stated else ["model", "data module"])
    assert ("the data module is built from the model's own input_spec()" in caplog.text) is not stated
    vlm = load_vlm(str(tmp_path / "checkpoints" / "last.ckpt"), trusted_targets=[target])
    assert type(vlm.encoder).__name__ == tower
    assert ("the prompts follow the model's own input_spec() unchecked" in caplog.text) is not stated
