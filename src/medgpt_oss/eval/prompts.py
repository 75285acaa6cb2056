"""EvalItem -> prompt text -> LLaVA-style record, so the training SampleProcessor builds the input.

Templates live in config (``prompts:`` in conf/eval.yaml, overridable per
benchmark) and are written to the run folder with the results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medgpt_oss.eval.benchmarks.base import EvalItem
from medgpt_oss.harmony import IMAGE_PLACEHOLDER  # the format module imports neither torch nor transformers

DEFAULT_PROMPTS = {
    "closed": "{question}\nAnswer with {choices}.",
    "open": "{question}\nAnswer with a single word or phrase.",
    "mcq": "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "report": "{question}",
    "option_line": "{letter}. {text}",
}


def _choices_text(choices: tuple[str, ...]) -> str:
    return " or ".join(choices) if len(choices) <= 2 else ", ".join(choices[:-1]) + " or " + choices[-1]


def build_prompt(item: EvalItem, templates: Mapping[str, str] | None = None) -> str:
    """The user turn for ``item``: the kind's template, with one ``<image>`` per image up front
    unless the question already places its images."""
    t = {**DEFAULT_PROMPTS, **(templates or {})}
    options = "\n".join(t["option_line"].format(letter=k, text=v) for k, v in (item.options or {}).items())
    text = t[item.kind].format(question=item.question, choices=_choices_text(item.choices), options=options)
    if IMAGE_PLACEHOLDER not in text:
        text = f"{IMAGE_PLACEHOLDER}\n" * len(item.images) + text
    return text


def to_record(item: EvalItem, prompt: str, answer: str | None = None) -> dict[str, Any]:
    """LLaVA-style record; the answer turn is a stand-in ('-') unless scoring a given answer."""
    return {
        "id": item.id,
        "image": list(item.images),
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer or "-"}],
    }
