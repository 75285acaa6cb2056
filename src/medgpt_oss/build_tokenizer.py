"""Rebuild the tiny harmony tokenizer asset: ``python -m medgpt_oss.build_tokenizer``.

A tool over both layers (it trains the tokenizer of ``models/tokenizer.py`` on MedSynth text from
``data/medsynth/``), so it lives at the top level: models import nothing from data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medgpt_oss.harmony import ChatSettings, developer_message, system_message
from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR, build_tiny_harmony_tokenizer


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: a small MedSynth set plus clinical prose."""
    import json
    import tempfile

    from medgpt_oss.data.medsynth.generate import generate_medsynth

    # The format's fixed text, as often as every sample carries it (special tokens are split off before
    # BPE, so train on the words between them): the system message then costs a few tokens, not 70.
    fixed = [piece for text in (system_message(ChatSettings()), developer_message(_CLINICAL_PROSE[0]))
             for piece in text.replace("<|", "\0").replace("|>", "\0").split("\0") if piece]
    texts = list(_CLINICAL_PROSE)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_medsynth(tmp, seed=seed, n_train=300, n_val=0, n_test=0)
        for line in (Path(root) / "train.jsonl").read_text().splitlines():
            record = json.loads(line)
            texts.extend(turn["value"].replace("<image>", "") for turn in record["conversations"])
            texts.extend(fixed)
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
    parser.add_argument("--vocab-size", type=int, default=1000, help="ordinary tokens (special tokens come after)")
    args = parser.parse_args()
    tok = build_tiny_harmony_tokenizer(tokenizer_corpus(), vocab_size=args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"wrote {len(tok)} tokens to {args.out}")


if __name__ == "__main__":
    main()
