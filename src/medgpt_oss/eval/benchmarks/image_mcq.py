"""Multiple-choice questions with images: MedXpertQA (MM and Text), PMC-VQA, MMMU-Med (and
MMMU-Pro's medical subjects), MedFrameQA.

MMMU and MedFrameQA are published as Hugging Face parquet files with the images
embedded as bytes; those bytes are written once to an image cache folder so the
same image loader as in training reads them.
"""

from __future__ import annotations

import ast
import hashlib
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medgpt_oss.data.published.pmc_vqa import IMAGE_DIRS, TEST_CLEAN, read_pmc_vqa
from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem
from medgpt_oss.eval.benchmarks.text_qa import LETTERS, mcq_item, split_answer_choices


class MedXpertQA(Benchmark):
    layout = """medxpertqa_mm_input.jsonl    (text subset: medxpertqa_text_input.jsonl; the HF release's MM/test.jsonl
                             and Text/test.jsonl work too) JSONL of {id, question "...Answer Choices: (A)...",
                             options [{letter, content}], label [letter], images [{image_path}], medical_task,
                             body_system, question_type}
images/<image_path>          (MM only)"""
    origin = "https://github.com/TsinghuaC3I/MedXpertQA (eval/data) or the TsinghuaC3I/MedXpertQA dataset"

    def __init__(self, root: str, files: Sequence[str] = ("medxpertqa_mm_input.jsonl", "MM/test.jsonl"),
                 image_dir: str = "images", **kw: Any) -> None:
        super().__init__(root, **kw)
        self.files, self.image_dir = tuple(files), image_dir

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        for entry in self.read_jsonl(self.require(*self.files), f"{self.name}-line"):
            if isinstance(entry, MalformedItem):
                yield entry
                continue
            line_id, rec = entry
            item_id = f"{self.name}-{rec.get('id', line_id)}"
            try:
                stem, _ = split_answer_choices(rec["question"])
                options = {o["letter"]: o["content"] for o in rec["options"]}
                images = [f"{self.image_dir}/{im['image_path']}" for im in rec.get("images") or []]
                groups = {k: str(rec[k]) for k in ("medical_task", "body_system", "question_type") if k in rec}
                yield mcq_item(item_id, stem, options, rec["label"][0], images=images, groups=groups)
            except (KeyError, TypeError, IndexError) as exc:
                yield MalformedItem(item_id, f"missing or bad field {exc!r}")


class PMCVQA(Benchmark):
    layout = """test_clean.csv               PMC-VQA test set (or test.csv via file=), header row with
                             Figure_path, Question, Answer, Choice A..Choice D (values like "A:CT"),
                             Answer_label (letter; if absent the Answer text is matched to the choices)
images/<Figure_path>         (figures/ is accepted too)"""
    origin = ("https://huggingface.co/datasets/xmcmic/PMC-VQA (test_clean.csv, images.zip). Field names as we "
              "know the public release; check them against your copy")

    def __init__(self, root: str, file: str = TEST_CLEAN, image_dirs: Sequence[str] = IMAGE_DIRS,
                 **kw: Any) -> None:
        super().__init__(root, **kw)
        self.file, self.image_dirs = file, tuple(image_dirs)

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        questions = read_pmc_vqa(self, "test", self.file, self.image_dirs)
        yield from self.published_items(questions, lambda q: mcq_item(q.id, q.question, q.options, q.answer,
                                                                       images=[q.image]))


# -- parquet releases with embedded images -------------------------------------------------------

