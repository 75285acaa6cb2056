"""Export: a stage checkpoint -> a folder plain transformers loads, with the Lightning model's logits.

A CLIP/SigLIP + mlp2x_gelu model is written as transformers' own LlavaForConditionalGeneration and
loads in a fresh process that never imports medgpt_oss; other models keep our class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

import medgpt_oss.models.hf  # noqa: F401  (registers our export class with the Auto classes)
from medgpt_oss.data.conversation import HarmonyFormatter
from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.images import ImageTransform, load_image
from medgpt_oss.data.processor import SampleProcessor
from medgpt_oss.export import ExportError, export
from medgpt_oss.models.export_model import MedVLMForConditionalGeneration
from medgpt_oss.models.load_export import medvlm_from_export
from medgpt_oss.models.vlm import MedVLM
from medgpt_oss.train import train
from tests.conftest import compose_train, small_data_overrides
from tests.test_conversation import REFERENCE, REFERENCE_CASES
from tests.test_train import TINY_RUN

FAST = ["trainer.limit_val_batches=0"]


def _batch(stage, medsynth_dir: Path) -> dict:
    """Three samples, right-padded: one with two images (frontal + lateral), one with one, one text-only."""
    root = medsynth_dir / "medsynth"
    records = read_jsonl(root / "val.jsonl") + read_jsonl(root / "train.jsonl")
    n_images = lambda r: len([r["image"]] if isinstance(r.get("image"), str) else r.get("image") or [])  # noqa: E731
    picks = [next(r for r in records if n_images(r) == n) for n in (2, 1, 0)]
    processor = SampleProcessor(stage.vlm.input_spec(), root)
    batch = processor.collate([processor(r) for r in picks])
    assert batch["pixel_values"].shape[0] == 3
    return batch


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits


@pytest.fixture(scope="module")
def align_run(tmp_path_factory, medsynth_dir):
    """A tiny align stage trained a few steps, and its checkpoint."""
    tmp = tmp_path_factory.mktemp("align")
    cfg = compose_train(TINY_RUN + small_data_overrides() + FAST + ["trainer.max_steps=3"], tmp, medsynth_dir)
    _, stage = train(cfg)
    return stage.eval(), tmp / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def cli_export(align_run, tmp_path_factory):
    """The align checkpoint (CLIP + mlp2x_gelu) exported through `python -m medgpt_oss.export` (the one CLI run)."""
    _, ckpt = align_run
    out = tmp_path_factory.mktemp("cli") / "export"
    result = subprocess.run([sys.executable, "-m", "medgpt_oss.export", f"ckpt={ckpt}", f"out={out}"],
                            cwd=out.parent, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def ours_export(align_run, tmp_path_factory):
    """The same checkpoint in our own format (what models that are not LLaVA get)."""
    _, ckpt = align_run
    return export(ckpt, tmp_path_factory.mktemp("ours") / "export", format="medgpt_oss")


# A fresh interpreter with transformers only, as a user's (or a server's): processor, chat template with an
# image, logits and generate. It writes what it computed for the test to compare.
FRESH_LOAD = """
import sys, json, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
out, image_path, result = sys.argv[1:4]
processor = AutoProcessor.from_pretrained(out)
model = AutoModelForImageTextToText.from_pretrained(out)
messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(image_path)},
                                         {"type": "text", "text": "\\nIs there a nodule?"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
torch.save({"inputs": dict(inputs), "logits": logits, "generated": generated}, result)
print(type(model).__name__, type(processor).__name__, sorted(m for m in sys.modules if m.startswith("medgpt")))
"""


def _an_image(medsynth_dir: Path) -> tuple[dict, Path]:
    record = next(r for r in read_jsonl(medsynth_dir / "medsynth" / "val.jsonl") if isinstance(r.get("image"), str))
    return record, medsynth_dir / "medsynth" / record["image"]


def test_llava_export_loads_in_a_fresh_process_with_transformers_alone(align_run, cli_export, medsynth_dir,
                                                                        tmp_path):
    stage, _ = align_run
    out, result = cli_export
    assert str(out.resolve()) in result.stdout and "model.safetensors" in result.stdout
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "tokenizer.json",
            "generation_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out.parent / ".hydra").exists() and not list(out.parent.glob("*.log"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["text_config"]["model_type"] == \
        "gpt_oss" and config["vision_feature_select_strategy"] == "default" and config["vision_feature_layer"] == -2
    assert config["medgpt_oss"]["source"]["stage"].endswith("AlignStage")

    _, image_path = _an_image(medsynth_dir)
    fresh = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(out), str(image_path), str(tmp_path / "r.pt")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.split("\n")[-2] == "LlavaForConditionalGeneration LlavaProcessor []"  # no medgpt_oss loaded
    got = torch.load(tmp_path / "r.pt", weights_only=False)
    inputs = got["inputs"]
    # The processor wrote exactly the training prompt: harmony system message, 64 image tokens, <|start|>assistant.
    spec = stage.vlm.input_spec()
    expected = HarmonyFormatter(spec.tokenizer, spec.image_token, spec.tokens_per_image, chat=spec.chat).tokenize(
        "q", [{"from": "human", "value": "<image>\nIs there a nodule?"}, {"from": "gpt", "value": "-"}], 1,
        for_generation=True).input_ids
    assert inputs["input_ids"][0].tolist() == expected.tolist()
    # ... its image processor the training transform ...
    torch.testing.assert_close(inputs["pixel_values"][0], ImageTransform(
        spec.image_size, spec.image_mean, spec.image_std)(load_image(image_path)), atol=1e-5, rtol=0)
    # ... and the model the Lightning model's logits.
    with torch.no_grad():
        ours = stage.vlm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         pixel_values=inputs["pixel_values"]).logits
    torch.testing.assert_close(got["logits"], ours)
    generated = got["generated"]
    assert torch.equal(generated[:, : expected.shape[0]], expected[None]) and generated.shape[1] > expected.shape[0]


def test_llava_processor_renders_the_official_template(cli_export):
    from transformers import AutoProcessor

    out, _ = cli_export
    processor = AutoProcessor.from_pretrained(out)
    for name, case in REFERENCE_CASES.items():
        kwargs = {"current_date": REFERENCE["template_date"], **case["kwargs"]}
        training = processor.apply_chat_template(case["messages"], tokenize=False, **kwargs)
        prompt = processor.apply_chat_template(case["messages"][:-1], tokenize=False, add_generation_prompt=True,
                                               **kwargs)
        assert (training, prompt) == (case["training_text"], case["generation_prompt_text"]), name
    # Without arguments the template uses the settings the model trained with.
    assert processor.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False).startswith(
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: medium")


def test_our_format_loads_after_importing_our_model_module(align_run, ours_export, medsynth_dir):
    stage, _ = align_run
    out = ours_export
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "README.md", "chat_template.jinja", "config.json", "model.safetensors", "preprocessor_config.json",
        "tokenizer.json", "tokenizer_config.json"])
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model) is MedVLMForConditionalGeneration and not model.training
    batch = _batch(stage, medsynth_dir)
    torch.testing.assert_close(_logits(model, batch), _logits(stage.vlm, batch))
    # The weights carry the MedVLM's own names, the trained projector included.
    with safe_open(out / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(stage.vlm.state_dict())
        torch.testing.assert_close(f.get_tensor("projector.mlp.0.weight"), stage.vlm.projector.mlp[0].weight)
    assert type(AutoModelForCausalLM.from_pretrained(out)) is MedVLMForConditionalGeneration
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "medgpt_oss_vlm" and config["text_config"]["model_type"] == "gpt_oss"
    assert config["source"]["stage"].endswith("AlignStage") and config["chat"]["date"] == "2025-06-28"
    card = (out / "README.md").read_text()
    assert "openai/clip-vit-large-patch14-336" in card and "openai/gpt-oss-20b" in card and "AlignStage" in card
    assert "import medgpt_oss.models.hf" in card
    # In a fresh interpreter, importing our model module is what registers the class: plain code, no hook.
    code = ("import medgpt_oss.models.hf\n"
            "from transformers import AutoModelForImageTextToText\n"
            f"print(type(AutoModelForImageTextToText.from_pretrained({str(out)!r})).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "MedVLMForConditionalGeneration"


def test_exported_tokenizer_and_image_processor_reproduce_the_training_inputs(align_run, ours_export, medsynth_dir):
    stage, _ = align_run
    out = ours_export
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    spec = stage.vlm.input_spec()
    expected = HarmonyFormatter(spec.tokenizer, spec.image_token, spec.tokens_per_image, chat=spec.chat).tokenize(
        "q", [{"from": "human", "value": "<image>\nIs there a nodule?"}, {"from": "gpt", "value": "yes"}], 1,
        for_generation=True).input_ids
    for content in ("<image>\nIs there a nodule?",
                    [{"type": "image"}, {"type": "text", "text": "\nIs there a nodule?"}]):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        assert ids == expected.tolist()
    for name, case in REFERENCE_CASES.items():  # text-only conversations: the official template's text
        kwargs = {"current_date": REFERENCE["template_date"], **case["kwargs"]}
        assert tokenizer.apply_chat_template(case["messages"], tokenize=False, **kwargs) == case["training_text"]

    processor = AutoImageProcessor.from_pretrained(out)
    encoder = stage.vlm.encoder
    assert (processor.size.height, processor.size.width) == (encoder.image_size, encoder.image_size)
    torch.testing.assert_close(tuple(processor.image_mean), tuple(encoder.image_mean))
    torch.testing.assert_close(tuple(processor.image_std), tuple(encoder.image_std))
    _, image_path = _an_image(medsynth_dir)
    image = load_image(image_path)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, ImageTransform(encoder.image_size, encoder.image_mean, encoder.image_std)(image),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["llava", "medgpt_oss"])
def test_an_export_reloads_as_a_medvlm_for_code_written_against_it(align_run, cli_export, ours_export,
                                                                   medsynth_dir, fmt):
    stage, _ = align_run
    out = cli_export[0] if fmt == "llava" else ours_export
    vlm = medvlm_from_export(out)
    assert isinstance(vlm, MedVLM)
    expected, got = stage.vlm.input_spec(), vlm.input_spec()
    assert (got.image_token, got.tokens_per_image, got.image_size, got.image_mean, got.image_std, got.chat) == (
        expected.image_token, expected.tokens_per_image, expected.image_size, expected.image_mean,
        expected.image_std, expected.chat)
    assert got.tokenizer.get_vocab() == expected.tokenizer.get_vocab()
    assert vlm.image_token_id == stage.vlm.image_token_id
    batch = _batch(stage, medsynth_dir)
    torch.testing.assert_close(_logits(vlm, batch), _logits(stage.vlm, batch))


def test_generate_continues_the_prompt(ours_export):
    out = ours_export
    model = AutoModelForImageTextToText.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nIs there a nodule?"}],
                                        add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
    generated = model.generate(ids, pixel_values=torch.zeros(1, 3, 64, 64), max_new_tokens=3, do_sample=False)
    assert torch.equal(generated[:, : ids.shape[1]], ids) and generated.shape[1] > ids.shape[1]


@pytest.mark.parametrize("overrides, reason", [
    (["encoder=siglip"], None),  # SigLIP has no CLS: LLaVA's "full" feature strategy
    (["projector=pixel_shuffle"], "Linear-GELU-Linear"),
    (["encoder=biomedclip"], "not OpenCLIPTimmEncoder"),
    (["data.max_tiles=4"], "dynamic tiles"),
])
def test_export_format_follows_the_architecture(tmp_path, medsynth_dir, overrides, reason):
    from medgpt_oss.export import choose_format

    cfg = compose_train(TINY_RUN + small_data_overrides() + FAST + ["trainer.max_steps=1"] + overrides, tmp_path,
                        medsynth_dir)
    _, stage = train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    out = export(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("llava" if reason is None else "medgpt_oss_vlm")
    batch = _batch(stage.eval(), medsynth_dir) if "data.max_tiles=4" not in overrides else None
    if reason is None:
        assert config["vision_feature_select_strategy"] == "full"
        model = AutoModelForImageTextToText.from_pretrained(out)
        torch.testing.assert_close(_logits(model, batch), _logits(stage.vlm, batch))
    else:
        assert reason in (out / "README.md").read_text()  # the card says why, and which loader it needs
        with pytest.raises(ExportError, match=reason):
            export(ckpt, tmp_path / "forced", format="llava")
        assert choose_format(stage.vlm, "auto")[0] == ("llava" if "data.max_tiles=4" in overrides else "medgpt_oss")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, medsynth_dir):
    """A tiny instruct stage with LoRA r16 whose B weights are perturbed (so merging changes the weights)."""
    tmp = tmp_path_factory.mktemp("lora")
    overrides = [o if o != "+stage=align" else "+stage=instruct" for o in TINY_RUN]
    cfg = compose_train(overrides + small_data_overrides() + FAST + ["lora=r16", "trainer.max_steps=1"], tmp,
                        medsynth_dir)
    trainer, stage = train(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lora_b = [p for name, p in stage.named_parameters() if "lora_B" in name]
        assert lora_b
        for p in lora_b:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    ckpt = tmp / "perturbed.ckpt"
    trainer.save_checkpoint(ckpt)
    assert any("lora_B" in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    return stage.eval(), ckpt


def test_lora_is_merged_into_the_exported_weights(lora_run, tmp_path, medsynth_dir):
    stage, ckpt = lora_run
    out = export(ckpt, tmp_path / "merged")
    model = AutoModelForImageTextToText.from_pretrained(out)
    batch = _batch(stage, medsynth_dir)
    expected = _logits(stage.vlm, batch)
    # W + s*BA is rounded once in float32 (logits up to ~10 here: differences ~1e-4), while the LoRA
    # itself moves the logits by whole units: the merge is anything but trivial.
    torch.testing.assert_close(_logits(model, batch), expected, atol=1e-3, rtol=1e-3)
    with stage.vlm.llm.model.disable_adapter():
        assert (_logits(stage.vlm, batch) - expected).abs().max() > 1.0
    assert not any("lora" in name for name in model.state_dict())
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert json.loads((out / "config.json").read_text())["medgpt_oss"]["source"]["lora_merged"] is True


def test_unmerged_lora_is_kept_as_an_adapter_next_to_the_base_weights(lora_run, tmp_path, medsynth_dir):
    stage, ckpt = lora_run
    out = export(ckpt, tmp_path / "unmerged", merge_lora=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "medgpt_oss_vlm"  # LLaVA holds merged only
    assert (out / "lora_adapter" / "adapter_config.json").is_file()
    assert "attach_lora_adapter" in (out / "README.md").read_text()
    model = AutoModelForImageTextToText.from_pretrained(out)
    batch = _batch(stage, medsynth_dir)
    with stage.vlm.llm.model.disable_adapter():
        torch.testing.assert_close(_logits(model, batch), _logits(stage.vlm, batch))  # base weights alone
    model.attach_lora_adapter()
    torch.testing.assert_close(_logits(model, batch), _logits(stage.vlm, batch))
    # older exports' model cards say: from medgpt_oss.models.hf import attach_lora_adapter; attach_lora_adapter(model)
    from medgpt_oss.models.hf import attach_lora_adapter

    carded = attach_lora_adapter(AutoModelForImageTextToText.from_pretrained(out))
    torch.testing.assert_close(_logits(carded, batch), _logits(stage.vlm, batch))


def test_dtype_casts_the_weights_with_transformers_keep_in_fp32_rule(align_run, tmp_path, medsynth_dir):
    stage, ckpt = align_run
    out = export(ckpt, tmp_path / "fp16", dtype="float16", format="medgpt_oss")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("projector.mlp.0.weight").dtype == torch.float16
        assert f.get_tensor("llm.model.model.embed_tokens.weight").dtype == torch.float16
        assert f.get_tensor("llm.model.model.norm.weight").dtype == torch.float32  # GPT-oss keeps norms fp32 in fp16
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.projector.mlp[0].weight.dtype == torch.float16
    assert model.llm.model.model.norm.weight.dtype == torch.float32
    assert torch.isfinite(_logits(model, _batch(stage, medsynth_dir))).all()
    with pytest.raises(ExportError, match="overwrite=true"):  # an earlier export is replaced only on request
        export(ckpt, out)
    export(ckpt, out, overwrite=True, format="medgpt_oss")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("projector.mlp.0.weight").dtype == torch.float32


def test_missing_checkpoint_and_occupied_out_fail_clearly(align_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint '.*nope.ckpt' does not exist"):
        export(tmp_path / "nope.ckpt", tmp_path / "out")
    _, ckpt = align_run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export(ckpt, tmp_path / "busy", overwrite=True)  # overwrite only ever replaces an earlier export
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_with_a_missing_checkpoint_says_so_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medgpt_oss.export", f"ckpt={tmp_path}/nope.ckpt", "out=x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: checkpoint" in result.stderr and "nope.ckpt' does not exist" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluation_answers_the_same_from_an_export_folder_as_from_the_checkpoint(align_run, cli_export,
                                                                                 medsynth_dir):
    from medgpt_oss.eval.generation import Generator, load_vlm

    _, ckpt = align_run
    out, _ = cli_export
    root = medsynth_dir / "medsynth"
    records = [r for r in read_jsonl(root / "test.jsonl") if r["task"] in ("closed", "report")][:4]
    answers = []
    for source in (str(ckpt), str(out)):
        generator = Generator(load_vlm(source), root, max_new_tokens=8)
        answers.append(generator.generate([generator.prepare(r) for r in records]))
    assert answers[0] == answers[1]
