"""MedSynth: determinism, record schema, balance, and that every answer is in the pixels.

Pixel checks run on images downsampled to 64x64 (the tiny encoder's input) and
use the radiological convention: the patient's left is on the image's right.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgpt_oss.data.medsynth import generate
from medgpt_oss.data.medsynth.__main__ import main
from medgpt_oss.data.medsynth.cases import CHANGES, SPLITS, sample_case
from medgpt_oss.data.medsynth.drawing import case_views, image_path, render_case
from medgpt_oss.data.medsynth.records import FINDING_NAMES, NO_FINDING, TASKS, case_records
from medgpt_oss.data.medsynth.text import CHANGE_SENTENCES, findings_from_report, report_text
from medgpt_oss.data.jsonl import read_jsonl

N_CASES = 400  # enough for balance statistics, a few seconds to generate


@pytest.fixture(scope="module")
def medsynth(tmp_path_factory) -> Path:
    return generate.generate_medsynth(tmp_path_factory.mktemp("ms") / "medsynth", seed=0,
                                      n_train=N_CASES, n_val=20, n_test=20)


@pytest.fixture(scope="module")
def records(medsynth) -> list[dict]:
    return read_jsonl(medsynth / "train.jsonl")


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _img64(root: Path, rel: str, mode: str = "L") -> np.ndarray:
    im = Image.open(root / rel).convert(mode).resize((64, 64), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def _by(records: list[dict], task: str | None = None, suffix: str | None = None) -> list[dict]:
    return [r for r in records if (task is None or r["task"] == task)
            and (suffix is None or r["id"].endswith(suffix))]


# ---------------------------------------------------------------- determinism

def test_same_arguments_give_identical_bytes_and_seed_changes_them(tmp_path):
    kw = dict(n_train=12, n_val=4, n_test=4, image_size=64)
    a = generate.generate_medsynth(tmp_path / "a", seed=3, **kw)
    b = generate.generate_medsynth(tmp_path / "b", seed=3, **kw, workers=2)  # a process pool changes nothing
    c = generate.generate_medsynth(tmp_path / "c", seed=4, **kw)
    da, db, dc = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert da == db
    assert da["train.jsonl"] != dc["train.jsonl"]
    assert sum(da[k] != dc.get(k) for k in da if k.endswith(".png")) > 0.9 * sum(k.endswith(".png") for k in da)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_cases_do_not_depend_on_split_sizes_and_splits_differ(tmp_path):
    small = generate.generate_medsynth(tmp_path / "s", n_train=10, n_val=6, n_test=2, image_size=64)
    large = generate.generate_medsynth(tmp_path / "l", n_train=20, n_val=6, n_test=2, image_size=64)

    def case(root: Path, split: str, i: int) -> tuple[list[str], dict[str, str]]:
        lines = [line for line in (root / f"{split}.jsonl").read_text().splitlines()
                 if f'"medsynth-{split}-{i:06d}-' in line]
        imgs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (root / "images" / split).glob(f"{i:06d}_*")}
        return lines, imgs

    assert case(small, "train", 5) == case(large, "train", 5) != ([], {})
    # the same index in another split is another case
    assert case(small, "train", 5)[1] != {k: v for k, v in case(small, "val", 5)[1].items()}


# ---------------------------------------------------------------- ensure

def test_ensure_is_a_noop_when_complete_and_regenerates_on_new_kwargs(tmp_path, monkeypatch):
    root = tmp_path / "set"
    kw = dict(seed=1, n_train=3, n_val=2, n_test=2, image_size=48)
    generate.ensure_medsynth(root, **kw)
    first = _tree_digest(root)
    calls = []
    real = generate.generate_medsynth
    monkeypatch.setattr(generate, "generate_medsynth", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert generate.ensure_medsynth(root, **kw) == root.absolute()
    assert calls == [] and _tree_digest(root) == first
    generate.ensure_medsynth(root, **{**kw, "n_train": 4})
    assert len(calls) == 1
    manifest = generate.read_manifest(root)
    assert manifest["kwargs"]["n_train"] == 4 and manifest["generator_version"] == generate.GENERATOR_VERSION
    assert len(list((root / "images" / "train").glob("000003_*"))) > 0


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "set"
    kw = dict(seed=0, n_train=6, n_val=2, n_test=2, image_size=48)
    generate.ensure_medsynth(root, **kw)
    before = _tree_digest(root)
    real = case_records
    n = {"calls": 0}

    def failing(*a, **k):
        n["calls"] += 1
        if n["calls"] > 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(generate, "case_records", failing)
    with pytest.raises(KeyboardInterrupt):
        generate.ensure_medsynth(root, **{**kw, "n_train": 7})
    assert _tree_digest(root) == before  # the old complete set is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # temp folder removed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate.generate_medsynth(tmp_path / "other", **kw)


# ---------------------------------------------------------------- schema

def test_every_record_is_well_formed(medsynth, records):
    assert {r["task"] for r in records} == set(TASKS)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    opened: set[str] = set()
    for r in records:
        images = r.get("image")
        images = [] if images is None else [images] if isinstance(images, str) else images
        conv = r["conversations"]
        n_placeholders = sum(t["value"].count("<image>") for t in conv if t["from"] == "human")
        assert n_placeholders == len(images), r["id"]
        assert all("<image>" not in t["value"] for t in conv if t["from"] == "gpt")
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) >= 2
        assert all(t["value"].strip() for t in conv)
        assert r["modality"] in ("cxr", "ct", "mri", "pathology", "text")
        assert (r["modality"] == "text") == (r["task"] == "text_qa") == (not images)
        for rel in images:
            assert not Path(rel).is_absolute() and rel.startswith("images/train/")
            if rel not in opened:
                with Image.open(medsynth / rel) as im:
                    im.load()
                    assert im.size == (128, 128)
                    assert im.mode == ("RGB" if r["modality"] == "pathology" else "L")
                opened.add(rel)
        if r["task"] in ("closed", "open", "mcq", "longitudinal"):
            assert isinstance(r["answer"], str) and r["answer"]
        if r["task"] == "closed":
            assert r["answer"] in ("yes", "no")
            assert conv[1]["value"] == {"yes": "Yes.", "no": "No."}[r["answer"]]
        if r["task"] == "open":
            assert conv[1]["value"].rstrip(".").lower() == r["answer"]
        if r["task"] == "mcq":
            assert sorted(r["options"]) == ["A", "B", "C", "D"]
            assert len(set(r["options"].values())) == 4
            assert conv[1]["value"] == f"{r['answer']}. {r['options'][r['answer']]}"
            # reasoned in the analysis channel first: the option's text, then its letter
            assert conv[1]["thinking"] == f"{r['options'][r['answer']]} is option {r['answer']}."
            assert all(f"{k}. {v}" in conv[0]["value"] for k, v in r["options"].items())
        if r["task"] in ("multiview_report", "longitudinal"):
            assert len(images) == 2
        if r["task"] == "multiturn":
            assert len(conv) // 2 == len(r["answers"]) >= 2
    # every image written is used by some record
    assert opened == {str(p.relative_to(medsynth)) for p in (medsynth / "images" / "train").iterdir()}


def test_manifest_counts_match_files(medsynth):
    m = generate.read_manifest(medsynth)
    for split in SPLITS:
        assert m["records"][split] == dict(Counter(r["task"] for r in read_jsonl(medsynth / f"{split}.jsonl")))


def test_text_matches_structured_findings(records):
    for r in _by(records, "report") + _by(records, "multiview_report"):
        text = r["conversations"][1]["value"]
        assert text.startswith("Findings: ") and "\nImpression: " in text
        assert findings_from_report(text) == r["findings"]
    for r in _by(records, "caption", "caption-frontal"):
        text, f = r["conversations"][1]["value"].lower(), r["findings"]
        if r["modality"] == "cxr":
            assert ("nodule" in text) == bool(f["nodule"]) and ("effusion" in text) == bool(f["effusion"])
            assert ("cardiomegaly" in text) == f["cardiomegaly"]
            assert ("normal" in text) == (not (f["nodule"] or f["effusion"] or f["cardiomegaly"]))
            if f["nodule"]:
                assert f"{f['nodule']['size']} nodule in the {f['nodule']['side']} lung" in text


# ---------------------------------------------------------------- balance

def test_yes_no_balanced_per_question_and_mcq_letters_spread(records):
    by_q = defaultdict(Counter)
    for r in _by(records, "closed"):
        by_q[r["conversations"][0]["value"]][r["answer"]] += 1
    assert len(by_q) == 6
    for q, c in by_q.items():
        n = c["yes"] + c["no"]
        assert n >= 50 and 0.35 <= c["yes"] / n <= 0.65, (q, c)
    letters = Counter(r["answer"] for r in _by(records, "mcq"))
    n = sum(letters.values())
    assert set(letters) == set("ABCD") and all(0.18 <= v / n <= 0.32 for v in letters.values()), letters
    changes = Counter(r["answer"] for r in _by(records, "longitudinal"))
    assert set(changes) == set(CHANGES)
    tasks = Counter(r["task"] for r in records)
    assert min(tasks.values()) >= 0.1 * N_CASES, tasks


# ---------------------------------------------------------------- pixels (at 64 px)

def _nodule_render_diff(case: dict, view: str, image_size: int = 128) -> np.ndarray:
    """Pixels of the nodule alone at 64 px: the view minus the same view re-rendered
    without the nodule (same patient, same noise)."""
    def to64(im):
        return np.asarray(im.resize((64, 64), Image.BILINEAR), dtype=np.float64) / 255.0
    with_nodule = render_case(case, 0, image_size)[view]
    bare = copy.deepcopy(case)
    (bare["prior"] if view.startswith("prior") else bare)["findings"]["nodule"] = None
    return to64(with_nodule) - to64(render_case(bare, 0, image_size)[view])


def test_nodule_side_and_size_are_drawn_and_survive_64px(medsynth, records):
    areas = defaultdict(list)
    checked = 0
    for r in _by(records, "closed", "closed-nodule"):
        if r["answer"] != "yes":
            continue
        index = int(r["id"].split("-")[2])
        case = sample_case(0, "train", index)
        # the renderer used here is exactly what wrote the file
        saved = np.asarray(Image.open(medsynth / r["image"]))
        assert np.array_equal(saved, np.asarray(render_case(case, 0, 128)["frontal"]))
        diff = _nodule_render_diff(case, "frontal")
        blob = diff > 0.15
        cols = np.nonzero(blob)[1]
        assert len(cols) > 0
        image_right = cols.mean() > 31.5
        assert image_right == (r["findings"]["nodule"]["side"] == "left"), r["id"]  # patient left = image right
        areas[r["findings"]["nodule"]["size"]].append(blob.sum())
        assert (_nodule_render_diff(case, "lateral") > 0.15).sum() > 0  # also on the lateral view
        checked += 1
    assert checked > 100
    small, large = np.array(areas["small"]), np.array(areas["large"])
    assert small.min() >= 9          # radius >= ~2 px at 64 px
    assert small.max() < large.min()  # the two sizes never overlap
    assert np.median(large) > 2.5 * np.median(small)


def test_longitudinal_change_is_in_the_two_studies(records):
    for r in _by(records, "longitudinal"):
        index = int(r["id"].split("-")[2])
        case = sample_case(0, "train", index)
        assert r["image"] == [f"images/train/{index:06d}_prior_frontal.png", f"images/train/{index:06d}_frontal.png"]
        area = {}
        for view, f in (("prior_frontal", case["prior"]["findings"]), ("frontal", case["findings"])):
            area[view] = int((_nodule_render_diff(case, view) > 0.15).sum()) if f["nodule"] else 0
        p, c = area["prior_frontal"], area["frontal"]
        expected = {"new": p == 0 < c, "resolved": c == 0 < p, "none": p == c == 0,
                    "grown": 0 < p and c > 2 * p, "stable": 0 < p and 0.6 < c / max(p, 1) < 1.6}
        assert expected[r["answer"]], (r["id"], r["answer"], p, c)
        assert f"Prior report: {report_text(case['prior']['findings']).replace(chr(10), ' ')}" in \
            r["conversations"][0]["value"]


def _lung_dark_ratio(a: np.ndarray) -> dict[str, float]:
    """Dark (aerated lung) pixels in the lower vs the upper chest, per image half."""
    dark = a < 0.35
    return {half: dark[32:52, sl].sum() / max(dark[14:32, sl].sum(), 1)
            for half, sl in (("image_left", slice(0, 32)), ("image_right", slice(32, 64)))}


def test_effusion_fills_the_lung_base_on_its_side(medsynth, records):
    hits, n = 0, 0
    lower_mean = {True: [], False: []}
    for r in _by(records, "closed", "closed-effusion"):
        a = _img64(medsynth, r["image"])
        ratio = _lung_dark_ratio(a)
        eff = r["findings"]["effusion"]
        for half, side in (("image_left", "right"), ("image_right", "left")):
            has = eff is not None and eff["side"] == side
            hits += (ratio[half] < 0.55) == has
            n += 1
            cols = slice(8, 26) if half == "image_left" else slice(38, 56)
            lower_mean[has].append(a[40:50, cols].mean())
    assert hits / n >= 0.95, hits / n
    assert np.mean(lower_mean[True]) > np.mean(lower_mean[False]) + 0.15


def _heart_extent_ratios(a: np.ndarray) -> dict[str, float]:
    """Per image half: widest bright heart/mediastinum run from the midline at the heart
    rows, divided by the distance from the midline to the lung's outer edge."""
    row = a[20:37].min(0)  # lungs above the heart and any fluid (min: a nodule cannot hide them)

    def walk(x: int, step: int, bright: bool) -> int:
        while 0 <= x + step < 64 and (row[x + step] > 0.35) == bright:
            x += step
        return x

    med_left, med_right = walk(32, -1, True), walk(32, 1, True)  # mediastinum
    mid = (med_left + med_right) / 2.0
    edges = {"image_left": walk(med_left - 1, -1, False), "image_right": walk(med_right + 1, 1, False)}
    out = {}
    for half, step in (("image_left", -1), ("image_right", 1)):
        widest = 0
        for y in range(38, 47):
            x, run = int(round(mid)), 0
            while 0 <= x < 64 and a[y, x] > 0.45:
                x += step
                run += 1
            widest = max(widest, run)
        out[half] = widest / abs(edges[half] - mid)
    return out


