"""Stage hand-off for every LLM training mode (frozen / LoRA / full) on both sides, and the checks that stop a
hand-off or a resume onto another model than the checkpoint's (src/medgpt_oss/stages/handoff.py, provenance.py).

Most tests build stages straight from the composed configs (as ``train`` does) and stand in for training by
moving every trainable weight, saving the checkpoint through the stage's own ``on_save_checkpoint``: seconds,
not minutes. One test runs the README's chain through real Trainers.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning
import pytest
import torch
from peft import PeftModel

from medgpt_oss.config import model_config
from medgpt_oss.provenance import (
    INIT_FROM,
    PROVENANCE_KEY,
    RESUME,
    ModelMismatchError,
    _refused,
    check,
)
from medgpt_oss.stages.base import load_stage
from medgpt_oss.train import train
from tests.conftest import compose_train, small_data_overrides
from tests.test_train import TINY_RUN

BASE = [o for o in TINY_RUN if o != "+stage=align"] + small_data_overrides()
# The LLM in the previous stage, and in the next one.
PREVIOUS = {"frozen": ["+stage=align"], "lora": ["+stage=longctx", "lora=r16"], "full": ["+stage=longctx"]}
NEXT = {"frozen": ["+stage=instruct", "stage.train_llm=false"], "lora": ["+stage=instruct", "lora=r64"],
        "full": ["+stage=instruct"]}


def build(out: Path, *overrides: str):
    cfg = compose_train(BASE + list(overrides), out)
    return hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")


def trained_checkpoint(stage, path: Path, seed: int = 0) -> Path:
    """Stand-in for training: every trainable weight moves (LoRA's B too, so adapters change the model), then the
    checkpoint is written as Lightning writes it (state dict, hyper-parameters, the stage's own additions)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stage.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    checkpoint = {"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    stage.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def effective(stage) -> dict[str, torch.Tensor]:
    """The weights the model computes with: LoRA merged by peft itself (on a copy), under plain names."""
    llm = copy.deepcopy(stage.vlm.llm.model)
    if isinstance(llm, PeftModel):
        llm = llm.merge_and_unload()
    parts = {"encoder": stage.vlm.encoder.state_dict(), "projector": stage.vlm.projector.state_dict(),
             "llm": llm.state_dict()}
    return {f"{part}.{k}": v.detach().clone() for part, state in parts.items() for k, v in state.items()}


def logits(stage) -> torch.Tensor:
    vlm = stage.vlm.eval()
    n = vlm.tokens_per_image
    ids = torch.tensor([[5, 6] + [vlm.image_token_id] * n + [7, 8, 9, 10]])
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(1, 3, vlm.encoder.image_size, vlm.encoder.image_size, generator=generator)
    with torch.no_grad():
        return vlm(input_ids=ids, pixel_values=pixels, use_cache=False).logits


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def previous_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor], torch.Tensor]]:
    """One 'trained' checkpoint per previous-stage mode, with its effective weights and logits."""
    out = tmp_path_factory.mktemp("previous")
    made = {}
    for mode, overrides in PREVIOUS.items():
        stage = build(out / mode, *overrides)
        ckpt = trained_checkpoint(stage, out / f"{mode}.ckpt")
        made[mode] = (ckpt, effective(stage), logits(stage))
    return made


@pytest.mark.parametrize("previous, following", list(itertools.product(PREVIOUS, NEXT)))
def test_every_previous_and_next_llm_mode_hands_off_the_effective_weights(previous, following, previous_checkpoints,
                                                                         tmp_path):
    ckpt, want, want_logits = previous_checkpoints[previous]
    stage = build(tmp_path, *NEXT[following], f"init_from={ckpt}")
    before = effective(stage)
    assert any(not torch.equal(before[k], want[k]) for k in want)  # the projector at least was trained
    stage.setup("fit")
    assert_same_weights(effective(stage), want)
    torch.testing.assert_close(logits(stage), want_logits, rtol=1e-4, atol=1e-4)  # merged vs. adapter sums
    trainable = stage.vlm.parameter_summary()["llm"]["trainable"]
    assert (trainable == 0) == (following == "frozen")
    if following == "lora":  # this stage's own adapters start fresh and are what trains in the LLM
        assert all("lora_" in n for n, p in stage.vlm.llm.named_parameters() if p.requires_grad)

    # What was handed over is saved by this stage too (frozen or merged), so its checkpoint reloads the same model.
    path = trained_checkpoint(stage, tmp_path / "next.ckpt", seed=1)
    reloaded = load_stage(str(path))
    assert_same_weights(effective(reloaded), effective(stage))


