"""Radiology/pathology VQA with yes/no and open answers: VQA-RAD, SLAKE (English), PathVQA.

Closed and open questions are reported separately (``groups["type"]`` is the
data set's own answer_type); a yes/no answer is scored by yes/no extraction,
any other answer by normalised exact match (plus token recall/F1).
"""

from __future__ import annotations

from collections.abc import Iterator

from medgpt_oss.eval.benchmarks.base import Benchmark, EvalItem, MalformedItem, closed_or_open


class VQARAD(Benchmark):
    layout = """testset.json                 the common 451-question test split: JSON list of
                             {qid, image_name, question, answer, answer_type CLOSED/OPEN, image_organ, ...}
                             (split_file="VQA_RAD Dataset Public.json" reads all 2,248 OSF pairs instead)
images/<image_name>          or the OSF folder "VQA_RAD Image Folder/<image_name>\""""
    origin = "https://osf.io/89kps/ (OSF) for the JSON and images; testset.json from the MedVQA test-split releases"

    def __init__(self, root: str, split_file: str = "testset.json",
                 image_dirs: tuple[str, ...] = ("images", "VQA_RAD Image Folder"), **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.image_dirs = split_file, tuple(image_dirs)

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require(self.split_file))
        image_dir = self.require(*self.image_dirs).name
        for i, rec in enumerate(data):
            item_id = f"vqa_rad-{rec.get('qid', f'index{i}')}"
            try:
                # The OSF trainset writes some answer types "CLOSED " (trailing space).
                kind = str(rec["answer_type"]).strip().lower()
                yield closed_or_open(item_id, rec["question"], str(rec["answer"]),
                                     images=[f"{image_dir}/{rec['image_name']}"],
                                     groups={"type": kind, "organ": str(rec.get("image_organ", "")).lower()})
            except (KeyError, TypeError) as exc:
                yield MalformedItem(item_id, f"missing field {exc}")


class SLAKE(Benchmark):
    layout = """test.json                    JSON list of {qid, img_name "xmlabN/source.jpg", question, answer,
                             q_lang en/zh, answer_type CLOSED/OPEN, modality, location, content_type, ...}
imgs/xmlabN/source.jpg"""
    origin = "https://www.med-vqa.com/slake/ (SLAKE 1.0: test.json and imgs.zip)"

    def __init__(self, root: str, split_file: str = "test.json", language: str = "en", **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.language = split_file, language

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require(self.split_file))
        self.require("imgs")
        for i, rec in enumerate(data):
            if rec.get("q_lang") != self.language:  # English and Chinese share the file
                continue
            item_id = f"slake-{rec.get('qid', f'index{i}')}"
            try:
                yield closed_or_open(item_id, rec["question"], str(rec["answer"]),
                                     images=[f"imgs/{rec['img_name']}"],
                                     groups={"type": str(rec["answer_type"]).strip().lower(),
                                             "modality": str(rec.get("modality", ""))})
            except (KeyError, TypeError) as exc:
                yield MalformedItem(item_id, f"missing field {exc}")


class PathVQA(Benchmark):
    layout = """pvqa_test.json               the official per-image format: JSON list of
                             {img_id, labelf: {pvqa: [{answer: 1}, ...]}, sentf: {pvqa: [question, ...]}}
                             (the i-th label answers the i-th question)
images/test/<img_id>.jpg     (image_dir= if yours differ)"""
    origin = "https://github.com/UCSD-AI4H/PathVQA (data links in its README)"

    def __init__(self, root: str, split_file: str = "pvqa_test.json", image_dir: str = "images/test", **kw) -> None:
        super().__init__(root, **kw)
        self.split_file, self.image_dir = split_file, image_dir

    def _image(self, img_id: str) -> str:
        for ext in (".jpg", ".png", ".jpeg"):
            if (self.root / self.image_dir / f"{img_id}{ext}").exists():
                return f"{self.image_dir}/{img_id}{ext}"
        return f"{self.image_dir}/{img_id}.jpg"  # missing: the runner reports it by id

    def items(self) -> Iterator[EvalItem | MalformedItem]:
        data = self.read_json(self.require(self.split_file))
        self.require(self.image_dir)
        for rec in data:
            img_id = str(rec.get("img_id"))
            try:
                labels, questions = rec["labelf"]["pvqa"], rec["sentf"]["pvqa"]
            except (KeyError, TypeError) as exc:
                yield MalformedItem(f"pathvqa-{img_id}", f"missing field {exc}")
                continue
            if len(labels) != len(questions):
                yield MalformedItem(f"pathvqa-{img_id}", f"{len(questions)} questions but {len(labels)} labels")
                continue
            for i, (label, question) in enumerate(zip(labels, questions)):
                item_id = f"pathvqa-{img_id}-{i}"
                if not isinstance(label, dict) or not label:
                    yield MalformedItem(item_id, f"label {label!r} is not an {{answer: score}} object")
                    continue
                answer = max(label, key=label.get)
                item = closed_or_open(item_id, question, answer, images=[self._image(img_id)])
                item.groups = {"type": "closed" if item.kind == "closed" else "open"}
                yield item

