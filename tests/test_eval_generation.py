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
from medgpt_oss.eval.generation import Generator, training_image_options
from medgpt_oss.eval.likelihood import pick_by_likelihood
from medgpt_oss.harmony import final_answer
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
    batched = generator.replies(samples)  # raw replies: a random model rarely writes a final channel
    one_by_one = [generator.replies([s])[0] for s in samples]
    assert batched == one_by_one
    assert all(isinstance(t, str) and t for t in batched)


def test_prompt_ends_where_the_official_template_ends_it(generator, tmp_path):
    (record,) = make_records(tmp_path, 1)
    ids = generator.prepare(record)["input_ids"].tolist()
    text = generator.tokenizer.decode(ids)
    assert text.startswith("<|start|>system<|message|>") and text.endswith("<|end|><|start|>assistant")


def script(vlm, tokenizer, texts):
    """Make the model write ``texts`` (token strings joined), one token per decoding step, then token 5 forever."""
    ids = tokenizer("".join(texts), add_special_tokens=False)["input_ids"]
    step = {"n": 0}

    def force(module, args, output):
        token = ids[step["n"]] if step["n"] < len(ids) else 5
        output[..., -1, token] += 1e4
        step["n"] += 1
        return output

    return vlm.llm.model.get_output_embeddings().register_forward_hook(force)


REPLIES = {
    # a final answer ends at its <|end|> (what earlier turns of a conversation end with) or <|return|>
    "final_end": (["<|channel|>final<|message|>", "Yes.", "<|end|>", "<|start|>user"], "Yes."),
    "final_return": (["<|channel|>final<|message|>", "No.", "<|return|>"], "No."),
    # an analysis message's <|end|> does not end the reply: the final answer after it is the answer
    "analysis_then_final": (["<|channel|>analysis<|message|>", "nodule", "<|end|>", "<|start|>assistant",
                             "<|channel|>final<|message|>", "B", "<|return|>"], "B"),
    # no final channel: unparseable, never read from the analysis
    "analysis_only": (["<|channel|>analysis<|message|>", "Yes", "<|end|>"], None),
    "no_channel": (["Yes", "<|end|>"], None),
}


@pytest.mark.parametrize("case", REPLIES)
def test_replies_end_and_are_read_as_harmony_says(vlm, tmp_path, case):
    texts, answer = REPLIES[case]
    generator = Generator(vlm, tmp_path, max_new_tokens=24)
    tok = generator.tokenizer
    handle = script(vlm, tok, texts)
    try:
        (reply,) = generator.replies([generator.prepare(make_records(tmp_path, 1)[0])])
    finally:
        handle.remove()
    written = "".join(texts)
    if answer is not None:  # stopped exactly where the reply ended
        stop = "<|end|>" if case == "final_end" else "<|return|>"
        assert reply == written[:written.rindex(stop) + len(stop)]
    else:  # ran on to max_new_tokens
        assert reply.startswith(written) and len(tok(reply, add_special_tokens=False)["input_ids"]) == 24
    assert final_answer(reply) == answer


def test_in_a_batch_each_row_stops_where_its_own_reply_ends(vlm, tmp_path):
    generator = Generator(vlm, tmp_path, max_new_tokens=24)
    tok = generator.tokenizer
    scripts = [tok("<|channel|>final<|message|>Yes.<|end|><|start|>user", add_special_tokens=False)["input_ids"],
               tok("<|channel|>analysis<|message|>nodule<|end|><|start|>assistant<|channel|>analysis",
                   add_special_tokens=False)["input_ids"]]
    step = {"n": 0}

    def force(module, args, output):  # row r writes scripts[r], then token 5
        for row, ids in enumerate(scripts):
            output[row, -1, ids[step["n"]] if step["n"] < len(ids) else 5] += 1e4
        step["n"] += 1
        return output

    handle = vlm.llm.model.get_output_embeddings().register_forward_hook(force)
    try:
        first, second = generator.replies([generator.prepare(r) for r in make_records(tmp_path, 2)])
    finally:
        handle.remove()
    assert first == "<|channel|>final<|message|>Yes.<|end|>"  # stopped at the end of its final message
    assert second.startswith("<|channel|>analysis<|message|>nodule<|end|><|start|>assistant")  # ran on
    assert final_answer(first) == "Yes." and final_answer(second) is None


def test_final_answer_reads_only_the_final_channel():
    assert final_answer("<|channel|>analysis<|message|>think<|end|><|start|>assistant"
                              "<|channel|>final<|message|>B<|return|>") == "B"
    assert final_answer("<|channel|>final<|message|> Yes. <|end|><|start|>user") == "Yes."
    assert final_answer("<|channel|>analysis<|message|>Yes.<|end|>") is None
    assert final_answer("No.<|endoftext|>") is None


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
