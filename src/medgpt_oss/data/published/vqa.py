"""VQA data sets with closed and open answers, as published: VQA-RAD, SLAKE 1.0, PathVQA.

Each reader yields one :class:`VQAQuestion` per question, or a :class:`Skip` for a record it cannot read
(a missing or non-text field, an unknown answer type). Quirks handled here, once:

- VQA-RAD: some answer types are written ``"CLOSED "`` (trailing space); answers mix case ("Yes"/"yes")
  and are kept as published. ``trainset.json`` / ``testset.json`` are the split every VQA-RAD paper uses
  (1,797 / 451); the OSF original ``VQA_RAD Dataset Public.json`` holds all 2,248, test questions included.
- SLAKE: English and Chinese questions share the files; ``language`` selects by ``q_lang`` and a question
  of the other language is an expected ``other_language`` skip. ``validate.json`` is split ``val``.
- PathVQA: per image, the i-th label of ``labelf.pvqa`` answers the i-th question of ``sentf.pvqa``; many
  images have no questions. It has no answer type: ``closed`` for yes/no answers, else ``open``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt_oss.data.published.layout import PublishedLayout, Skip, image_path, text

ANSWER_TYPES = ("closed", "open")
OTHER_LANGUAGE = "other_language"  # the skip kind of a SLAKE question in the language not chosen

VQA_RAD_FILES = {"train": "trainset.json", "test": "testset.json"}
VQA_RAD_IMAGE_DIRS = ("images", "VQA_RAD Image Folder")
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
SLAKE_LANGUAGES = ("en", "zh", "all")
SLAKE_META = ("answer_type", "modality", "content_type", "location", "base_type", "q_lang", "qid", "img_id")
PATHVQA_FILES = {split: f"pvqa_{split}.json" for split in ("train", "val", "test")}
PATHVQA_IMAGE_DIR = "images/{split}"
PATHVQA_IMAGE_EXTS = (".jpg", ".png", ".jpeg")


@dataclass
class VQAQuestion:
    """One question on one image, as the data set publishes it."""

    id: str            # the reader's prefix + the data set's id (VQA-RAD/SLAKE qid, PathVQA <img_id>-<i>)
    split: str         # train | val | test
    question: str      # stripped
    answer: str        # stripped, case as published
    answer_type: str   # closed | open
    image: str         # relative to the data set's root
    meta: dict[str, Any] = field(default_factory=dict)  # the data set's own labels (organ, modality, ...)


def read_vqa_rad(files: PublishedLayout, split_files: Mapping[str, str] = VQA_RAD_FILES,
                 image_dirs: Sequence[str] = VQA_RAD_IMAGE_DIRS,
                 id_prefix: str = "vqa_rad-") -> Iterator[VQAQuestion | Skip]:
    """VQA-RAD's JSON lists of ``{qid, image_name, question, answer, answer_type CLOSED/OPEN, question_type,
    phrase_type, image_organ}``; images in the first of ``image_dirs`` that exists."""
    image_dir = files.require_folder(*image_dirs)
    for split, filename in split_files.items():
        yield from files.each(split, files.json_list(files.require(filename)),
                              lambda rid, rec, split=split: _vqa_rad(rid, rec, split, image_dir),
                              record_id=lambda rec: rec.get("qid"), id_prefix=id_prefix)


def _vqa_rad(rid: str, rec: dict[str, Any], split: str, image_dir: str) -> Iterator[VQAQuestion | Skip]:
    kind = text(rec, "answer_type").lower()
    question, answer, image = text(rec, "question"), text(rec, "answer"), text(rec, "image_name")
    if kind not in ANSWER_TYPES:
        yield Skip(rid, "bad_answer_type", f"answer_type {rec['answer_type']!r}", "use CLOSED or OPEN", split)
        return
    yield VQAQuestion(rid, split, question, answer, kind, image_path(image_dir, image),
                      {"answer_type": kind, "question_type": rec.get("question_type"),
                       "image_organ": rec.get("image_organ"), "phrase_type": rec.get("phrase_type"),
                       "qid": rec.get("qid")})


def read_slake(files: PublishedLayout, split_files: Mapping[str, str] = SLAKE_FILES, language: str = "en",
               id_prefix: str = "slake-") -> Iterator[VQAQuestion | Skip]:
    """SLAKE's JSON lists of ``{img_id, img_name "xmlabN/source.jpg", question, answer, q_lang en|zh,
    answer_type OPEN/CLOSED, modality, location, content_type, base_type, triple, qid}``; images under
    ``imgs/``. ``language``: en | zh | all."""
    if language not in SLAKE_LANGUAGES:
        raise ValueError(f"language must be one of {SLAKE_LANGUAGES}, not {language!r}")
    image_dir = files.require_folder("imgs")
    for split, filename in split_files.items():
        yield from files.each(split, files.json_list(files.require(filename)),
                              lambda rid, rec, split=split: _slake(rid, rec, split, image_dir, language),
                              record_id=lambda rec: rec.get("qid"), id_prefix=id_prefix)


def _slake(rid: str, rec: dict[str, Any], split: str, image_dir: str,
           language: str) -> Iterator[VQAQuestion | Skip]:
    if language != "all" and rec.get("q_lang") != language:
        # the other language: not a bad record, just not selected -- counted, so the totals add up
        yield Skip(rid, OTHER_LANGUAGE, f"q_lang {rec.get('q_lang')!r}", "language=all keeps both", split,
                   expected=True)
        return
    kind = text(rec, "answer_type").lower()
    question, answer, image = text(rec, "question"), text(rec, "answer"), text(rec, "img_name")
    if kind not in ANSWER_TYPES:
        yield Skip(rid, "bad_answer_type", f"answer_type {rec['answer_type']!r}", "use OPEN or CLOSED", split)
        return
    meta = {k: rec.get(k) for k in SLAKE_META}
    meta["answer_type"] = kind
    yield VQAQuestion(rid, split, question, answer, kind, image_path(image_dir, image), meta)


def read_pathvqa(files: PublishedLayout, split_files: Mapping[str, str] = PATHVQA_FILES,
                 image_dir: str = PATHVQA_IMAGE_DIR, id_prefix: str = "pathvqa-") -> Iterator[VQAQuestion | Skip]:
    """PathVQA's per-image JSON lists of ``{img_id, labelf: {pvqa: [{answer: 1}, ...]}, sentf: {pvqa:
    [question, ...]}}``; images ``<image_dir>/<img_id>.jpg`` (``{split}`` in ``image_dir`` is the split)."""
    for split, filename in split_files.items():
        folder = image_dir.format(split=split)
        yield from files.each(split, files.json_list(files.require(filename)),
                              lambda rid, rec, split=split, folder=folder: _pathvqa(files.root, rid, rec, split,
                                                                                    folder),
                              record_id=lambda rec: rec.get("img_id"), id_prefix=id_prefix)


def _pathvqa(root: Path, rid: str, rec: dict[str, Any], split: str, folder: str) -> Iterator[VQAQuestion | Skip]:
    img_id = text(rec, "img_id")
    try:
        labels, questions = rec["labelf"]["pvqa"], rec["sentf"]["pvqa"]
    except (KeyError, TypeError) as exc:
        yield Skip(rid, "missing_field", f"no field {exc}", "", split)
        return
    if not isinstance(labels, list) or not isinstance(questions, list) or len(labels) != len(questions):
        yield Skip(rid, "label_count", f"{len(questions)} questions but {len(labels)} labels",
                   "give one {answer: 1} label per question", split)
        return
    image = _pathvqa_image(root, folder, img_id)
    for i, (label, question) in enumerate(zip(labels, questions)):
        qid = f"{rid}-{i}"
        if not isinstance(label, dict) or not label or not all(isinstance(a, str) for a in label):
            yield Skip(qid, "missing_field", f"label {label!r:.60} is not an {{answer: score}} object", "", split)
            continue
        if not isinstance(question, str):
            yield Skip(qid, "bad_field", f"question {i} is {type(question).__name__}, not text",
                       "give each question as a string", split)
            continue
        answer = max(label, key=label.get).strip()
        kind = "closed" if answer.lower() in ("yes", "no") else "open"
        yield VQAQuestion(qid, split, question.strip(), answer, kind, image, {"answer_type": kind, "img_id": img_id})


def _pathvqa_image(root: Path, folder: str, img_id: str) -> str:
    for ext in PATHVQA_IMAGE_EXTS:
        if (root / folder / f"{img_id}{ext}").exists():
            return image_path(folder, f"{img_id}{ext}")
    return image_path(folder, f"{img_id}.jpg")  # missing: prepare and the benchmark runner report it by id
