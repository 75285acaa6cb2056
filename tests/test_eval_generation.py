"""Model-path mechanics on a tiny random MedVLM: batched == sequential, stop tokens, likelihood, sharding.

A random tiny model answers nonsense, so these tests check mechanics only; scoring
correctness is tested with known answers in the predictions-file tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from medgpt_oss.eval.bench_generation import make_records, tiny_vlm
from medgpt_oss.eval.benchmarks.base import EvalItem, MalformedItem
from medgpt_oss.eval.benchmarks.medsynth import MedSynth
from medgpt_oss.eval.generation import Generator, final_channel_text, training_image_options
from medgpt_oss.eval.likelihood import pick_by_likelihood
from medgpt_oss.eval.prompts import build_prompt, to_record
from medgpt_oss.eval.runner import ModelAnswerer, RunOptions, run_benchmark


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    return tiny_vlm()


@pytest.fixture()
def generator(vlm, tmp_path):
    return Generator(vlm, tmp_path, max_new_tokens=5)


def test_batched_decoding_equals_one_at_a_time(generator, tmp_path):
    records = make_records(tmp_path, 4)  # questions of different lengths: real left padding
    records.append({"id": "text", "conversations": [{"from": "human", "value": "What causes a cough?"},
                                                    {"from": "gpt", "value": "-"}]})  # no image in the batch
    samples = [generator.prepare(r) for r in records]
    assert len({len(s["input_ids"]) for s in samples}) > 1
    batched = generator.generate(samples)
    one_by_one = [generator.generate([s])[0] for s in samples]
    assert batched == one_by_one
    assert all(isinstance(t, str) for t in batched)


def test_prompt_ends_in_the_final_channel_header(generator, tmp_path):
    (record,) = make_records(tmp_path, 1)
    ids = generator.prepare(record)["input_ids"].tolist()
    assert generator.tokenizer.decode(ids).endswith("<|start|>assistant<|channel|>final<|message|>")


def test_decoding_stops_at_harmony_end_tokens(generator, vlm, tmp_path):
    end_id = generator.tokenizer.convert_tokens_to_ids("<|end|>")
    captured = {}
    real_generate = vlm.llm.model.generate

    def spy(**kwargs):
        out = real_generate(**kwargs)
        captured.update(eos=kwargs["eos_token_id"], shape=tuple(out.shape))
        return out

    def force_end(module, args, output):
        output[..., end_id] += 1e4  # the model "wants" to stop at once
        return output

    handle = vlm.llm.model.get_output_embeddings().register_forward_hook(force_end)
    try:
        vlm.llm.model.generate = spy
        outputs = generator.generate([generator.prepare(r) for r in make_records(tmp_path, 2)])
    finally:
        handle.remove()
        del vlm.llm.model.generate
    assert outputs == ["", ""] and captured["shape"] == (2, 1)
    assert set(captured["eos"]) == {generator.tokenizer.convert_tokens_to_ids(t)
                                    for t in ("<|return|>", "<|end|>", "<|call|>")}


def test_decode_cuts_at_the_first_stop_and_keeps_the_final_channel(generator):
    tok = generator.tokenizer
    ids = tok("Yes.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|return|>")] + [5, 6]
    assert generator.decode(ids) == "Yes."
    assert final_channel_text("<|channel|>analysis<|message|>think<|end|><|start|>assistant"
                              "<|channel|>final<|message|>B<|return|>") == "B"
    assert final_channel_text("No.<|endoftext|>") == "No."


def test_likelihood_picks_the_most_likely_option(generator, vlm, tmp_path):
    (record,) = make_records(tmp_path, 1)
    item = EvalItem("q", "closed", "Is there a nodule?", "yes", images=record["image"])
    best, scores = pick_by_likelihood(generator, item, build_prompt(item))
    assert len(scores) == 2 and best == ("Yes", "No")[scores.index(max(scores))]
    no_first = generator.tokenizer("No", add_special_tokens=False)["input_ids"][0]

    def favour_no(module, args, output):
        output[..., no_first] += 1e3
        return output

    handle = vlm.llm.model.get_output_embeddings().register_forward_hook(favour_no)
    try:
        assert pick_by_likelihood(generator, item, build_prompt(item))[0] == "No"
    finally:
        handle.remove()


def test_unreadable_image_is_reported_by_id(generator, tmp_path):
    item = EvalItem("broken", "closed", "Is there a nodule?", "yes", images=["missing.png"])
    results = ModelAnswerer(generator, progress=False)([(item, build_prompt(item))])
    assert "missing.png" in results["broken"]["error"]


def test_sharded_model_run_merges_to_the_unsharded_result(generator, medsynth_dir, tmp_path):
    bench = MedSynth(medsynth_dir / "medsynth", name="medsynth",
                     prompts={k: "{question}" for k in ("closed", "open", "mcq", "report")})
    generator.processor.root = bench.root
    answer = ModelAnswerer(generator, batch_size=3, progress=False)
    whole = run_benchmark(bench, RunOptions(out_dir=tmp_path / "one", limit=5, progress=False), answer=answer)
    for rank in (1, 0):  # rank 0 last: it merges once the other rank's marker is there
        sharded = run_benchmark(bench, RunOptions(out_dir=tmp_path / "two", rank=rank, world_size=2, limit=5,
                                                  progress=False), answer=answer)
    assert sharded == whole and whole["n_scored"] == 5
    rows = [json.loads(x) for x in open(tmp_path / "two/medsynth/predictions.jsonl")]
    assert rows == [json.loads(x) for x in open(tmp_path / "one/medsynth/predictions.jsonl")]
    assert {"id", "prompt", "output", "extracted", "gold", "correct"} <= set(rows[0])


def test_records_reuse_the_training_layout():
    item = EvalItem("x", "mcq", "Which?", "B", images=["a.png", "b.png"], options={"A": "one", "B": "two"})
    prompt = build_prompt(item)
    assert prompt.startswith("<image>\n<image>\nWhich?\nA. one\nB. two\n")
    assert to_record(item, prompt)["conversations"][1] == {"from": "gpt", "value": "-"}
    assert isinstance(MalformedItem("y", "bad"), MalformedItem)


def test_prompt_placeholder_is_the_training_one():
    from medgpt_oss.data.conversation import IMAGE_PLACEHOLDER
    from medgpt_oss.eval import prompts

    assert prompts.IMAGE_PLACEHOLDER == IMAGE_PLACEHOLDER


def test_a_checkpoint_trained_on_tiles_is_evaluated_on_tiles(vlm, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("data:\n  max_tiles: 4\n  dicom: {frames: all, ct_windows: null}\n")
    options = training_image_options(run / "checkpoints" / "last.ckpt")
    assert options == {"max_tiles": 4, "dicom": {"frames": "all", "ct_windows": None}}
    assert training_image_options(tmp_path / "elsewhere.ckpt") == {}
    # images.* in conf/eval.yaml: a non-null value wins, a null one keeps the training run's
    from omegaconf import OmegaConf
    overrides = OmegaConf.create({"max_tiles": 2, "dicom": None})
    assert training_image_options(run / "checkpoints" / "last.ckpt", overrides) == {
        "max_tiles": 2, "dicom": {"frames": "all", "ct_windows": None}}

    Image.new("RGB", (288, 96), "gray").save(tmp_path / "wide.png")  # 3:1 -> a 3x1 grid + thumbnail
    record = {"id": "wide", "image": ["wide.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "-"}]}
    image_id = vlm.image_token_id

    def image_tokens(generator):
        sample = generator.prepare(record)
        return int((sample["input_ids"] == image_id).sum()), len(sample["pixel_values"])

    per_image = vlm.input_spec().tokens_per_image
    assert image_tokens(Generator(vlm, tmp_path)) == (per_image, 1)
    assert image_tokens(Generator(vlm, tmp_path, **options)) == (4 * per_image, 4)
