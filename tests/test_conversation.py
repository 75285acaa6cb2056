"""Supervision is exact: the supervised tokens decode to exactly the assistant texts, and the
token layout is the official gpt-oss template's, token for token."""

import json
from pathlib import Path

import pytest
import torch

from medgpt_oss.data.conversation import IGNORE_INDEX, ConversationError, HarmonyFormatter
from medgpt_oss.harmony import FINAL_HEADER, ChatSettings, FormatError

N_IMG = 5
# Conversations and the exact text the official gpt-oss chat template renders for them (docs/chat_format.md).
REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "gpt_oss_harmony_reference.json").read_text())
REFERENCE_CASES = {case["name"]: case for case in REFERENCE["cases"]}


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
def test_supervised_tokens_decode_to_exactly_the_assistant_turns(fmt, tiny_tokenizer, case):
    turns, n_images = CASES[case]
    out = fmt.tokenize(case, turns, n_images)
    answers = [t["value"] for t in turns if t["from"] == "gpt"]
    spans = supervised_spans(out.labels)
    assert len(spans) == len(answers)
    for i, (span, answer) in enumerate(zip(spans, answers)):
        # The channel header is the model's to write too; the answer then ends with <|end|> or, last, <|return|>.
        end = "<|return|>" if i == len(answers) - 1 else "<|end|>"
        assert tiny_tokenizer.decode(span) == f"{FINAL_HEADER}{answer}{end}"
    # Image slots are never supervised, and there are exactly N_IMG per image.
    is_image = out.input_ids == fmt.image_token_id
    assert int(is_image.sum()) == n_images * N_IMG
    assert (out.labels[is_image] == IGNORE_INDEX).all()
    # Everything unsupervised is prompt: the system message, user text and <|start|>assistant are all masked.
    assert int((out.labels != IGNORE_INDEX).sum()) == sum(len(s) for s in spans)
    prompt = tiny_tokenizer.decode(out.input_ids[out.labels == IGNORE_INDEX])
    assert prompt.startswith("<|start|>system<|message|>") and "<|channel|>" not in prompt


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_renders_the_official_template_token_for_token(tiny_tokenizer, name):
    case = REFERENCE_CASES[name]
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG, chat={"date": REFERENCE["template_date"],
                                                                      **case["kwargs"]})
    for for_generation, key in ((False, "training_text"), (True, "generation_prompt_text")):
        out = fmt.tokenize(name, case["messages"], 0, for_generation=for_generation)
        expected = tiny_tokenizer(case[key], add_special_tokens=False)["input_ids"]
        assert out.input_ids.tolist() == expected
        assert tiny_tokenizer.decode(out.input_ids) == case[key]
    # The shipped tokenizer's own chat template (the official layout, text only) renders the same text.
    for add_generation_prompt, key in ((False, "training_text"), (True, "generation_prompt_text")):
        messages = case["messages"] if not add_generation_prompt else case["messages"][:-1]
        rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False, current_date=REFERENCE["template_date"],
                                                      add_generation_prompt=add_generation_prompt, **case["kwargs"])
        assert rendered == case[key]


def test_thinking_on_the_last_turn_is_supervised_as_the_analysis_channel(tiny_tokenizer):
    case = REFERENCE_CASES["reasoning_last_turn"]
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG)
    out = fmt.tokenize("r", case["messages"], 0)
    answer = case["messages"][-1]
    (span,) = supervised_spans(out.labels)
    assert tiny_tokenizer.decode(span) == (f"<|channel|>analysis<|message|>{answer['thinking']}<|end|>"
                                           f"<|start|>assistant{FINAL_HEADER}{answer['content']}<|return|>")
    # On an earlier turn the template drops it, so it is neither in the tokens nor supervised.
    earlier = REFERENCE_CASES["reasoning_earlier_turn_dropped"]
    out = fmt.tokenize("r", earlier["messages"], 0)
    assert earlier["messages"][1]["thinking"] not in tiny_tokenizer.decode(out.input_ids)


