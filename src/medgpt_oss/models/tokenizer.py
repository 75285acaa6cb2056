"""The tiny harmony tokenizer: a small byte-level BPE with GPT-oss's special tokens.

GPT-oss speaks the harmony chat format (o200k_harmony vocabulary). At tiny scale
we ship a ~1k-token byte-level BPE trained on MedSynth text that has the same
special tokens and the same chat template, saved as an ordinary
``PreTrainedTokenizerFast`` folder, so it loads through ``AutoTokenizer`` exactly
like the real one. Byte-level means any UTF-8 text round-trips exactly.

Rebuild the shipped asset with ``python -m medgpt_oss.models.tokenizer``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_harmony_tokenizer"

# Harmony's special tokens (as in openai/gpt-oss-20b's tokenizer), plus the image sentinel.
HARMONY_SPECIAL_TOKENS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
    "<|endofprompt|>",
]
IMAGE_TOKEN = "<|image|>"

# A harmony chat template: system/user turns as <|start|>role<|message|>…<|end|>,
# assistant answers in the final channel; the last assistant turn of a training
# conversation ends with <|return|>. Mirrors medgpt_oss.data.conversation exactly.
HARMONY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ message['content'] }}"
    "{%- if loop.last -%}<|return|>{%- else -%}<|end|>{%- endif -%}"
    "{%- else -%}"
    "<|start|>{{ message['role'] }}<|message|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant<|channel|>final<|message|>{%- endif -%}"
)


def build_tiny_harmony_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with harmony's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = HARMONY_SPECIAL_TOKENS + [IMAGE_TOKEN]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special if t not in ("<|startoftext|>", "<|return|>", "<|endoftext|>")],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = HARMONY_CHAT_TEMPLATE
    return tok


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: a small MedSynth set plus clinical prose."""
    import json
    import tempfile

    from medgpt_oss.data.synthetic import generate_medsynth

    texts = list(_CLINICAL_PROSE)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_medsynth(tmp, seed=seed, n_train=300, n_val=0, n_test=0)
        for line in (Path(root) / "train.jsonl").read_text().splitlines():
            record = json.loads(line)
            texts.extend(turn["value"].replace("<image>", "") for turn in record["conversations"])
    return texts


_CLINICAL_PROSE = [
    "You are a careful medical assistant. Answer concisely.",
    "The patient is a 54-year-old man with a cough and fever for three days.",
    "Findings: The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal.",
    "Impression: No acute cardiopulmonary process.",
    "Which of the following is the most likely diagnosis? A. Pneumonia B. Asthma C. Heart failure D. Sarcoidosis",
    "The answer is B.",
    "Compared with the prior study, the nodule has increased in size.",
    "Axial CT of the abdomen shows a hypodense lesion in the liver.",
    "MRI of the brain shows a mass in the right hemisphere.",
    "Histopathology shows dense, irregular nuclei consistent with tumor.",
    "Frontal and lateral views of the chest were obtained.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_DIR)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    tok = build_tiny_harmony_tokenizer(tokenizer_corpus(), vocab_size=args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"wrote {len(tok)} tokens to {args.out}")


if __name__ == "__main__":
    main()
