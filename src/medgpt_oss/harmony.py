"""GPT-oss's harmony chat format, as the official gpt-oss chat template renders it.

The one definition of the format in this project: training samples, generation prompts,
the tiny tokenizer's special tokens, the exported chat templates and the parsing of replies
all come from here (``docs/chat_format.md`` shows the rendered text). What the official
template writes for a conversation without tools::

    <|start|>system<|message|>{identity}\\nKnowledge cutoff: 2024-06\\nCurrent date: {date}\\n\\n
        Reasoning: {effort}\\n\\n# Valid channels: analysis, commentary, final. Channel must be
        included for every message.<|end|>
    [<|start|>developer<|message|># Instructions\\n\\n{leading system/developer text}\\n\\n<|end|>]
    <|start|>user<|message|>{text}<|end|>
    <|start|>assistant<|channel|>final<|message|>{answer}<|end|>             earlier answers
    [<|start|>assistant<|channel|>analysis<|message|>{thinking}<|end|>]      last answer only
    <|start|>assistant<|channel|>final<|message|>{answer}<|return|>          last answer

and a generation prompt ends at ``<|start|>assistant``: the model writes the channel itself.
So the supervised part of every assistant turn starts at its ``<|channel|>``; the
``<|start|>assistant`` before it is prompt. This module knows nothing of models or data
sets: it turns ``Message`` lists into text :class:`Segment` s and writes the same layout as
a Jinja chat template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
RETURN, CALL = "<|return|>", "<|call|>"
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"

# o200k_harmony's special tokens in id order: GPT-oss's tokenizer has them at ids 199,998-200,018
# (after 199,998 ordinary tokens), "reserved" ones included, and 201,088 embedding rows -- so the
# rows from 200,019 up are spare. The tiny tokenizer has the same tokens in the same order.
SPECIAL_TOKENS = (
    START_OF_TEXT, END_OF_TEXT, "<|reserved_200000|>", "<|reserved_200001|>", RETURN, "<|constrain|>",
    "<|reserved_200004|>", CHANNEL, START, END, MESSAGE, "<|reserved_200009|>", "<|reserved_200010|>",
    "<|reserved_200011|>", CALL, "<|reserved_200013|>", "<|reserved_200014|>", "<|reserved_200015|>",
    "<|reserved_200016|>", "<|reserved_200017|>", "<|endofprompt|>",
)
# The control tokens the format writes; a tokenizer without them cannot speak harmony.
CONTROL_TOKENS = (START, END, MESSAGE, CHANNEL, RETURN, CALL)
IMAGE_TOKEN = "<|image|>"  # our image sentinel: an added special token, placed in a spare embedding row
IMAGE_PLACEHOLDER = "<image>"  # how records mark where an image goes (LLaVA's convention)

# Generation ends at these: the end of a final answer (<|return|>) or a tool call. <|end|> closes any
# message, the analysis channel's too, so it ends a reply only after a final-channel header.
STOP_TOKENS = (RETURN, CALL, END_OF_TEXT)
FINAL_HEADER = f"{CHANNEL}final{MESSAGE}"
ANALYSIS_HEADER = f"{CHANNEL}analysis{MESSAGE}"

DEFAULT_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")
VALID_CHANNELS_LINE = "# Valid channels: analysis, commentary, final. Channel must be included for every message."

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system", "developer": "developer"}


class FormatError(ValueError):
    """A conversation the format cannot render as asked (the message says what to change)."""


@dataclass(frozen=True)
class ChatSettings:
    """The system message's variables. Fixed by config, so a run's tokens never depend on the day it ran.

    ``date`` is the template's ``Current date:`` line (the official template writes today's date).
    """

    date: str = "2025-06-28"
    reasoning_effort: str = "medium"
    model_identity: str = DEFAULT_IDENTITY
    knowledge_cutoff: str = KNOWLEDGE_CUTOFF

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(self.date)):
            raise FormatError(f"chat.date={self.date!r} is not a YYYY-MM-DD date")
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise FormatError(f"chat.reasoning_effort={self.reasoning_effort!r}; use one of {REASONING_EFFORTS}")
        for field in ("model_identity", "knowledge_cutoff"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise FormatError(f"chat.{field} must be a non-empty string, got {value!r}")
            check_no_special_tokens(value, f"chat.{field}")

    @classmethod
    def of(cls, value: ChatSettings | Mapping[str, Any] | None) -> ChatSettings:
        """From a config mapping (unknown keys refused, naming them), or the defaults for ``None``."""
        if isinstance(value, ChatSettings):
            return value
        value = dict(value or {})
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise FormatError(f"unknown chat settings {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**{k: str(v) for k, v in value.items() if v is not None})

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    role: str  # system | developer | user | assistant
    content: str
    thinking: str | None = None  # an assistant's analysis channel (rendered on the last assistant turn only)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text. ``supervised``: a training target. ``user_content``: user text, whose
    ``<image>`` placeholders the tokenizing side expands into image-token runs."""

    text: str
    supervised: bool = False
    user_content: bool = False


