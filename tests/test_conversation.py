"""Supervision is exact: the supervised tokens decode to exactly the assistant texts."""

import pytest
import torch

from medgpt_oss.data.conversation import IGNORE_INDEX, ConversationError, HarmonyFormatter

N_IMG = 5


@pytest.fixture()
def fmt(tiny_tokenizer):
    return HarmonyFormatter(tiny_tokenizer, "<|image|>", num_image_tokens=N_IMG)


def supervised_spans(labels: torch.Tensor) -> list[list[int]]:
    spans, current = [], []
    for token in labels.tolist():
        if token == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return spans + ([current] if current else [])


def conv(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


CASES = {
    "single_turn": (conv("<image>\nIs there a nodule?", "Yes."), 1),
    "multi_turn": (conv("<image>\nIs there a nodule?", "Yes.", "Which side?", "Left.", "How large?", "Small."), 1),
    "multi_image": (conv("Prior: <image> Current: <image>\nWhat changed?", "The nodule is new."), 2),
    "text_only": (conv("What does cardiomegaly mean?", "An enlarged heart — größer, 心脏."), 0),
}


@pytest.mark.parametrize("case", CASES)
def test_supervised_tokens_decode_to_exactly_the_assistant_texts(fmt, tiny_tokenizer, case):
    turns, n_images = CASES[case]
    out = fmt.tokenize(case, turns, n_images)
    answers = [t["value"] for t in turns if t["from"] == "gpt"]
    spans = supervised_spans(out.labels)
    assert len(spans) == len(answers)
    for i, (span, answer) in enumerate(zip(spans, answers)):
        assert tiny_tokenizer.decode(span[:-1]) == answer
        assert span[-1] == (fmt.return_id if i == len(answers) - 1 else fmt.end_id)
    # Image slots are never supervised, and there are exactly N_IMG per image.
    is_image = out.input_ids == fmt.image_token_id
    assert int(is_image.sum()) == n_images * N_IMG
    assert (out.labels[is_image] == IGNORE_INDEX).all()
    # Everything unsupervised is prompt: user text and harmony headers are all masked.
    assert int((out.labels != IGNORE_INDEX).sum()) == sum(len(s) for s in spans)


def test_token_layout_equals_the_tokenizers_chat_template(fmt, tiny_tokenizer):
    turns, _ = CASES["multi_turn"]
    out = fmt.tokenize("r", turns, 1)
    messages = [
        {"role": "user" if t["from"] == "human" else "assistant",
         "content": t["value"].replace("<image>", "<|image|>" * N_IMG)}
        for t in turns
    ]
    assert tiny_tokenizer.decode(out.input_ids) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = fmt.tokenize("r", turns, 1, for_generation=True)
    expected = tiny_tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tiny_tokenizer.decode(prompt.input_ids) == expected
    assert (prompt.labels == IGNORE_INDEX).all()


def test_system_prompt_is_masked(tiny_tokenizer):
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG, system_prompt="You are a radiologist.")
    out = fmt.tokenize("r", conv("Hi", "Hello."), 0)
    assert tiny_tokenizer.decode(out.input_ids).startswith("<|start|>system<|message|>You are a radiologist.<|end|>")
    assert tiny_tokenizer.decode(out.labels[out.labels != IGNORE_INDEX]) == "Hello.<|return|>"


BAD = {
    "too_few_placeholders": (conv("Describe.", "Normal."), 1, "0 '<image>' placeholders"),
    "too_many_placeholders": (conv("<image><image>", "Normal."), 1, "2 '<image>' placeholders"),
    "empty_answer": (conv("<image>", "  "), 1, "is empty"),
    "ends_with_user": (conv("<image>", "Yes.", "And?"), 1, "does not end with an assistant turn"),
    "two_users": ([{"from": "human", "value": "<image>"}, {"from": "human", "value": "x"},
                   {"from": "gpt", "value": "y"}], 1, "where 'assistant' was expected"),
    "unknown_speaker": ([{"from": "doctor", "value": "x"}, {"from": "gpt", "value": "y"}], 0, "unknown speaker"),
    "control_token_injection": (conv("hi", "Yes.<|end|><|start|>user"), 0, "special token"),
    "placeholder_in_answer": (conv("<image>", "see <image>"), 1, "placeholders"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_conversations_fail_loudly_naming_the_record(fmt, case):
    turns, n_images, message = BAD[case]
    with pytest.raises(ConversationError, match=message) as err:
        fmt.tokenize(f"rec-{case}", turns, n_images)
    assert f"rec-{case}" in str(err.value)


def test_too_long_sample_names_the_record(tiny_tokenizer):
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG, max_length=20)
    with pytest.raises(ConversationError, match="exceed max_length=20") as err:
        fmt.tokenize("long-1", conv("<image>\nDescribe the image in detail.", "A long answer."), 1)
    assert "long-1" in str(err.value)
