"""Text-only clinical QA: MedQA (USMLE, 4 options), MedMCQA, MMLU-Med, Medbullets, PubMedQA.

MedMCQA and MedXpertQA's converted files put the options inside the question
("...\\nAnswer Choices: (A) x (B) y"); :func:`split_answer_choices` takes them
back out so every multiple-choice prompt is laid out by the same template.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Any

from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem

LETTERS = "ABCDEFGHIJ"
_CHOICES = re.compile(r"\n?\s*Answer Choices:\s*(?P<choices>\(A\).*)$", re.DOTALL)
_ONE_CHOICE = re.compile(r"\(([A-J])\)\s*(.*?)(?=\s*\([A-J]\)\s|\s*$)", re.DOTALL)


def split_answer_choices(question: str) -> tuple[str, dict[str, str]]:
    """"Stem\\nAnswer Choices: (A) x (B) y" -> ("Stem", {"A": "x", "B": "y"})."""
    m = _CHOICES.search(question)
    if not m:
        return question.strip(), {}
    options = {k: v.strip() for k, v in _ONE_CHOICE.findall(m.group("choices"))}
    return question[:m.start()].strip(), options


def mcq_item(item_id: str, question: str, options: dict[str, str], gold: str, **kw: Any) -> EvalItem | MalformedItem:
    gold = str(gold).strip().upper()
    if len(options) < 2:
        return MalformedItem(item_id, f"needs at least two options, got {options!r}")
    if gold not in options:
        return MalformedItem(item_id, f"gold answer {gold!r} is not one of the options {sorted(options)}")
    return EvalItem(item_id, "mcq", question.strip(), gold, options=options, **kw)


class MedQA(Benchmark):
    layout = """phrases_no_exclude_test.jsonl    US 4-option test set (1,273 questions), JSONL of
                                 {question, options {A..D}, answer, answer_idx, meta_info, metamap_phrases}
                                 (the release keeps it at data_clean/questions/US/4_options/; that path works too)"""
    origin = "https://github.com/jind11/MedQA (data_clean.zip linked from its README)"
    files = ("phrases_no_exclude_test.jsonl", "data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl",
             "questions/US/4_options/phrases_no_exclude_test.jsonl", "US/4_options/phrases_no_exclude_test.jsonl")

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        for entry in self.read_jsonl(self.require(*self.files), "medqa-"):
            if isinstance(entry, MalformedItem):
                yield entry
                continue
            item_id, rec = entry
            try:
                yield mcq_item(item_id, rec["question"], dict(rec["options"]), rec["answer_idx"],
                               groups={"step": str(rec.get("meta_info", ""))})
            except (KeyError, TypeError, ValueError) as exc:
                yield MalformedItem(item_id, f"missing or bad field {exc}")


class MedMCQA(Benchmark):
    layout = """dev.json                     the official dev split (4,183 questions), JSONL of
                             {id, question, opa, opb, opc, opd, cop, subject_name, topic_name, ...}
                             cop is 1-based (1 = A) in the original release: set cop_base=0 for the 0-based
                             Hugging Face export
  or medmcqa_input.jsonl       MedXpertQA's conversion: {id, question "...Answer Choices: (A)...", label [letter]}"""
    origin = "https://medmcqa.github.io (dev.json) or MedXpertQA's eval/data (medmcqa_input.jsonl)"

    def __init__(self, root: str, files: tuple[str, ...] = ("dev.json", "medmcqa_input.jsonl"), cop_base: int = 1,
                 **kw: Any) -> None:
        super().__init__(root, **kw)
        self.files, self.cop_base = tuple(files), cop_base

    def _item(self, item_id: str, rec: dict[str, Any]) -> EvalItem | MalformedItem:
        groups = {"subject": str(rec.get("subject_name") or "")}
        if "opa" in rec:  # original release
            options = {L: str(rec[f"op{L.lower()}"]) for L in "ABCD"}
            return mcq_item(item_id, rec["question"], options, LETTERS[int(rec["cop"]) - self.cop_base], groups=groups)
        stem, options = split_answer_choices(rec["question"])
        return mcq_item(item_id, stem, options, rec["label"][0], groups=groups)

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        for entry in self.read_jsonl(self.require(*self.files), "medmcqa-line"):
            if isinstance(entry, MalformedItem):
                yield entry
                continue
            line_id, rec = entry
            item_id = f"medmcqa-{rec.get('id', line_id)}"
            try:
                yield self._item(item_id, rec)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                yield MalformedItem(item_id, f"missing or bad field {exc!r}")


MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                "medical_genetics", "professional_medicine")


class MMLUMed(Benchmark):
    layout = """test/<subject>_test.csv      Hendrycks et al.'s release (data.tar: data/test/ works too):
                             headerless CSV rows question, A, B, C, D, answer-letter; subjects: anatomy,
                             clinical_knowledge, college_biology, college_medicine, medical_genetics,
                             professional_medicine"""
    origin = "https://github.com/hendrycks/test (data.tar linked from its README)"

    def __init__(self, root: str, subjects: tuple[str, ...] = MMLU_MEDICAL, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.subjects = tuple(subjects)

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        test_dir = self.require("test", "data/test")
        missing = [s for s in self.subjects if not (test_dir / f"{s}_test.csv").is_file()]
        if missing:
            raise self.layout_error(f"'{test_dir}' lacks {[f'{s}_test.csv' for s in missing]}")
        for subject in self.subjects:
            with open(test_dir / f"{subject}_test.csv", newline="", encoding="utf-8") as fh:
                for i, row in enumerate(csv.reader(fh)):
                    item_id = f"mmlu_med-{subject}-{i}"
                    if len(row) != 6:
                        yield MalformedItem(item_id, f"expected 6 columns, got {len(row)}")
                        continue
                    yield mcq_item(item_id, row[0], dict(zip("ABCD", row[1:5])), row[5], groups={"subject": subject})


class Medbullets(Benchmark):
    layout = """medbullets_op4.csv           (or medbullets_op5.csv via file=) with a header row:
                             question, opa, opb, opc, opd[, ope], answer_idx (letter), answer, explanation, link"""
    origin = "https://github.com/HanjieChen/ChallengeClinicalQA (medbullets/); column names as we read them there"

    def __init__(self, root: str, file: str = "medbullets_op4.csv", **kw: Any) -> None:
        super().__init__(root, **kw)
        self.file = file

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        path = self.require(self.file, f"medbullets/{self.file}")
        with open(path, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                item_id = f"medbullets-{i}"
                options = {L: row[f"op{L.lower()}"].strip() for L in "ABCDE"
                           if (row.get(f"op{L.lower()}") or "").strip()}
                gold = (row.get("answer_idx") or "").strip()
                if not gold and row.get("answer"):  # fall back to the answer text
                    gold = next((k for k, v in options.items() if v == row["answer"].strip()), "")
                if not row.get("question"):
                    yield MalformedItem(item_id, "no question")
                    continue
                yield mcq_item(item_id, row["question"], options, gold)


class PubMedQA(Benchmark):
    layout = """ori_pqal.json                PQA-L, JSON object keyed by PMID: {QUESTION, CONTEXTS[], LABELS, MESHES,
                             final_decision yes/no/maybe, LONG_ANSWER, ...}
test_ground_truth.json       optional {PMID: label} of the 500-question test split; without it all 1,000 are scored"""
    origin = "https://github.com/pubmedqa/pubmedqa (data/ori_pqal.json, data/test_ground_truth.json)"

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require("ori_pqal.json", "data/ori_pqal.json"))
        test_ids = None
        for rel in ("test_ground_truth.json", "data/test_ground_truth.json"):
            if (self.root / rel).is_file():
                test_ids = set(self.read_json(self.root / rel))
        for pmid, rec in data.items():
            if test_ids is not None and pmid not in test_ids:
                continue
            item_id = f"pubmedqa-{pmid}"
            try:
                # reasoning-required setting: the abstract (without its conclusion) is given as context
                context = "\n".join(rec["CONTEXTS"])
                gold = str(rec["final_decision"]).strip().lower()
                question = f"Context: {context}\nQuestion: {rec['QUESTION']}"
            except (KeyError, TypeError) as exc:
                yield MalformedItem(item_id, f"missing field {exc}")
                continue
            if gold not in ("yes", "no", "maybe"):
                yield MalformedItem(item_id, f"final_decision {gold!r} is not yes/no/maybe")
                continue
            yield EvalItem(item_id, "closed", question, gold, choices=("yes", "no", "maybe"))
