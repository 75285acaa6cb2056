"""Conversation (LLaVA record) -> harmony-format token ids and loss labels.

Layout of one sample (harmony chat format, as GPT-oss was trained on it)::

    [<|start|>system<|message|>{system}<|end|>]
    <|start|>user<|message|>{text with <image> placeholders}<|end|>
    <|start|>assistant<|channel|>final<|message|>{answer}<|end|>      <- answer + <|end|> supervised
    ...
    <|start|>assistant<|channel|>final<|message|>{answer}<|return|>   <- last one ends with <|return|>

Each piece is tokenized on its own and the ids are concatenated, so the label
mask is exact by construction: every assistant answer (and its end token) is
supervised, everything else is -100. Each ``<image>`` becomes
``num_image_tokens`` copies of the image token id, which the model overwrites
with projected patch embeddings. Anything that would make the supervision
wrong raises :class:`ConversationError` naming the record -- never a silently
masked sample (LLaVA's failure mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


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
    """Turns role-tagged turns into harmony token ids with a supervision mask."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str,
        num_image_tokens: int,
        system_prompt: str | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.image_token_id = self._special_id(image_token)
        self.end_id = self._special_id("<|end|>")
        self.return_id = self._special_id("<|return|>")
        self._forbidden = [t for t in tokenizer.all_special_tokens if t] + [image_token]

    def _special_id(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no special token {token!r}; is it a harmony (GPT-oss) tokenizer?")
        return ids[0]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _header(self, role: str) -> list[int]:
        if role == "assistant":
            return self._encode("<|start|>assistant<|channel|>final<|message|>")
        return self._encode(f"<|start|>{role}<|message|>")

    def _content(self, record_id: str, text: str, tiles: Iterator[int]) -> list[int]:
        """User/system text with each <image> expanded to the image token run (one run per tile)."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                ids.extend([self.image_token_id] * (self.num_image_tokens * next(tiles)))
            ids.extend(self._encode(piece))
        return ids

    def _check_text(self, record_id: str, text: str) -> None:
        for token in self._forbidden:
            if token in text:
                raise ConversationError(
                    record_id, f"text contains the special token {token!r}", "remove control tokens from the data"
                )

    def normalise_turns(self, record_id: str, conversations: Sequence[dict]) -> list[tuple[str, str]]:
        """LLaVA ``{"from", "value"}`` turns -> validated ``(role, text)`` pairs."""
        turns: list[tuple[str, str]] = []
        for i, turn in enumerate(conversations):
            speaker = turn.get("from", turn.get("role"))
            text = turn.get("value", turn.get("content"))
            if speaker not in ROLES:
                raise ConversationError(record_id, f"turn {i} has unknown speaker {speaker!r}", f"use one of {sorted(ROLES)}")
            if not isinstance(text, str):
                raise ConversationError(record_id, f"turn {i} has no text", "give every turn a string 'value'")
            turns.append((ROLES[speaker], text))
        if turns and turns[0][0] == "system":
            body = turns[1:]
        else:
            body = turns
        if not body or body[-1][0] != "assistant":
            raise ConversationError(record_id, "conversation does not end with an assistant turn", "add the answer")
        for i, (role, text) in enumerate(body):
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ConversationError(record_id, f"turn {i} is '{role}' where '{expected}' was expected",
                                        "alternate human/gpt turns, starting with human")
            if role == "assistant" and not text.strip():
                raise ConversationError(record_id, f"assistant turn {i} is empty", "drop the record or fill the answer")
        return turns

    def tokenize(
        self, record_id: str, conversations: Sequence[dict], num_images: int, for_generation: bool = False,
        tiles_per_image: Sequence[int] | None = None,
    ) -> TokenizedConversation:
        """Tokenize a whole conversation; with ``for_generation`` stop before the last answer.

        ``tiles_per_image[k]``: how many encoder inputs image ``k`` became (dynamic tiling, or a
        DICOM's frames); its ``<image>`` expands to that many image-token runs. Default: one each.
        """
        tiles = [1] * num_images if tiles_per_image is None else [int(n) for n in tiles_per_image]
        if len(tiles) != num_images or any(n < 1 for n in tiles):
            raise ValueError(f"record '{record_id}': tiles_per_image={tiles} does not give >= 1 tile for each of "
                             f"{num_images} images")
        tile_counts = iter(tiles)
        turns = self.normalise_turns(record_id, conversations)
        placeholders = sum(text.count(IMAGE_PLACEHOLDER) for role, text in turns if role != "assistant")
        if placeholders != num_images or any(IMAGE_PLACEHOLDER in t for r, t in turns if r == "assistant"):
            raise ConversationError(
                record_id,
                f"{placeholders} '<image>' placeholders in the user turns but {num_images} images",
                "put exactly one <image> in a user turn per image",
            )
        if self.system_prompt and turns[0][0] != "system":
            turns = [("system", self.system_prompt)] + turns
        if for_generation:
            turns = turns[:-1]

        ids: list[int] = []
        labels: list[int] = []
        # The final answer of a training sample ends with <|return|>; answers in the history end with <|end|>.
        last_assistant = -1 if for_generation else len(turns) - 1
        for i, (role, text) in enumerate(turns):
            self._check_text(record_id, text)
            header = self._header(role)
            ids += header
            labels += [IGNORE_INDEX] * len(header)
            if role == "assistant":
                answer = self._encode(text)
                if self.tokenizer.decode(answer) != text:
                    raise ConversationError(record_id, f"assistant turn {i} does not survive tokenization: {text[:60]!r}",
                                            "the tokenizer cannot represent this text; check its encoding")
                answer.append(self.return_id if i == last_assistant else self.end_id)
                ids += answer
                labels += answer
            else:
                content = self._content(record_id, text, tile_counts) + [self.end_id]
                ids += content
                labels += [IGNORE_INDEX] * len(content)
        if for_generation:  # a prompt: nothing in it is a training target
            ids += self._header("assistant")
            labels = [IGNORE_INDEX] * len(ids)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ConversationError(record_id, f"{len(ids)} tokens exceed max_length={self.max_length}",
                                    "raise data.max_length or shorten the sample")
        return TokenizedConversation(torch.tensor(ids), torch.tensor(labels), num_images)