_SPECIAL_PATTERN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def check_no_special_tokens(text: str, where: str) -> None:
    """Control tokens inside content would let data rewrite the conversation's structure."""
    found = _SPECIAL_PATTERN.search(text)
    if found:
        raise FormatError(f"{where} contains the control token {found.group(0)!r}; remove control tokens from it")


def system_message(settings: ChatSettings) -> str:
    return (f"{START}system{MESSAGE}{settings.model_identity}\nKnowledge cutoff: {settings.knowledge_cutoff}\n"
            f"Current date: {settings.date}\n\nReasoning: {settings.reasoning_effort}\n\n{VALID_CHANNELS_LINE}{END}")


def developer_message(instructions: str) -> str:
    return f"{START}developer{MESSAGE}# Instructions\n\n{instructions}\n\n{END}"


def messages_from_turns(turns: Sequence[Mapping[str, Any]]) -> list[Message]:
    """LLaVA ``{"from", "value"}`` or chat ``{"role", "content"}`` turns -> :class:`Message` s.

    Only structure is checked here (speakers, string texts); the order of turns is checked by
    :func:`render`. An assistant turn may carry ``thinking`` (its analysis channel).
    """
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise FormatError(f"turn {i} is {type(turn).__name__}, not an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLES:
            raise FormatError(f"turn {i} has unknown speaker {speaker!r}; use one of {sorted(ROLES)}")
        if not isinstance(text, str):
            raise FormatError(f"turn {i} has no text; give every turn a string 'value'")
        thinking = turn.get("thinking")
        if thinking is not None and (ROLES[speaker] != "assistant" or not isinstance(thinking, str)):
            raise FormatError(f"turn {i}: 'thinking' must be a string on an assistant turn")
        messages.append(Message(ROLES[speaker], text, thinking))
    return messages


def check_order(messages: Sequence[Message]) -> None:
    """An optional leading system/developer message, then user/assistant turns, ending with an answer."""
    body = messages[1:] if messages and messages[0].role in ("system", "developer") else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise FormatError(f"turn {i} is '{message.role}' where '{expected}' was expected; alternate user and "
                              "assistant turns, starting with the user (one system/developer turn may lead)")


def render(messages: Sequence[Message], settings: ChatSettings, add_generation_prompt: bool = False,
           instructions: str | None = None) -> list[Segment]:
    """The conversation as the official template writes it, in :class:`Segment` s.

    Training (``add_generation_prompt=False``): the conversation must end with an assistant turn,
    rendered with ``<|return|>`` (its ``thinking``, if any, as an analysis message before it).
    Generation: the messages end with a user turn and the text ends at ``<|start|>assistant``.
    ``instructions`` is used when the conversation has no leading system/developer message.
    """
    check_order(messages)
    if messages and messages[0].role in ("system", "developer"):
        instructions, messages = messages[0].content, messages[1:]
    segments = [Segment(system_message(settings))]
    if instructions:  # the template writes no developer message for empty instructions
        check_no_special_tokens(instructions, "the system/developer instructions")
        segments.append(Segment(developer_message(instructions)))
    last = len(messages) - 1
    if add_generation_prompt:
        if messages and messages[-1].role != "user":
            raise FormatError("a generation prompt needs the conversation to end with a user turn")
    elif not messages or messages[-1].role != "assistant":
        raise FormatError("conversation does not end with an assistant turn; add the answer")
    for i, message in enumerate(messages):
        check_no_special_tokens(message.content, f"turn {i}")
        if message.role == "user":
            segments += [Segment(f"{START}user{MESSAGE}"), Segment(message.content, user_content=True), Segment(END)]
            continue
        segments.append(Segment(f"{START}assistant"))  # the generation prompt ends here: the rest is the model's
        if i == last and message.thinking is not None:  # an empty thinking is an empty analysis message
            check_no_special_tokens(message.thinking, f"turn {i} thinking")
            segments.append(Segment(f"{ANALYSIS_HEADER}{message.thinking}{END}{START}assistant", supervised=True))
        segments += [Segment(FINAL_HEADER, supervised=True), Segment(message.content, supervised=True),
                     Segment(RETURN if i == last else END, supervised=True)]
    if add_generation_prompt:
        segments.append(Segment(f"{START}assistant"))
    return segments


def render_text(messages: Sequence[Message], settings: ChatSettings, add_generation_prompt: bool = False,
                instructions: str | None = None) -> str:
    return "".join(s.text for s in render(messages, settings, add_generation_prompt, instructions))


# -- the same layout as a Jinja chat template (tokenizer/processor chat_template) ---------------------


def _jinja_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def chat_template(settings: ChatSettings, image_text: str | None = None) -> str:
    """A Jinja chat template that renders exactly what :func:`render` does.

    ``image_text``: what each image becomes -- a ``{"type": "image"}`` content part, or an
    ``<image>`` placeholder in a string -- e.g. one image token (a processor expands it) or a run
    of them (a bare tokenizer). ``None``: images are refused. The system message's variables
    default to ``settings`` (those the model trained with); ``reasoning_effort``,
    ``model_identity`` and ``current_date`` may be passed to ``apply_chat_template``.
    """
    image = _jinja_string(image_text) if image_text is not None else None
    if image is not None:
        content = (
            "{%- macro content(c) -%}"
            "{%- if c is string -%}{{- c | replace(" + _jinja_string(IMAGE_PLACEHOLDER) + ", " + image + ") -}}"
            "{%- else -%}{%- for part in c -%}"
            "{%- if part['type'] == 'image' -%}{{- " + image + " -}}"
            "{%- elif part['type'] == 'text' -%}{{- part['text'] | replace(" + _jinja_string(IMAGE_PLACEHOLDER)
            + ", " + image + ") -}}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}"
            "{%- endmacro -%}"
        )
    else:
        content = (
            "{%- macro content(c) -%}"
            "{%- if c is string -%}{{- c -}}"
            "{%- else -%}{%- for part in c -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
            "{%- else -%}{{- raise_exception('this model reads text only') -}}{%- endif -%}{%- endfor -%}"
            "{%- endif -%}"
            "{%- endmacro -%}"
        )
    s = lambda text: "{{- " + _jinja_string(text) + " -}}"  # noqa: E731  a literal piece of the output
    return "".join([
        content,
        "{%- if reasoning_effort is not defined -%}{%- set reasoning_effort = "
        + _jinja_string(settings.reasoning_effort) + " -%}{%- endif -%}",
        "{%- if model_identity is not defined -%}{%- set model_identity = "
        + _jinja_string(settings.model_identity) + " -%}{%- endif -%}",
        "{%- if current_date is not defined -%}{%- set current_date = "
        + _jinja_string(settings.date) + " -%}{%- endif -%}",
        s(f"{START}system{MESSAGE}"), "{{- model_identity -}}",
        s(f"\nKnowledge cutoff: {settings.knowledge_cutoff}\nCurrent date: "), "{{- current_date -}}",
        s("\n\nReasoning: "), "{{- reasoning_effort -}}", s(f"\n\n{VALID_CHANNELS_LINE}{END}"),
        "{%- set ns = namespace(first=0) -%}",
        "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}",
        "{%- set ns.first = 1 -%}",
        "{%- if messages[0]['content'] -%}",
        s(f"{START}developer{MESSAGE}# Instructions\n\n"), "{{- content(messages[0]['content']) -}}",
        s(f"\n\n{END}"),
        "{%- endif -%}",
        "{%- endif -%}",
        "{%- set last = messages | length - 1 -%}",
        "{%- for message in messages[ns.first:] -%}",
        "{%- set i = loop.index0 + ns.first -%}",
        "{%- if message['role'] == 'user' -%}",
        s(f"{START}user{MESSAGE}"), "{{- content(message['content']) -}}", s(END),
        "{%- elif message['role'] == 'assistant' -%}",
        "{%- if i == last and not add_generation_prompt and message.get('thinking') is string -%}",
        s(f"{START}assistant{ANALYSIS_HEADER}"), "{{- message['thinking'] -}}", s(END),
        "{%- endif -%}",
        s(f"{START}assistant{FINAL_HEADER}"), "{{- content(message['content']) -}}",
        "{%- if i == last and not add_generation_prompt -%}", s(RETURN), "{%- else -%}", s(END), "{%- endif -%}",
        "{%- else -%}{{- raise_exception('unknown role ' + message['role'] + '; use system, developer, user, "
        "assistant') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}", s(f"{START}assistant"), "{%- endif -%}",
    ])


# -- reading replies ---------------------------------------------------------------------------------


def final_answer(text: str) -> str | None:
    """The final channel's text of a decoded reply (special tokens kept), or ``None`` when the reply
    has no final channel -- an unparseable answer, never read from the analysis channel."""
    if FINAL_HEADER not in text:
        return None
    answer = text.split(FINAL_HEADER, 1)[1]
    for stop in (END, RETURN, CALL, END_OF_TEXT, START):
        answer = answer.split(stop, 1)[0]
    return answer.strip()



# -- tokenizers ----------------------------------------------------------------------------------------


def add_format_tokens(tokenizer: Any, image_token: str = IMAGE_TOKEN) -> list[str]:
    """Give a tokenizer the tokens the format and the images need; returns those it lacked.

    GPT-oss's tokenizer has every control token and lacks only the image token, which lands at
    id ``len(tokenizer)`` -- a spare embedding row of the real model, so nothing is resized.
    Other tokenizers (Qwen, ...) get the control tokens too. An unset ``pad_token`` falls back
    to the tokenizer's eos token.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in (*CONTROL_TOKENS, image_token) if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return missing


def answer_in(output: str) -> str | None:
    """The answer in an output produced elsewhere: plain text as it is; raw harmony (channel markup from a
    server that returned the whole reply) reduced to its final channel, ``None`` when it has none."""
    if any(token in output for token in (START, CHANNEL, MESSAGE)):
        return final_answer(output)
    return output