def test_the_readme_chain_runs_longctx_full_then_instruct_with_lora(tmp_path, medsynth_dir):
    """`+stage=instruct init_from=<longctx ckpt> lora=r64` failed with a KeyError (peft renames the LLM's weights)."""
    short = ["trainer.max_steps=1", "trainer.limit_val_batches=0", "data.max_length=512", "data.pack_length=512",
             "data.batch_size=2"]
    train(compose_train(BASE + ["+stage=longctx", *short], tmp_path / "longctx", medsynth_dir))
    longctx = tmp_path / "longctx" / "checkpoints" / "last.ckpt"
    handed = torch.load(longctx, weights_only=True)["state_dict"]
    trainer, _ = train(compose_train(BASE + ["+stage=instruct", f"init_from={longctx}", "lora=r64", *short],
                                     tmp_path / "instruct", medsynth_dir))
    assert trainer.global_step == 1
    saved = torch.load(tmp_path / "instruct" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    q_proj = "vlm.llm.model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    # The full-trained weight arrived under the adapter and stays frozen; this checkpoint keeps it.
    assert torch.equal(saved[q_proj], handed["vlm.llm.model.model.layers.0.self_attn.q_proj.weight"])
    assert any("lora_A" in k for k in saved)


def test_adapters_on_expert_parameters_merge_too(tmp_path):
    previous = build(tmp_path / "prev", "+stage=longctx", "lora=r16_experts")
    ckpt = trained_checkpoint(previous, tmp_path / "prev.ckpt")
    stage = build(tmp_path / "next", "+stage=instruct", f"init_from={ckpt}")
    stage.setup("fit")
    assert_same_weights(effective(stage), effective(previous))
    torch.testing.assert_close(logits(stage), logits(previous), rtol=1e-4, atol=1e-4)


def test_a_chain_through_two_lora_stages_merges_each_in_turn(tmp_path, previous_checkpoints):
    # longctx trained fully -> instruct r16 (full weights under its adapters, saved) -> another stage, full.
    middle = build(tmp_path / "middle", "+stage=instruct", "lora=r16",
                   f"init_from={previous_checkpoints['full'][0]}")
    middle.setup("fit")
    ckpt = trained_checkpoint(middle, tmp_path / "middle.ckpt", seed=2)
    assert any("base_layer" in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    last = build(tmp_path / "last", "+stage=instruct", f"init_from={ckpt}")
    last.setup("fit")
    assert_same_weights(effective(last), effective(middle))


def test_keep_continues_the_previous_adapters(tmp_path, previous_checkpoints):
    previous = build(tmp_path / "prev", *PREVIOUS["lora"])
    ckpt = trained_checkpoint(previous, tmp_path / "prev.ckpt")
    stage = build(tmp_path / "next", "+stage=instruct", "lora=r16", "stage.handoff_lora=keep", f"init_from={ckpt}")
    stage.setup("fit")
    theirs, mine = previous.vlm.llm.state_dict(), stage.vlm.llm.state_dict()
    assert set(theirs) == set(mine)
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
    torch.testing.assert_close(logits(stage), logits(previous))

    other = build(tmp_path / "other", "+stage=instruct", "lora=r64", "stage.handoff_lora=keep", f"init_from={ckpt}")
    with pytest.raises(ValueError, match=r"add lora=r16, or stage.handoff_lora=merge"):
        other.setup("fit")


# -- hand-off and resume refuse another model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def align_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("align")
    return trained_checkpoint(build(out, "+stage=align"), out / "align.ckpt")


@pytest.mark.parametrize("override, expected", [
    ("encoder=siglip", "encoder: checkpoint clip, this run siglip -> add encoder=clip"),
    ("init_seed=1", "init_seed: checkpoint 0, this run 1 -> add init_seed=0"),
    ("projector=linear", "projector: checkpoint mlp2x_gelu, this run linear -> add projector=mlp2x_gelu"),
    ("llm.tiny.num_hidden_layers=3",
     "llm.tiny.num_hidden_layers: checkpoint 2, this run 3 -> add llm.tiny.num_hidden_layers=2"),
    ("encoder.feature_layer=-1", "encoder.feature_layer: checkpoint -2, this run -1 -> add encoder.feature_layer=-2"),
    ("llm=qwen2", "llm: checkpoint gpt_oss, this run qwen2 -> add llm=gpt_oss"),
])
def test_init_from_refuses_another_model_naming_the_override(override, expected, align_checkpoint, tmp_path):
    stage = build(tmp_path, "+stage=instruct", override, f"init_from={align_checkpoint}")
    with pytest.raises(ModelMismatchError) as caught:
        stage.setup("fit")
    assert expected in str(caught.value)
    assert str(align_checkpoint) in str(caught.value)


@pytest.mark.parametrize("override", ["lora=r16", "llm.attn_implementation=eager", "chat.reasoning_effort=high",
                                      "llm.dtype=float32", "stage.train_encoder=true"])
def test_init_from_accepts_what_a_next_stage_may_change(override, align_checkpoint, tmp_path):
    stage = build(tmp_path, "+stage=instruct", override, f"init_from={align_checkpoint}")
    stage.setup("fit")


def resume(tmp_path: Path, ckpt: Path, *overrides: str):
    stage = [] if any(o.startswith("+stage=") for o in overrides) else ["+stage=align"]
    return train(compose_train(BASE + stage + [f"ckpt_path={ckpt}", *overrides], tmp_path))


@pytest.mark.parametrize("overrides, expected", [
    (["encoder=siglip"], ["encoder: checkpoint clip, this run siglip -> add encoder=clip"]),
    (["init_seed=1"], ["init_seed: checkpoint 0, this run 1 -> add init_seed=0"]),
    (["encoder.tiny.num_hidden_layers=3"],
     ["encoder.tiny.num_hidden_layers: checkpoint 2, this run 3 -> add encoder.tiny.num_hidden_layers=2"]),
    (["lora=r16"], ["lora: checkpoint none, this run r16 -> add lora=none"]),
    (["stage.train_encoder=true"],
     ["stage.train_encoder: checkpoint false, this run true -> add stage.train_encoder=false"]),
    (["+stage=instruct"], ["stage: checkpoint align, this run instruct -> use +stage=align"]),
    (["encoder=siglip", "init_seed=7", "llm.tiny.num_hidden_layers=1"],  # every difference, each on its line
     ["add encoder=clip", "add init_seed=0", "add llm.tiny.num_hidden_layers=2"]),
])
def test_resume_refuses_another_model_naming_each_difference(overrides, expected, align_checkpoint, tmp_path):
    with pytest.raises(ModelMismatchError) as caught:
        resume(tmp_path, align_checkpoint, *overrides)
    message = str(caught.value)
    for line in expected:
        assert line in message
    assert len(message.splitlines()) == len(expected) + 2  # header, one line per difference, the hint
    assert not (tmp_path / "config.yaml").exists()  # stopped before any trainer or data work


def test_dtype_is_part_of_a_resumed_model_at_full_scale_only():
    full, tiny = {"llm": {"scale": "full"}}, {"llm": {"scale": "tiny"}}
    assert _refused("llm.dtype", RESUME, full) and not _refused("llm.dtype", RESUME, tiny)
    assert not _refused("llm.dtype", INIT_FROM, full)
    assert not _refused("lora.rank", INIT_FROM, full) and _refused("lora.rank", RESUME, full)


def test_resume_accepts_safe_changes(tmp_path, medsynth_dir):
    common = ["+stage=align", "trainer.limit_val_batches=0", "data.batch_size=4", "trainer.max_epochs=-1"]
    train(compose_train(BASE + common + ["trainer.max_steps=2"], tmp_path / "first", medsynth_dir))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    trainer, _ = train(compose_train(
        BASE + common + [f"ckpt_path={ckpt}", "trainer.max_steps=3", "stage.optim.lr=5e-4", "logger=default",
                         "llm.attn_implementation=eager", "llm.loss_chunk_size=null"],
        tmp_path / "resumed", medsynth_dir))
    assert trainer.global_step == 3


def test_resume_from_a_url_is_checked_as_lightning_loads_it(align_checkpoint, tmp_path):
    stage = build(tmp_path, "+stage=align", "encoder=siglip")
    stage._trainer = SimpleNamespace(ckpt_path="https://example.org/align.ckpt")
    with pytest.raises(ModelMismatchError, match="https://example.org/align.ckpt"):
        stage.on_load_checkpoint(torch.load(align_checkpoint, weights_only=True))


def test_same_config_but_other_frozen_weights_or_tokenizer_is_refused(align_checkpoint, tmp_path):
    checkpoint = torch.load(align_checkpoint, weights_only=True)
    stage = build(tmp_path, "+stage=align")
    check(checkpoint, stage, RESUME, align_checkpoint)  # unchanged: passes

    weights = checkpoint[PROVENANCE_KEY]["base_weights"]
    name = next(k for k in weights if k.startswith("vlm.encoder."))
    weights[name] = weights[name].rsplit("|", 1)[0] + "|0000000000000000"
    checkpoint[PROVENANCE_KEY]["tokenizer"]["sha256"] = "f" * 64
    with pytest.raises(ModelMismatchError) as caught:
        check(checkpoint, stage, RESUME, align_checkpoint)
    message = str(caught.value)
    assert "encoder weights: 1 frozen tensors" in message and name in message
    assert "tokenizer: checkpoint" in message and "the tokenizer files changed" in message


def test_a_checkpoint_without_provenance_is_still_checked_by_its_config(align_checkpoint, tmp_path):
    checkpoint = torch.load(align_checkpoint, weights_only=True)
    del checkpoint[PROVENANCE_KEY]  # written before provenance was recorded
    check(checkpoint, build(tmp_path / "same", "+stage=align"), RESUME, align_checkpoint)
    with pytest.raises(ModelMismatchError, match="add encoder=clip"):
        check(checkpoint, build(tmp_path / "other", "+stage=align", "encoder=siglip"), RESUME, align_checkpoint)