def test_heart_width_reflects_cardiomegaly(medsynth, records):
    hits, n = 0, 0
    for r in _by(records, "closed", "closed-cardiomegaly"):
        f = r["findings"]
        ratios = _heart_extent_ratios(_img64(medsynth, r["image"]))
        # measure on the side without fluid (an effusion merges with the heart shadow);
        # the heart sits left of the midline, so each side has its own cut-off
        for half, side, cut in (("image_left", "right", 0.45), ("image_right", "left", 0.65)):
            if f["effusion"] and f["effusion"]["side"] == side:
                continue
            hits += (ratios[half] > cut) == f["cardiomegaly"]
            n += 1
    assert hits / n >= 0.97, hits / n


def test_lateral_view_shows_heart_size(medsynth, records):
    # anterior lower chest (image left): the enlarged heart covers more of the aerated lung
    dark = {True: [], False: []}
    for r in _by(records, "caption", "caption-lateral"):
        a = _img64(medsynth, r["image"])
        if not r["findings"]["effusion"]:
            dark[r["findings"]["cardiomegaly"]].append((a[36:46, 18:34] < 0.35).mean())
    assert len(dark[True]) > 30 and len(dark[False]) > 30
    assert max(dark[True]) < 0.03 < min(dark[False])


def test_liver_lesion_is_a_dark_spot_in_the_liver(medsynth, records):
    hits, n = 0, 0
    for r in _by(records, "closed", "closed-liver-lesion"):
        a = _img64(medsynth, r["image"])
        dark = (a[22:36, 15:29] < 0.4).sum()  # a box inside the liver (image left = patient right)
        hits += (dark >= 4) == (r["answer"] == "yes")
        n += 1
    assert n > 30 and hits / n >= 0.95, hits / n


