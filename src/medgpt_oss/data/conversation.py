"""Conversation (LLaVA record) -> harmony-format token ids and loss labels.

The layout is GPT-oss's harmony format exactly as the official chat template renders it
(:mod:`medgpt_oss.harmony` owns it): a system message with the chat settings, an optional
developer ``# Instructions`` message, user turns, and assistant turns whose channel header,
answer and ``<|end|>``/``<|return|>`` are supervised (so the model learns to choose the
``final`` channel itself); an assistant ``thinking`` on the last turn is its supervised
analysis message. Everything else is -100.

Each rendered segment is tokenized on its own and the ids are concatenated, so the label
mask is exact by construction; segments meet at special tokens, so the ids equal those of
tokenizing the whole rendered text (tested against the official renderings). Each
``<image>`` in a user turn becomes ``num_image_tokens`` copies of the image token id per
tile, which the model overwrites with projected patch embeddings. Anything that would make
the supervision wrong raises :class:`ConversationError` naming the record -- never a
silently masked sample (LLaVA's failure mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from medgpt_oss.data.jsonl import has_lone_surrogate
from medgpt_oss.harmony import (
    END,
    IMAGE_PLACEHOLDER,
    RETURN,
    ChatSettings,
    FormatError,
    Message,
    messages_from_turns,
    render,
)

IGNORE_INDEX = -100


class ConversationError(ValueError):
    """A record whose conversation cannot be turned into correct supervision."""

    def __init__(self, record_id: str, problem: str, fix: str = "") -> None:
        self.record_id = record_id
        self.problem = problem
        super().__init__(f"record '{record_id}': {problem}" + (f" -- fix: {fix}" if fix else ""))


@dataclass
class TokenizedConversation:
    input_ids: torch.Tensor  # [T] long
    labels: torch.Tensor  # [T] long, IGNORE_INDEX where not supervised
    num_images: int


class HarmonyFormatter:
    """Turns role-tagged turns into harmony token ids with a supervision mask.

    ``system_prompt``: instructions for conversations that bring none (rendered as the official
    template renders a leading system message: a developer ``# Instructions`` message).
    ``chat``: the system message's settings (date, reasoning effort, identity).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str,
        num_image_tokens: int,
        system_prompt: str | None = None,
        max_length: int | None = None,
        chat: ChatSettings | Mapping[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt or None
        self.max_length = max_length
        self.chat = ChatSettings.of(chat)
        self.image_token_id = self._special_id(image_token)
        for token in (END, RETURN):  # a tokenizer without harmony's control tokens cannot write the format
            self._special_id(token)
        # Control tokens in data would rewrite the conversation's structure (the format also refuses any <|...|>).
        self._forbidden = [t for t in tokenizer.all_special_tokens if t] + [image_token]
        self._encoded: dict[str, list[int]] = {}

    def _special_id(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no special token {token!r}; is it a harmony (GPT-oss) tokenizer?")
        return ids[0]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _encode_cached(self, text: str) -> list[int]:
        """The format's fixed pieces (system message, headers) recur in every sample: tokenized once. The cache
        is bounded, so record texts (answers, per-record instructions) cannot grow it without limit."""
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encode(text)
            if len(self._encoded) < 64:
                self._encoded[text] = ids
        return list(ids)

    def _user_content(self, text: str, tiles: Iterator[int]) -> list[int]:
        """User text with each <image> expanded to the image token run (one run per tile)."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                ids.extend([self.image_token_id] * (self.num_image_tokens * next(tiles)))
            ids.extend(self._encode(piece))
        return ids

    def messages(self, record_id: str, conversations: Sequence[dict]) -> list[Message]:
        """Validated :class:`~medgpt_oss.harmony.Message` s of a record's turns."""
        try:
            messages = messages_from_turns(conversations)
        except FormatError as exc:
            raise ConversationError(record_id, str(exc)) from None
        for i, message in enumerate(messages):
            if message.role == "assistant" and not message.content.strip():
                raise ConversationError(record_id, f"assistant turn {i} is empty", "drop the record or fill the answer")
            if has_lone_surrogate(message.content + (message.thinking or "")):
                raise ConversationError(record_id, f"turn {i} holds a lone surrogate (text that is not valid UTF-8)",
                                        "re-encode the source as UTF-8")
            for token in self._forbidden:
                if token in message.content + (message.thinking or ""):
                    raise ConversationError(record_id, f"turn {i} contains the special token {token!r}",
                                            "remove control tokens from the data")
        return messages

    def tokenize(
        self, record_id: str, conversations: Sequence[dict], num_images: int, for_generation: bool = False,
        tiles_per_image: Sequence[int] | None = None,
    ) -> TokenizedConversation:
        """Tokenize a whole conversation; with ``for_generation`` the prompt for its last answer.

        ``tiles_per_image[k]``: how many encoder inputs image ``k`` became (dynamic tiling, or a
        DICOM's frames); its ``<image>`` expands to that many image-token runs. Default: one each.
        """
        tiles = [1] * num_images if tiles_per_image is None else [int(n) for n in tiles_per_image]
        if len(tiles) != num_images or any(n < 1 for n in tiles):
            raise ValueError(f"record '{record_id}': tiles_per_image={tiles} does not give >= 1 tile for each of "
                             f"{num_images} images")
        messages = self.messages(record_id, conversations)
        in_user = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages if m.role == "user")
        elsewhere = any(IMAGE_PLACEHOLDER in m.content + (m.thinking or "") for m in messages if m.role != "user")
        if in_user != num_images or elsewhere:
            raise ConversationError(
                record_id,
                f"{in_user} '<image>' placeholders in the user turns but {num_images} images"
                + (" (and one outside the user turns)" if elsewhere else ""),
                "put exactly one <image> in a user turn per image",
            )
        if for_generation:
            if not messages or messages[-1].role != "assistant":
                raise ConversationError(record_id, "conversation does not end with an assistant turn",
                                        "add the answer (the prompt is everything before it)")
            messages = messages[:-1]
        try:
            segments = render(messages, self.chat, add_generation_prompt=for_generation,
                              instructions=self.system_prompt)
        except FormatError as exc:
            fix = "remove control tokens from the data" if "control token" in str(exc) else ""
            raise ConversationError(record_id, str(exc), fix) from None

        tile_counts = iter(tiles)
        ids: list[int] = []
        labels: list[int] = []
        for segment in segments:
            if segment.user_content:
                piece = self._user_content(segment.text, tile_counts)
            else:
                piece = self._encode_cached(segment.text)
            if segment.supervised and self.tokenizer.decode(piece) != segment.text:
                # A target the tokenizer cannot write back exactly would teach the model other text.
                raise ConversationError(record_id, f"an assistant turn does not survive tokenization: "
                                        f"{segment.text[:60]!r}", "the tokenizer cannot represent this text; "
                                        "check its encoding")
            ids += piece
            labels += piece if segment.supervised else [IGNORE_INDEX] * len(piece)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ConversationError(record_id, f"{len(ids)} tokens exceed max_length={self.max_length}",
                                    "raise data.max_length or shorten the sample")
        return TokenizedConversation(torch.tensor(ids), torch.tensor(labels), num_images)
