"""Convert a published data set into the project's prepared shards (see docs/data.md)::

    python -m medgpt_oss.prepare source=vqa_rad source.root=<dir> out=<dir> [strict=true]

Every record goes through the checks training would apply -- the real
``HarmonyFormatter`` with the tokenizer and ``tokens_per_image`` of the model that
the ``encoder``/``projector``/``llm`` groups and ``scale`` name (``contract.py``),
the same ``max_length``, and a full decode of every image -- so a prepared folder
holds only samples that train. A record that fails is written to
``<out>/skipped.jsonl`` with its id, kind and reason, logged, and counted in the
last line printed: one JSON object with the counts and the model contract the records
were validated against (also in the manifest). ``strict=true`` stops at the
first bad record instead, naming it, the problem and the fix (skips a source
marks as expected, such as IU X-ray's studies without findings, are still only counted).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from medgpt_oss.config import CONF_DIR
from medgpt_oss.contract import ModelInputSpec, input_spec_from_config
from medgpt_oss.data.conversation import ConversationError, HarmonyFormatter
from medgpt_oss.data.dicom import is_dicom, read_dicom
from medgpt_oss.data.images import HIGH_BIT_DEPTH_MODES, MAX_PIXELS, decode_within, to_rgb
from medgpt_oss.data.shards import MANIFEST, PreparedRecord, ShardWriter, write_manifest
from medgpt_oss.data.published.layout import Skip, has_bad_text
from medgpt_oss.data.sources.base import Source, SourceLayoutError, SourceRecord
from medgpt_oss.models.hub import MissingWeightsError
from medgpt_oss.trust import OutsideRootError, inside_root

log = logging.getLogger("medgpt_oss.prepare")
KEPT_FORMATS = ("PNG", "JPEG")  # stored byte for byte; anything else PIL reads is re-encoded as PNG
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")  # what PNG stores as is
FIRST_IDS = 5                   # ids listed per skip kind in the summary (all are in skipped.jsonl)
RUN_MARKER = ".prepare_running"  # written first, removed last: marks a folder a stopped run left as ours


class PrepareError(ValueError):
    """strict=true: the first bad record, with what is wrong and how to fix it."""


class BadRecord(Exception):
    def __init__(self, kind: str, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.kind, self.reason, self.fix = kind, reason, fix


# -- images ------------------------------------------------------------------------------------

def encode_image(path: Path, dicom_options: dict[str, Any], max_pixels: int = MAX_PIXELS) -> tuple[bytes, list[str]]:
    """The bytes to store for one image file and what was done to them (``notes``, counted in the report);
    raises BadRecord when it cannot be used. PNG/JPEG are stored byte for byte; the first frame of an
    animated image, an image reduced to ``max_pixels``, and every other format are stored as PNG."""
    try:
        is_file, exists = path.is_file(), path.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise BadRecord("missing_image", f"image '{path}' cannot be looked up ({exc})", "fix the image path") from None
    if not is_file:
        if exists:  # a directory, device or pipe: there, but not an image file
            raise BadRecord("not_a_file", f"image '{path}' is not a regular file", "point the record at an image file")
        raise BadRecord("missing_image", f"image '{path}' does not exist", "check source.root and the image folder")
    if path.stat().st_size == 0:
        raise BadRecord("empty_image", f"image '{path}' is a zero-byte file", "download the image again")
    if is_dicom(path):
        try:
            image = read_dicom(path, **dicom_options) if dicom_options else read_dicom(path)
        except Exception as exc:  # DicomError.kind says which problem: no_pixels, truncated or unreadable
            if getattr(exc, "kind", None) == "no_pixels":
                raise BadRecord("dicom_no_pixels", f"DICOM '{path}' has no pixel data",
                                "it is a structured report or header-only file; drop it") from exc
            raise BadRecord("corrupt_image", f"DICOM '{path}' cannot be read ({exc})", "check the file") from exc
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), []
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            animated = getattr(image, "n_frames", 1) > 1
            reduced = decode_within(image, max_pixels)  # a full decode: Image.open alone misses truncation
            if image.format in KEPT_FORMATS and not (animated or reduced):
                return data, []
            notes = ["animated_first_frame"] * animated + ["reduced_to_pixel_limit"] * reduced
            if image.mode not in PNG_MODES:  # float and 32-bit TIFFs: 8-bit over their range, as training reads them
                notes += ["high_bit_depth_to_8bit"] if image.mode in HIGH_BIT_DEPTH_MODES else []
                image = to_rgb(image)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), notes
    except UnidentifiedImageError as exc:  # no image format recognises the bytes: some other kind of file
        raise BadRecord("not_an_image", f"'{path}' is not an image file PIL or pydicom can read ({exc})",
                        "point the record at an image") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRecord("corrupt_image", f"image '{path}' cannot be decoded ({exc})",
                        "download the image again or drop the record") from exc


# -- conversations -----------------------------------------------------------------------------

def conversation_problem(exc: ConversationError) -> str:
    """The countable kind of a ConversationError (its message is the reason)."""
    problem = exc.problem
    if "placeholders" in problem:
        return "image_placeholders"
    if "exceed max_length" in problem:
        return "too_long"
    if "is empty" in problem:
        return "empty_answer"
    if "does not end with an assistant turn" in problem:
        return "missing_answer"
    return "bad_conversation"


def load_formatter(cfg: DictConfig, spec: ModelInputSpec | None = None) -> HarmonyFormatter:
    """The formatter training uses, as the model of ``cfg``'s encoder/projector/llm groups will tokenize: its
    tokenizer, image token, tokens per image and chat settings (the model contract ``spec``, computed from the
    config without building the model when not given); a set ``tokens_per_image`` overrides the count."""
    spec = input_spec_from_config(cfg) if spec is None else spec
    tokens_per_image = spec.tokens_per_image if cfg.get("tokens_per_image") is None else int(cfg.tokens_per_image)
    return HarmonyFormatter(spec.tokenizer, spec.image_token, tokens_per_image, system_prompt=cfg.system_prompt,
                            max_length=cfg.max_length, chat=spec.chat)


def validated_contract(cfg: DictConfig, spec: ModelInputSpec, formatter: HarmonyFormatter) -> dict[str, Any]:
    """The model contract the records were checked against, as the manifest and the report record it: training
    on the folder warns when its model makes another number of image tokens (``data/prepared.py``)."""
    return {"scale": cfg.scale, "encoder": cfg.encoder._target_, "projector": cfg.projector._target_,
            "tokens_per_image": formatter.num_image_tokens, "image_size": spec.image_size,
            "max_length": formatter.max_length, "tokenizer": formatter.tokenizer.name_or_path,
            "vocab_size": len(formatter.tokenizer)}


# -- the run -----------------------------------------------------------------------------------

class Preparer:
    """Validates records and writes the good ones, split by split; counts everything."""

    def __init__(self, out: Path, formatter: HarmonyFormatter, strict: bool = False,
                 dicom_options: dict[str, Any] | None = None, shard_records: int = 2048,
                 row_group_records: int = 128, image_cache: int = 256, image_root: Path | None = None,
                 max_pixels: int = MAX_PIXELS) -> None:
        self.out, self.formatter, self.strict = out, formatter, strict
        self.image_root = image_root  # set: every image must resolve inside it (else outside_root); None: anywhere
        self.shard_records, self.row_group_records = shard_records, row_group_records
        self.writers: dict[str, ShardWriter] = {}
        self.tasks: Counter[str] = Counter()
        self.answer_types: Counter[str] = Counter()
        self.skips: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "first_ids": []})
        self.converted: Counter[str] = Counter()  # what was done to written images (first frame, 8-bit, reduced)
        # Ids seen, as 8-byte digests (a million ids: tens of MB), to report duplicates with examples.
        self._seen_ids: set[bytes] = set()
        self.duplicates: dict[str, Any] = {"count": 0, "first_ids": []}
        options = dict(dicom_options or {})
        # VQA sets ask many questions about one image: decode it once (bounded, so memory stays flat)
        self._image = lru_cache(maxsize=image_cache)(lambda path: self._try_image(path, options, max_pixels))
        self._skipped = open(out / "skipped.jsonl", "w", encoding="utf-8")

    @staticmethod
    def _try_image(path: Path, options: dict[str, Any], max_pixels: int) -> tuple[bytes, list[str]] | BadRecord:
        try:
            return encode_image(path, options, max_pixels)
        except BadRecord as bad:
            return bad

    def check(self, rec: SourceRecord) -> tuple[list[bytes], list[str]]:
        """The record's image bytes and what was done to them; raises BadRecord with the first problem found."""
        if not isinstance(rec.split, str) or not SPLIT_NAME.fullmatch(rec.split):
            raise BadRecord("bad_field", f"split {rec.split!r:.60} is not a plain name (it becomes a folder of out)",
                            "name splits with letters, digits, - and _")
        if not isinstance(rec.task, str) or not rec.task.strip():
            raise BadRecord("bad_field", f"task {rec.task!r:.60} is not text", "give the task as a string")
        if has_bad_text(rec.conversations) or has_bad_text(rec.meta) or has_bad_text([str(p) for p in rec.images]):
            raise BadRecord("non_utf8", "text holds bytes that are not UTF-8",
                            "re-encode the source file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
        try:
            self.formatter.tokenize(rec.id, rec.conversations, len(rec.images))
        except ConversationError as exc:
            raise BadRecord(conversation_problem(exc), exc.problem, str(exc).partition(" -- fix: ")[2]) from exc
        images, notes = [], []
        for path in rec.images:
            if self.image_root is not None:
                try:
                    inside_root(self.image_root, path)
                except OutsideRootError as exc:
                    raise BadRecord("outside_root", f"image {exc}",
                                    "keep images inside source.root, or set source.allow_outside_root=true if you "
                                    "trust the records' paths") from None
            data = self._image(Path(path))
            if isinstance(data, BadRecord):
                raise data
            images.append(data[0])
            notes += data[1]
        return images, notes

    def skip(self, skip: Skip) -> None:
        if self.strict and not skip.expected:
            raise PrepareError(f"record '{skip.id}' ({skip.split or 'no split'}): {skip.kind}: {skip.reason}"
                               + (f" -- fix: {skip.fix}" if skip.fix else "")
                               + " (strict=false skips and reports such records instead)")
        entry = self.skips[skip.kind]
        entry["count"] += 1
        if len(entry["first_ids"]) < FIRST_IDS:
            entry["first_ids"].append(skip.id)
        self._skipped.write(json.dumps({"id": skip.id, "split": skip.split, "kind": skip.kind,
                                        "reason": skip.reason, "fix": skip.fix}, default=str) + "\n")
        # ascii(): an id or reason may hold the very bytes that were not UTF-8
        log.warning("skip %s [%s]: %s", ascii(skip.id)[1:-1], skip.kind, ascii(skip.reason)[1:-1])

    def add(self, item: SourceRecord | Skip) -> None:
        if isinstance(item, Skip):
            self.skip(item)
            return
        try:
            images, notes = self.check(item)
        except BadRecord as bad:
            self.skip(Skip(item.id, bad.kind, bad.reason, bad.fix, item.split))
            return
        self.converted.update(notes)
        digest = hashlib.blake2b(item.id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        if digest in self._seen_ids:  # kept (a sample is a sample), but reported: ids should name one record
            self.duplicates["count"] += 1
            if len(self.duplicates["first_ids"]) < FIRST_IDS and item.id not in self.duplicates["first_ids"]:
                self.duplicates["first_ids"].append(item.id)
                log.warning("duplicate record id %s", ascii(item.id)[1:-1])
        self._seen_ids.add(digest)
        if item.split not in self.writers:
            self.writers[item.split] = ShardWriter(self.out, item.split, self.shard_records, self.row_group_records)
        self.writers[item.split].write(PreparedRecord(item.id, item.task, item.conversations, images,
                                                      [str(p) for p in item.images], item.meta))
        self.tasks[item.task] += 1
        if item.meta.get("answer_type"):
            self.answer_types[str(item.meta["answer_type"])] += 1

    def finish(self, source_name: str, contract: dict[str, Any] | None = None) -> dict[str, Any]:
        self._skipped.close()
        splits = {name: writer.close() for name, writer in sorted(self.writers.items())}
        report = {
            "source": source_name,
            "out": str(self.out),
            **({"contract": contract} if contract is not None else {}),
            "written": sum(s["records"] for s in splits.values()),
            "splits": {name: s["records"] for name, s in splits.items()},
            "tasks": dict(sorted(self.tasks.items())),
            "answer_types": dict(sorted(self.answer_types.items())),
            "skipped": sum(s["count"] for s in self.skips.values()),
            "skip_reasons": dict(sorted(self.skips.items())),
            "duplicate_ids": self.duplicates,
            "images_converted": dict(sorted(self.converted.items())),
        }
        write_manifest(self.out, source_name, splits, report)
        return report


def prepare(source: Source, out: str | Path, formatter: HarmonyFormatter, strict: bool = False,
            overwrite: bool = False, contract: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Read ``source``, write ``out``; returns the counts (also in the manifest's ``report``), with ``contract``
    (:func:`validated_contract`) when given."""
    out = Path(out)
    clear_previous(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("written by python -m medgpt_oss.prepare; removed when the run completes\n")
    root = None if source.allow_outside_root else source.root
    preparer = Preparer(out, formatter, strict=strict, image_root=root, **options)
    try:
        items: Iterable[SourceRecord | Skip] = source.records()
        for item in items:
            preparer.add(item)
        report = preparer.finish(source.name, contract)
    except BaseException:
        # Shards without a manifest are unusable and would block the rerun: remove what this run wrote.
        preparer._skipped.close()
        _remove_outputs(out, list(preparer.writers))
        raise
    (out / RUN_MARKER).unlink()
    return report


SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a split is a folder of out: a plain name, never a path
SHARD_NAME = re.compile(r"shard-\d{5}\.parquet")


def _remove_outputs(out: Path, splits: Iterable[str]) -> None:
    """Delete what prepare writes in ``out`` and nothing else: shard files (by name) in plain-named split
    folders, the folders if that empties them, and the top-level files. Names read from a manifest are data."""
    for split in splits:
        folder = out / split
        if not (isinstance(split, str) and SPLIT_NAME.fullmatch(split) and folder.is_dir()
                and not folder.is_symlink()):
            continue
        for shard in folder.iterdir():
            if SHARD_NAME.fullmatch(shard.name) and shard.is_file() and not shard.is_symlink():
                shard.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    for name in (MANIFEST, "skipped.jsonl", RUN_MARKER):
        (out / name).unlink(missing_ok=True)


def clear_previous(out: Path, overwrite: bool) -> None:
    """A folder that already holds prepared data -- or what a stopped run left (its marker file says so) -- is
    replaced only with overwrite=true, and only our files; any other non-empty folder is refused."""
    if not out.exists() or not any(out.iterdir()):
        return
    complete, stopped = (out / MANIFEST).is_file(), (out / RUN_MARKER).is_file()
    if not (complete or stopped):
        raise FileExistsError(f"out='{out}' is not empty and holds no prepared data ({MANIFEST} is missing); "
                              "choose a new folder")
    if not overwrite:
        what = "prepared data" if complete else "the output of a prepare run that stopped"
        raise FileExistsError(f"out='{out}' already holds {what}; pass overwrite=true to replace it")
    # Every plain-named subfolder may hold our shards (a stopped run wrote no manifest to list them).
    _remove_outputs(out, [p.name for p in out.iterdir() if p.is_dir()])


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="prepare: %(message)s", stream=sys.stderr)
    source: Source = instantiate(cfg.source, _convert_="all")
    try:
        spec = input_spec_from_config(cfg)
        formatter = load_formatter(cfg, spec)
        report = prepare(source, cfg.out, formatter, strict=cfg.strict, overwrite=cfg.overwrite,
                         contract=validated_contract(cfg, spec, formatter),
                         dicom_options=OmegaConf.to_container(cfg.dicom), shard_records=cfg.shard_records,
                         row_group_records=cfg.row_group_records, max_pixels=int(cfg.get("max_pixels") or MAX_PIXELS))
    except (SourceLayoutError, PrepareError, FileExistsError, MissingWeightsError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(report, ensure_ascii=False), flush=True)  # the last line: the counts, machine-readable
    return report


if __name__ == "__main__":
    main()