def test_system_and_developer_turns_become_developer_instructions(tiny_tokenizer):
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG)
    for role in ("system", "developer"):
        turns = [{"from": role, "value": "Answer concisely."}] + conv("Hi", "Hello.")
        text = tiny_tokenizer.decode(fmt.tokenize("r", turns, 0).input_ids)
        assert "<|start|>developer<|message|># Instructions\n\nAnswer concisely.\n\n<|end|><|start|>user" in text
    # A configured system prompt is used the same way when the record brings none.
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG, system_prompt="You are a radiologist.")
    out = fmt.tokenize("r", conv("Hi", "Hello."), 0)
    assert "<|start|>developer<|message|># Instructions\n\nYou are a radiologist.\n\n<|end|>" in \
        tiny_tokenizer.decode(out.input_ids)
    assert tiny_tokenizer.decode(out.labels[out.labels != IGNORE_INDEX]) == f"{FINAL_HEADER}Hello.<|return|>"


def test_chat_settings_are_config_and_checked(tiny_tokenizer):
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG,
                           chat={"date": "2030-01-02", "reasoning_effort": "high", "model_identity": "You are X."})
    text = tiny_tokenizer.decode(fmt.tokenize("r", conv("Hi", "Hello."), 0).input_ids)
    assert text.startswith("<|start|>system<|message|>You are X.\nKnowledge cutoff: 2024-06\nCurrent date: 2030-01-02"
                           "\n\nReasoning: high\n\n")
    with pytest.raises(FormatError, match="reasoning_effort"):
        ChatSettings.of({"reasoning_effort": "max"})
    with pytest.raises(FormatError, match="YYYY-MM-DD"):
        ChatSettings.of({"date": "today"})
    with pytest.raises(FormatError, match="unknown chat settings"):
        ChatSettings.of({"dates": "2025-06-28"})


BAD = {
    "too_few_placeholders": (conv("Describe.", "Normal."), 1, "0 '<image>' placeholders"),
    "too_many_placeholders": (conv("<image><image>", "Normal."), 1, "2 '<image>' placeholders"),
    "empty_answer": (conv("<image>", "  "), 1, "is empty"),
    "ends_with_user": (conv("<image>", "Yes.", "And?"), 1, "does not end with an assistant turn"),
    "two_users": ([{"from": "human", "value": "<image>"}, {"from": "human", "value": "x"},
                   {"from": "gpt", "value": "y"}], 1, "where 'assistant' was expected"),
    "unknown_speaker": ([{"from": "doctor", "value": "x"}, {"from": "gpt", "value": "y"}], 0, "unknown speaker"),
    "control_token_injection": (conv("hi", "Yes.<|end|><|start|>user"), 0, "special token"),
    "reserved_token_injection": (conv("hi <|reserved_200013|>", "Yes."), 0, "special token"),
    "lone_surrogate": (conv("is there a \ud800 nodule?", "Yes."), 0, "lone surrogate"),
    "thinking_on_a_user_turn": ([{"from": "human", "value": "x", "thinking": "y"}, {"from": "gpt", "value": "z"}], 0,
                                "'thinking' must be a string on an assistant turn"),
    "placeholder_in_thinking": ([{"from": "human", "value": "<image>"},
                                 {"from": "gpt", "value": "z", "thinking": "<image>"}], 1, "outside the user turns"),
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


EDGE_CASES = {
    # the official template writes no developer message when the leading instructions are empty ...
    "empty_instructions": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}],
    # ... and an empty analysis message for an empty thinking on the last turn
    "empty_thinking": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello.", "thinking": ""}],
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_the_formatter_and_the_exported_template_agree_on_edge_cases(tiny_tokenizer, name):
    from medgpt_oss.harmony import chat_template

    messages = EDGE_CASES[name]
    fmt = HarmonyFormatter(tiny_tokenizer, "<|image|>", N_IMG)
    ours = tiny_tokenizer.decode(fmt.tokenize(name, messages, 0).input_ids)
    tiny_tokenizer_copy = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    rendered = tiny_tokenizer_copy.apply_chat_template(messages, tokenize=False,
                                                       chat_template=chat_template(ChatSettings(), "<|image|>"))
    assert ours == rendered
    if name == "empty_instructions":
        assert "developer" not in ours
    else:
        assert ours.endswith("<|start|>assistant<|channel|>analysis<|message|><|end|>"
                             "<|start|>assistant<|channel|>final<|message|>Hello.<|return|>")