def iter_parquet(paths: Sequence[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield path, row


class ParquetMCQ(Benchmark):
    """A multiple-choice set in parquet with ``image_1..image_K`` columns ({bytes, path}) -- MMMU, MedFrameQA."""

    def __init__(self, root: str, pattern: str = "**/*.parquet", image_cache: str | None = None,
                 subjects: Sequence[str] | None = None, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.pattern = pattern
        self.subjects = {s.lower().replace(" ", "_") for s in subjects} if subjects else None
        self.image_cache = Path(image_cache) if image_cache else None

    def _cache_dir(self) -> Path:
        """Decoded images go beside the data, or to a temp folder if the root is read-only."""
        for candidate in filter(None, (self.image_cache, self.root / ".image_cache",
                                       Path(tempfile.gettempdir()) / f"medgpt_oss_{self.name}_images")):
            try:
                candidate.mkdir(parents=True, exist_ok=True)
                return candidate
            except OSError:
                continue
        raise OSError("no writable folder for decoded images; set image_cache=")

    def save_image(self, cell: Any, cache: Path) -> str | None:
        if not cell:
            return None
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            return None
        path = cache / f"{hashlib.sha1(data).hexdigest()[:16]}.img"  # content-addressed: written once
        if not path.exists():
            path.write_bytes(data)
        return str(path)

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise self.layout_error(f"root folder '{self.root}' does not exist")
        found = sorted(self.root.glob(self.pattern))
        if not found:
            raise self.layout_error(f"no files match '{self.pattern}' in '{self.root}'")
        return found

    def row_item(self, path: Path, row: dict[str, Any], cache: Path) -> EvalItem | MalformedItem | None:
        raise NotImplementedError

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        files = self.files()  # a wrong root fails before anything is written
        cache = self._cache_dir()
        for path, row in iter_parquet(files):
            try:
                item = self.row_item(path, row, cache)
            except (KeyError, TypeError, ValueError, SyntaxError) as exc:
                item = MalformedItem(f"{self.name}-{row.get('id', '?')}", f"missing or bad field {exc!r}")
            if item is not None:
                yield item


def _options_list(value: Any) -> list[str]:
    """MMMU stores options as the string form of a Python list; MedFrameQA as a list."""
    return [str(o) for o in (ast.literal_eval(value) if isinstance(value, str) else list(value))]


MMMU_MEDICAL = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                "Pharmacy", "Public_Health")


class MMMU(ParquetMCQ):
    layout = """<Subject>/validation-*.parquet   MMMU (MMMU/MMMU on Hugging Face), one folder per subject, rows
                                 {id "validation_<Subject>_<n>", question, options (str of a list),
                                 answer, question_type, image_1..image_7 {bytes, path}, subfield, ...}
  or "standard (4 options)/*.parquet"   MMMU-Pro (MMMU/MMMU_Pro) with a subject column (pattern=)"""
    origin = "https://huggingface.co/datasets/MMMU/MMMU and MMMU/MMMU_Pro (parquet, images embedded)"

    def __init__(self, root: str, pattern: str = "*/validation-*.parquet",
                 subjects: Sequence[str] = MMMU_MEDICAL, **kw: Any) -> None:
        super().__init__(root, pattern=pattern, subjects=subjects, **kw)

    @staticmethod
    def subject_of(path: Path, row: dict[str, Any]) -> str:
        if row.get("subject"):
            return str(row["subject"])
        m = re.match(r"^(?:dev|validation|test)_(.+)_\d+$", str(row.get("id", "")))
        return m.group(1) if m else path.parent.name

    def row_item(self, path: Path, row: dict[str, Any], cache: Path) -> EvalItem | MalformedItem | None:
        subject = self.subject_of(path, row)
        if self.subjects is not None and subject.lower().replace(" ", "_") not in self.subjects:
            return None
        item_id = f"{self.name}-{row['id']}"
        images = [p for k in range(1, 8) if (p := self.save_image(row.get(f"image_{k}"), cache))]
        # "<image 1>" references stay readable but must not look like our <image> placeholder
        question = re.sub(r"<image (\d+)>", r"(image \1)", str(row["question"]))
        options = _options_list(row.get("options") or "[]")
        groups = {"subject": subject}
        if str(row.get("question_type", "multiple-choice")) == "open" or not options:
            return EvalItem(item_id, "open", question, str(row["answer"]), images=images, groups=groups)
        opts = {LETTERS[i]: re.sub(r"<image (\d+)>", r"(image \1)", o) for i, o in enumerate(options)}
        return mcq_item(item_id, question, opts, str(row["answer"]), images=images, groups=groups)


class MedFrameQA(ParquetMCQ):
    layout = """*.parquet                    MedFrameQA (2-5 frames per question), rows {question_id, question,
                             options (list), answer (letter), image_1..image_5 {bytes, path}, system, organ,
                             modality, ...} -- field names as we know the public release; unsure ones are
                             config (id_field, answer_field, group_fields)"""
    origin = "https://huggingface.co/datasets/SuhaoYu1020/MedFrameQA (parquet, images embedded)"

    def __init__(self, root: str, pattern: str = "**/*.parquet", id_field: str = "question_id",
                 answer_field: str = "answer", group_fields: Sequence[str] = ("system", "modality"), **kw: Any) -> None:
        super().__init__(root, pattern=pattern, **kw)
        self.id_field, self.answer_field, self.group_fields = id_field, answer_field, tuple(group_fields)

    def row_item(self, path: Path, row: dict[str, Any], cache: Path) -> EvalItem | MalformedItem | None:
        item_id = f"{self.name}-{row[self.id_field]}"
        images = [p for k in range(1, 11) if (p := self.save_image(row.get(f"image_{k}"), cache))]
        options = _options_list(row["options"])
        # Options may already carry their letter ("A. text"); keep the text only.
        opts = {LETTERS[i]: re.sub(r"^\s*\(?[A-J][.):]\s*", "", o) for i, o in enumerate(options)}
        groups = {k: str(row[k]) for k in self.group_fields if row.get(k) is not None}
        return mcq_item(item_id, str(row["question"]), opts, str(row[self.answer_field]), images=images, groups=groups)
