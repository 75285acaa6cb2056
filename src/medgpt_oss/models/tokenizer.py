"""The tiny harmony tokenizer: a small byte-level BPE shaped like GPT-oss's o200k_harmony.

Shaped like the real one where it matters: ordinary tokens first, then harmony's special
tokens in o200k_harmony's order (reserved ones included) as the last ids, eos ``<|return|>``,
pad ``<|endoftext|>``, bos ``<|startoftext|>``, and the official chat template's layout; the
tiny GPT-oss config has more embedding rows than tokens (``llm.tiny.vocab_size``), as the real
model has 201,088 rows for 200,019 tokens. The image token is not in it: the model adds it at
load time, into a spare row, exactly as it does to the real tokenizer. Saved as an ordinary
``PreTrainedTokenizerFast`` folder, so it loads through ``AutoTokenizer`` like the real one;
byte-level, so any UTF-8 text round-trips exactly.

Rebuild the shipped asset with ``python -m medgpt_oss.build_tokenizer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from medgpt_oss.harmony import (
    END_OF_TEXT,
    IMAGE_TOKEN,
    RETURN,
    SPECIAL_TOKENS,
    START_OF_TEXT,
    ChatSettings,
    add_format_tokens,
    chat_template,
)

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_harmony_tokenizer"


def load_tokenizer(path: str | Path | None = None, image_token: str = IMAGE_TOKEN) -> PreTrainedTokenizerFast:
    """A tokenizer folder (default: the tiny one) with the image token added as the model adds it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path or TINY_TOKENIZER_DIR)
    add_format_tokens(tokenizer, image_token)
    return tokenizer


def build_tiny_harmony_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` ordinary tokens on ``texts``; harmony's special tokens follow."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False)
    # Added after training, so they take the last ids in o200k_harmony's order, as in GPT-oss's tokenizer.
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)}, replace_extra_special_tokens=False)
    tok.bos_token, tok.eos_token, tok.pad_token = START_OF_TEXT, RETURN, END_OF_TEXT
    tok.chat_template = chat_template(ChatSettings())  # the official layout; text only, like the real one
    return tok