def test_brain_mass_side_is_where_the_bright_spot_is(medsynth, records):
    hits, n = 0, 0
    for r in _by(records, "closed", "closed-brain-mass"):
        a = _img64(medsynth, r["image"])
        bright = a[18:46, 14:50] > 0.75
        left_img, right_img = bright[:, :18].sum(), bright[:, 18:].sum()
        mass = r["findings"]["brain_mass"]
        if mass is None:
            ok = max(left_img, right_img) < 4
        else:  # patient left = image right
            ok = (right_img > left_img + 8) if mass["side"] == "left" else (left_img > right_img + 8)
        hits += ok
        n += 1
    assert n > 30 and hits / n >= 0.95, hits / n


def test_tumor_patches_are_crowded_with_dark_nuclei(medsynth, records):
    frac = {"yes": [], "no": []}
    for r in _by(records, "closed", "closed-tumor"):
        a = _img64(medsynth, r["image"], "RGB")
        frac[r["answer"]].append((a[..., 0] < 0.6).mean())  # hematoxylin: low red
    assert len(frac["yes"]) > 20 and len(frac["no"]) > 20
    assert min(frac["yes"]) > max(frac["no"]) + 0.1


# ---------------------------------------------------------------- CLI

def test_cli_prints_counts(tmp_path, capsys):
    main(["--root", str(tmp_path / "cli"), "--n-train", "3", "--n-val", "1", "--n-test", "1",
          "--image-size", "32"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"root", "train", "val", "test"}
    assert sum(out["train"].values()) == len(read_jsonl(tmp_path / "cli" / "train.jsonl"))


def test_a_patient_series_holds_every_study_oldest_first_and_reports_the_current_one(records, medsynth):
    series = _by(records, "series_report")
    assert len(series) == len(_by(records, "longitudinal")) > 0  # every patient with a prior has a series
    for r in series:
        index = int(r["id"].split("-")[2])
        case = sample_case(0, "train", index)
        older = [f"images/train/{index:06d}_older{k:02d}_frontal.png" for k in range(len(case["older"]))]
        assert 3 <= len(older) <= 16
        assert r["image"] == older + [f"images/train/{index:06d}_{v}.png" for v in
                                      ("prior_frontal", "prior_lateral", "frontal", "lateral")]
        assert all((medsynth / p).is_file() for p in r["image"])
        question, answer = (t["value"] for t in r["conversations"])
        assert question.count("<image>") == len(r["image"])
        assert question.count("Report: ") == len(older) + 1  # every earlier study's report, none for the current
        assert answer == report_text(case["findings"]) + "\nComparison: " + CHANGE_SENTENCES[case["change"]]
    # older follow-ups are drawn anew: not copies of the prior image
    r = series[0]
    assert (medsynth / r["image"][0]).read_bytes() != (medsynth / r["image"][-4]).read_bytes()


def test_a_longitudinal_report_reads_the_prior_study_and_states_the_change(records):
    reports = _by(records, "longitudinal_report")
    assert len(reports) == len(_by(records, "longitudinal")) > 0  # every patient with a prior study
    for r in reports:
        index = int(r["id"].split("-")[2])
        case = sample_case(0, "train", index)
        # as MIMIC-CXR's longitudinal items: the prior frontal image and report, then the current views
        assert r["image"] == [f"images/train/{index:06d}_{v}.png" for v in ("prior_frontal", "frontal", "lateral")]
        question, answer = (t["value"] for t in r["conversations"])
        prior = report_text(case["prior"]["findings"]).replace("\n", " ")
        assert question.startswith(f"Prior study:\n<image>\nPrior report: {prior}\nCurrent study:\n<image>\n<image>\n")
        assert answer == report_text(case["findings"]) + "\nComparison: " + CHANGE_SENTENCES[case["change"]]
        assert r["answer"] == case["change"] and findings_from_report(answer) == r["findings"]


def _records_without_images(split: str, indices: range) -> list[dict]:
    """Records of many cases, fast: the images' paths without drawing them (records read no pixels)."""
    out = []
    for i in indices:
        case = sample_case(0, split, i)
        out += case_records(case, 0, {v: image_path(split, i, v) for v in case_views(case)})
    return out


def test_case_views_name_what_render_case_draws():
    cases = [sample_case(0, "train", i) for i in range(60)]
    kinds = {(c["modality"], bool(c.get("prior")), bool(c.get("older"))) for c in cases}
    assert {("cxr", True, True), ("cxr", False, False), ("ct", False, False), ("pathology", False, False)} <= kinds
    for case in cases:
        assert case_views(case) == list(render_case(case, 0, 16))


def test_multiple_choice_options_do_not_give_the_answer_away():
    """Guessing without the image from the stem and the four options: the best guess learnt on 6,000 cases
    (the most frequent answer per stem and option set), scored on 3,000 other cases, is right at most 0.30
    of the time for the modality question (chance 0.25) and 0.40 for the finding question, where co-occurring
    chest findings leave a hint (MedSynth 2, which padded finding questions with never-drawn findings: 0.51)."""
    from medgpt_oss.eval.benchmarks.medsynth import answer_text, prior_key

    seen: dict[tuple, Counter] = defaultdict(Counter)
    for r in _by(_records_without_images("train", range(6000)), "mcq"):
        seen[prior_key(r)][answer_text(r)] += 1
    held_out = _by(_records_without_images("val", range(3000)), "mcq")
    right: dict[str, list[bool]] = defaultdict(list)
    for r in held_out:
        guess = seen[prior_key(r)].most_common(1)
        right[prior_key(r)[0]].append(bool(guess) and guess[0][0] == answer_text(r))
    limit = {"<image>\nWhat is the imaging modality of this image?": 0.30,
             "<image>\nWhich finding is present in this image?": 0.40}
    assert set(right) == set(limit)
    for stem, hits in right.items():
        assert len(hits) > 400 and np.mean(hits) <= limit[stem], (stem, np.mean(hits), len(hits))
    # and the image decides: the answer is a finding the case has, or "No abnormality" for a normal case
    finding_of = {name: key for key, name in FINDING_NAMES.items()}
    for r in held_out:
        if r["id"].endswith("mcq-finding"):
            present = [k for k, v in r["findings"].items() if v]
            assert finding_of.get(answer_text(r)) in present if present else answer_text(r) == NO_FINDING
            assert not any(finding_of.get(o) in present for o in r["options"].values() if o != answer_text(r))


def test_series_are_the_long_samples_of_the_long_context_mix(records, tiny_tokenizer):
    from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor
    from medgpt_oss.harmony import IMAGE_TOKEN

    spec = ModelInputSpec(tiny_tokenizer, IMAGE_TOKEN, 64, 64, (0.5,) * 3, (0.5,) * 3)
    processor = SampleProcessor(spec, ".")
    tasks = ("series_report", "longitudinal", "longitudinal_report")
    lengths = {t: [processor.sample_length(r) for r in _by(records, t)] for t in tasks}
    assert max(lengths["series_report"]) > 2000 > 4 * max(lengths["longitudinal"])
    # the longitudinal report fits the instruct stage's rows (512 tokens at 16 tokens per image, the demo's)
    assert max(lengths["longitudinal_report"]) - 3 * 64 + 3 * 16 <= 512
