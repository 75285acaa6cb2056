"""Benchmark adapters read fixtures written in each data set's published schema.

The writers below reproduce the published field names, nesting and quirks (listed per
benchmark in docs/evaluation.md); the content is our own. Other eval tests import them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from medgpt_oss.data.report_text import report_section
from medgpt_oss.eval.benchmarks.base import BenchmarkLayoutError, EvalItem, MalformedItem
from medgpt_oss.eval.benchmarks.image_mcq import MMMU, PMCVQA, MedFrameQA, MedXpertQA
from medgpt_oss.eval.benchmarks.medsynth import MedSynth
from medgpt_oss.eval.benchmarks.reports import IUXray, MIMICCXR
from medgpt_oss.eval.benchmarks.text_qa import MedMCQA, MedQA, Medbullets, MMLUMed, PubMedQA, split_answer_choices
from medgpt_oss.eval.benchmarks.vqa import SLAKE, VQARAD, PathVQA


def image(path: Path, fmt: str = "PNG", color=(90, 90, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), color).save(path, fmt)
    return path


def image_bytes(color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, "PNG")
    return buf.getvalue()


def dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def jsonl(path: Path, records, extra_lines=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


# -- writers in the published schemas ------------------------------------------------------------

def write_vqa_rad(root: Path) -> Path:
    image(root / "images/synpic100.jpg", "JPEG")
    rows = [
        (1, "Yes", "CLOSED", "Is the heart enlarged?"),
        (2, "no", "CLOSED ", "Is there a pneumothorax?"),  # the OSF trainset's trailing-space quirk
        (3, "Right upper lobe", "OPEN", "Where is the mass?"),
        (4, "3.4 cm", "OPEN", "How large is the mass?"),
    ]
    dump(root / "testset.json", [
        {"qid": qid, "image_name": "synpic100.jpg", "image_organ": "CHEST", "answer": a, "answer_type": t,
         "question_type": "PRES", "question": q, "phrase_type": "freeform"} for qid, a, t, q in rows])
    return root


def write_slake(root: Path) -> Path:
    image(root / "imgs/xmlab7/source.jpg", "JPEG")
    base = {"img_id": 7, "img_name": "xmlab7/source.jpg", "location": "Lung", "modality": "X-Ray",
            "base_type": "vqa", "triple": ["vhead", "_", "_"], "content_type": "Modality"}
    dump(root / "test.json", [
        {**base, "qid": 11, "question": "What modality is used?", "answer": "X-Ray", "q_lang": "en",
         "answer_type": "OPEN"},
        {**base, "qid": 12, "question": "Is the lung healthy?", "answer": "No", "q_lang": "en",
         "answer_type": "CLOSED"},
        {**base, "qid": 13, "question": "Which organ is abnormal, heart or lung?", "answer": "Lung", "q_lang": "en",
         "answer_type": "CLOSED"},
        {**base, "qid": 14, "question": "这是什么模态?", "answer": "X-Ray", "q_lang": "zh", "answer_type": "OPEN"},
    ])
    return root


def write_pathvqa(root: Path) -> Path:
    image(root / "images/test/test_0001.jpg", "JPEG")
    dump(root / "pvqa_test.json", [
        {"img_id": "test_0000", "labelf": {"pvqa": []}, "sentf": {"pvqa": []}},
        {"img_id": "test_0001", "labelf": {"pvqa": [{"squamous cell carcinoma": 1}, {"yes": 1}]},
         "sentf": {"pvqa": ["What is shown?", "Is this carcinoma?"]}},
        {"img_id": "test_0002", "labelf": {"pvqa": [{"no": 1}]}, "sentf": {"pvqa": ["Is it a?", "Is it b?"]}},
    ])
    return root


def write_medqa(root: Path) -> Path:
    recs = [{"question": f"Question {i}?", "answer": "x", "meta_info": "step1", "answer_idx": "ABCD"[i % 4],
             "options": {"A": "Alpha", "B": "Beta", "C": "Gamma", "D": "Delta"}, "metamap_phrases": ["x"]}
            for i in range(3)]
    jsonl(root / "phrases_no_exclude_test.jsonl", recs, extra_lines=["{not json\n"])
    return root


def write_medmcqa_converted(root: Path) -> Path:
    jsonl(root / "medmcqa_input.jsonl", [
        {"id": "m1", "question": "Which is true:\nAnswer Choices: (A) one (B) two (C) three (D) four",
         "label": ["C"], "label_rationale": None, "subject_name": "Physiology", "topic_name": None},
        {"id": "m2", "question": "No choices here", "label": ["A"], "subject_name": "Anatomy", "topic_name": None},
    ])
    return root


def write_pubmedqa(root: Path) -> Path:
    entry = {"CONTEXTS": ["Background sentence.", "Result sentence."], "LABELS": ["BACKGROUND", "RESULTS"],
             "MESHES": ["Humans"], "YEAR": "2011", "reasoning_required_pred": "yes",
             "reasoning_free_pred": "yes", "LONG_ANSWER": "Because."}
    dump(root / "ori_pqal.json", {
        "101": {**entry, "QUESTION": "Does A cause B?", "final_decision": "yes"},
        "102": {**entry, "QUESTION": "Does C cause D?", "final_decision": "maybe"},
        "103": {**entry, "QUESTION": "Train only?", "final_decision": "no"},
    })
    dump(root / "test_ground_truth.json", {"101": "yes", "102": "maybe"})
    return root


def write_medxpertqa(root: Path) -> Path:
    image(root / "images/MM-0-a.jpeg", "JPEG")
    image(root / "images/MM-0-b.png")
    options = [{"letter": L, "content": f"choice {L}"} for L in "ABCDE"]
    q = "A patient falls. What next?\nAnswer Choices: " + " ".join(f"({o['letter']}) {o['content']}" for o in options)
    jsonl(root / "medxpertqa_mm_input.jsonl", [
        {"id": "MM-0", "question": q, "options": options, "label": ["D"],
         "images": [{"image_path": "MM-0-a.jpeg"}, {"image_path": "MM-0-b.png"}],
         "medical_task": "Treatment", "body_system": "Skeletal", "question_type": "Reasoning"}])
    jsonl(root / "medxpertqa_text_input.jsonl", [
        {"id": "Text-1", "question": q, "options": options, "label": ["B"], "medical_task": "Diagnosis",
         "body_system": "Digestive", "question_type": "Understanding"}])
    return root


def write_iu_xray(root: Path) -> Path:
    for i in range(2):
        image(root / f"images/CXR1_IM-1/{i}.png")
    dump(root / "annotation.json", {
        "train": [], "val": [],
        "test": [{"id": "CXR1_IM-1", "report": "The heart is normal in size. No pleural effusion.",
                  "image_path": ["CXR1_IM-1/0.png", "CXR1_IM-1/1.png"], "split": "test"},
                 {"id": "CXR2_IM-2", "report": "", "image_path": ["CXR2_IM-2/0.png"], "split": "test"}],
    })
    return root


def write_mimic(root: Path) -> Path:
    def study(sid, subject, report, split):
        paths = [f"p10/p{subject}/s{sid}/{sid}-f.jpg", f"p10/p{subject}/s{sid}/{sid}-l.jpg"]
        for p in paths:
            image(root / "images" / p, "JPEG")
        return {"id": f"{sid}-f", "image_path": paths, "view": ["LATERAL", "PA"], "study_id": sid,
                "subject_id": subject, "report": report, "split": split}

    dump(root / "annotation.json", {
        "train": [study("50000001", "10000032", "Prior: small effusion.", "train")],
        "val": [],
        "test": [study("50000002", "10000032", "Effusion has resolved.", "test"),
                 study("50000003", "10000099", "Lungs are clear.", "test")],
    })
    (root / "files/p10/p10000032").mkdir(parents=True)
    (root / "files/p10/p10000032/s50000002.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n"
        " FINDINGS: Effusion has resolved.\n\n IMPRESSION: \n No acute cardiopulmonary process.\n")
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"])
        w.writerow(["a", "10000032", "50000001", "PA", "21800506", "213014.531"])
        w.writerow(["b", "10000032", "50000002", "PA", "21800610", "101500.000"])
        w.writerow(["c", "10000099", "50000003", "PA", "21810101", "080000.000"])
    return root


def write_mmmu(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(subject, n):
        return pa.table({
            "id": [f"validation_{subject}_{i}" for i in range(1, n + 1)],
            "question": [f"Look at <image 1>. Which is it? ({i})" for i in range(n)],
            "options": [str(["CT", "MRI", "X-ray", "US"])] * n,
            "answer": ["B"] * n,
            "question_type": ["multiple-choice"] * n,
            "image_1": [{"bytes": image_bytes(), "path": "a.png"}] * n,
            "image_2": pa.array([None] * n, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "subfield": ["Radiology"] * n,
        })

    for subject, n in (("Clinical_Medicine", 2), ("Art", 1)):
        (root / subject).mkdir(parents=True, exist_ok=True)
        pq.write_table(table(subject, n), root / subject / "validation-00000-of-00001.parquet")
    return root


def write_medframeqa(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    img = {"bytes": image_bytes((200, 0, 0)), "path": "f.png"}
    pq.write_table(pa.table({
        "question_id": ["q1"], "question": ["Across these frames, what changes?"],
        "options": [["A. grows", "B. shrinks", "C. same", "D. gone"]], "answer": ["A"],
        "image_1": [img], "image_2": [img], "system": ["Cardio"], "modality": ["US"],
    }), root / "test-00000.parquet")
    return root


# -- tests ---------------------------------------------------------------------------------------

def ids_and_kinds(items):
    return [(i.id, i.kind if isinstance(i, EvalItem) else "MALFORMED") for i in items]


def test_vqa_rad_reads_the_test_split_and_splits_closed_open(tmp_path):
    items = list(VQARAD(write_vqa_rad(tmp_path), name="vqa_rad").items())
    assert ids_and_kinds(items) == [("vqa_rad-1", "closed"), ("vqa_rad-2", "closed"),
                                    ("vqa_rad-3", "open"), ("vqa_rad-4", "open")]
    assert items[0].gold == "yes" and items[1].groups["type"] == "closed"  # "CLOSED " stripped
    assert items[0].images == ["images/synpic100.jpg"]


def test_slake_keeps_english_and_scores_non_yes_no_closed_as_exact_match(tmp_path):
    items = list(SLAKE(write_slake(tmp_path), name="slake").items())
    assert [i.id for i in items] == ["slake-11", "slake-12", "slake-13"]
    organ = items[2]
    assert organ.kind == "open" and organ.groups == {"type": "closed", "modality": "X-Ray"}
    bench = SLAKE(tmp_path)
    assert bench.score(organ, "Lung.")["correct"] and not bench.score(organ, "Heart")["correct"]


def test_pathvqa_pairs_questions_with_labels_and_reports_mismatches(tmp_path):
    items = list(PathVQA(write_pathvqa(tmp_path)).items())
    assert ids_and_kinds(items) == [("pathvqa-test_0001-0", "open"), ("pathvqa-test_0001-1", "closed"),
                                    ("pathvqa-test_0002", "MALFORMED")]
    assert items[0].gold == "squamous cell carcinoma" and items[0].images == ["images/test/test_0001.jpg"]


def test_medqa_counts_a_broken_line_as_malformed(tmp_path):
    items = list(MedQA(write_medqa(tmp_path)).items())
    assert [type(i).__name__ for i in items] == ["EvalItem"] * 3 + ["MalformedItem"]
    assert items[1].gold == "B" and items[0].options["C"] == "Gamma"
    assert items[3].id == "medqa-line4"


def test_medmcqa_both_published_layouts(tmp_path):
    items = list(MedMCQA(write_medmcqa_converted(tmp_path / "conv")).items())
    assert items[0].options == {"A": "one", "B": "two", "C": "three", "D": "four"} and items[0].gold == "C"
    assert isinstance(items[1], MalformedItem) and "two options" in items[1].problem
    jsonl(tmp_path / "orig/dev.json", [{"id": "x", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
                                        "cop": 2, "choice_type": "single", "exp": "", "subject_name": "Anatomy",
                                        "topic_name": None}])
    (orig,) = MedMCQA(tmp_path / "orig").items()
    assert orig.gold == "B" and orig.options["D"] == "d"


def test_split_answer_choices():
    stem, options = split_answer_choices("Stem?\nAnswer Choices: (A) a b (B) (C) c) (C) last")
    assert stem == "Stem?" and options["A"] == "a b" and options["C"] == "last"


def test_pubmedqa_uses_the_test_ids_and_three_labels(tmp_path):
    items = list(PubMedQA(write_pubmedqa(tmp_path)).items())
    assert [(i.id, i.gold) for i in items] == [("pubmedqa-101", "yes"), ("pubmedqa-102", "maybe")]
    assert items[0].choices == ("yes", "no", "maybe") and "Background sentence." in items[0].question
    assert PubMedQA(tmp_path).score(items[1], "Maybe.")["correct"]


def test_medxpertqa_mm_and_text(tmp_path):
    write_medxpertqa(tmp_path)
    (mm,) = MedXpertQA(tmp_path, name="medxpertqa_mm").items()
    assert mm.images == ["images/MM-0-a.jpeg", "images/MM-0-b.png"] and mm.gold == "D"
    assert "Answer Choices" not in mm.question and mm.groups["body_system"] == "Skeletal"
    (text,) = MedXpertQA(tmp_path, files=["medxpertqa_text_input.jsonl"], name="medxpertqa_text").items()
    assert text.images == [] and text.gold == "B"


def test_mmlu_medbullets_pmc_vqa_csv_layouts(tmp_path):
    (tmp_path / "mmlu/test").mkdir(parents=True)
    with open(tmp_path / "mmlu/test/anatomy_test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Which bone?", "Femur", "Tibia", "Ulna", "Radius", "A"], ["bad row"]])
    items = list(MMLUMed(tmp_path / "mmlu", subjects=["anatomy"]).items())
    assert items[0].gold == "A" and isinstance(items[1], MalformedItem)
    with pytest.raises(BenchmarkLayoutError, match="clinical_knowledge_test.csv"):
        list(MMLUMed(tmp_path / "mmlu", subjects=["anatomy", "clinical_knowledge"]).items())

    with open(tmp_path / "medbullets_op4.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "answer", "opa", "opb", "opc", "opd", "answer_idx", "explanation", "link"])
        w.writeheader()
        w.writerow({"question": "Best next step?", "answer": "CT", "opa": "MRI", "opb": "CT", "opc": "US", "opd": "PET",
                    "answer_idx": "B", "explanation": "", "link": ""})
    (mb,) = Medbullets(tmp_path).items()
    assert mb.gold == "B" and len(mb.options) == 4

    image(tmp_path / "pmc/images/PMC1_fig.jpg", "JPEG")
    with open(tmp_path / "pmc/test_clean.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                                "Answer_label"])
        w.writeheader()
        w.writerow({"Figure_path": "PMC1_fig.jpg", "Question": "What modality?", "Answer": "CT",
                    "Choice A": "A:MRI", "Choice B": "B:CT", "Choice C": "C:US", "Choice D": "D:PET",
                    "Answer_label": "B"})
    (pmc,) = PMCVQA(tmp_path / "pmc").items()
    assert pmc.options == {"A": "MRI", "B": "CT", "C": "US", "D": "PET"} and pmc.images == ["images/PMC1_fig.jpg"]


def test_mmmu_filters_medical_subjects_and_decodes_images(tmp_path):
    items = list(MMMU(write_mmmu(tmp_path / "mmmu"), name="mmmu_med", image_cache=str(tmp_path / "cache")).items())
    assert [i.id for i in items] == ["mmmu_med-validation_Clinical_Medicine_1",
                                     "mmmu_med-validation_Clinical_Medicine_2"]
    item = items[0]
    assert item.options == {"A": "CT", "B": "MRI", "C": "X-ray", "D": "US"} and item.gold == "B"
    assert "<image 1>" not in item.question and len(item.images) == 1
    assert Image.open(item.images[0]).size == (24, 24)


def test_medframeqa_multi_frame(tmp_path):
    (item,) = MedFrameQA(write_medframeqa(tmp_path / "mf"), image_cache=str(tmp_path / "cache")).items()
    assert len(item.images) == 2 and item.options["A"] == "grows"
    assert item.groups == {"system": "Cardio", "modality": "US"}


def test_iu_xray_reports_empty_findings_as_malformed(tmp_path):
    items = list(IUXray(write_iu_xray(tmp_path), name="iu_xray").items())
    assert ids_and_kinds(items) == [("iu_xray-CXR1_IM-1", "report"), ("iu_xray-CXR2_IM-2", "MALFORMED")]
    assert len(items[0].images) == 2


def test_mimic_variants(tmp_path):
    root = write_mimic(tmp_path)
    findings = list(MIMICCXR(root, name="f").items())
    assert [i.gold for i in findings] == ["Effusion has resolved.", "Lungs are clear."]
    assert findings[0].images == ["images/p10/p10000032/s50000002/50000002-l.jpg"]  # the PA view, not the first
    (impression, missing) = MIMICCXR(root, name="i", section="impression").items()
    assert impression.gold == "No acute cardiopulmonary process." and isinstance(missing, MalformedItem)
    (longitudinal,) = MIMICCXR(root, name="l", views="all", with_prior=True).items()  # only the study with a prior
    assert longitudinal.question.count("<image>") == 3 == len(longitudinal.images)
    assert "Prior report: Prior: small effusion." in longitudinal.question
    assert longitudinal.images[0].endswith("50000001-l.jpg")
    assert report_section("FINDINGS: a.\nIMPRESSION: b c.\nRECOMMENDATION: d", "impression") == "b c."


def test_medsynth_test_split(medsynth_dir):
    items = list(MedSynth(medsynth_dir / "medsynth").items())
    kinds = {i.kind for i in items}
    assert kinds == {"closed", "open", "mcq", "report"} and not any(isinstance(i, MalformedItem) for i in items)
    mcq = next(i for i in items if i.kind == "mcq")
    assert mcq.gold in mcq.options and "<image>" in mcq.question


def test_medsynth_limit_per_task_and_finding_f1(medsynth_dir, tmp_path):
    """What the demo's old separate path scored is in the harness: N items per task, and reports' finding F1
    (with its interval, recomputed per item), per-task counts and unparseable answers."""
    from medgpt_oss.eval.benchmarks.medsynth import finding_f1
    from medgpt_oss.eval.runner import RunOptions, run_benchmark

    bench = MedSynth(medsynth_dir / "medsynth", tasks=["closed", "mcq", "report"], limit_per_task=2,
                     report_metrics={"meteor": False})
    items = list(bench.items())
    tasks = [i.groups["task"] for i in items]
    assert sorted(tasks) == ["closed", "closed", "mcq", "mcq", "report", "report"]
    reports = [i for i in items if i.kind == "report"]
    closed = [i for i in items if i.kind == "closed"]
    answers = {reports[0].id: reports[0].gold,                                    # every finding right
               reports[1].id: "Findings: There is a nodule in the left upper lobe. The heart is enlarged.",
               closed[0].id: closed[0].gold, closed[1].id: "Perhaps."}         # right; unparseable
    summary = run_benchmark(bench, RunOptions(out_dir=tmp_path, prompts={}, progress=False,
                                              bootstrap={"resamples": 200, "seed": 0}), predictions=answers)
    from medgpt_oss.data.medsynth.text import findings_from_report

    gold = [findings_from_report(r.gold) for r in reports]
    predicted = [gold[0], ["nodule", "cardiomegaly"]]
    assert summary["finding_f1"] == pytest.approx(finding_f1(predicted, gold))
    low, high = summary["finding_f1_ci95"]
    assert low <= summary["finding_f1"] <= high
    assert summary["n_by_task"] == {"closed": 2, "mcq": 2, "report": 2}
    assert summary["by_task"]["closed"]["accuracy"] == 0.5 and summary["by_task"]["closed"]["unparsed"] == 1
    assert summary["by_task"]["mcq"]["unparsed"] == 0  # missing predictions: wrong, not unparseable
    assert finding_f1([["nodule"]], [["nodule", "effusion"]]) == pytest.approx(2 / 3)
    assert finding_f1([[]], [[]]) == 1.0
    with pytest.raises(ValueError, match="limit_per_task"):
        MedSynth(medsynth_dir / "medsynth", limit_per_task=-1)


@pytest.mark.parametrize("cls,expected", [(VQARAD, "testset.json"), (SLAKE, "test.json"),
                                          (MedQA, "phrases_no_exclude"), (IUXray, "annotation.json"),
                                          (MMMU, "validation-"), (PubMedQA, "ori_pqal.json")])
def test_wrong_root_fails_at_once_with_the_expected_layout(tmp_path, cls, expected):
    with pytest.raises(BenchmarkLayoutError) as err:
        list(cls(tmp_path / "nowhere").items())
    assert "does not exist" in str(err.value) and expected in str(err.value) and "benchmark.root=" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkLayoutError, match=expected):
        list(cls(tmp_path / "empty").items())


def test_a_benchmark_of_questions_and_reports_counts_each(tmp_path):
    from medgpt_oss.eval.benchmarks.base import Benchmark

    rows = [{"id": f"q{i}", "kind": "closed", "correct": i < 3, "extracted": "yes"} for i in range(4)]
    rows += [{"id": "r1", "kind": "report", "output": "No pleural effusion.", "gold": "No pleural effusion."}]
    summary = Benchmark(tmp_path, report_metrics={"convention": "plain"}).summarize(rows)
    assert (summary["n"], summary["accuracy"], summary["n_reports"]) == (4, 0.75, 1)
    only_reports = Benchmark(tmp_path, report_metrics={"convention": "plain"}).summarize(rows[4:])
    assert only_reports["n"] == only_reports["n_reports"] == 1


def test_medsynth_prior_is_the_training_answer_to_the_same_question_without_any_image(tmp_path):
    """by_task.<task>.prior_accuracy: each test item answered, blind, with the answer the training split gives
    most often to the same question (multiple choice: the same stem and option set, whatever the letters)."""
    from medgpt_oss.eval.runner import RunOptions, run_benchmark

    def rec(rid, task, question, answer, options=None):
        r = {"id": rid, "task": task, "image": "images/x.png", "modality": "cxr", "answer": answer,
             "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
        if options:
            r["options"] = options
            r["conversations"][0]["value"] += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
        return r

    stem = "<image>\nWhich finding is present in this image?"
    train = [rec(f"t{i}", "closed", "<image>\nIs there a nodule?", a) for i, a in enumerate(["no", "no", "yes"])]
    train += [rec(f"m{i}", "mcq", stem, letter, dict(zip("ABCD", opts))) for i, (letter, opts) in enumerate([
        ("B", ["Tumor", "Normal tissue", "Necrosis", "Inflammation"]),
        ("A", ["Normal tissue", "Necrosis", "Tumor", "Inflammation"]),
        ("D", ["Tumor", "Necrosis", "Inflammation", "Normal tissue"])])]
    test = [rec("c1", "closed", "<image>\nIs there a nodule?", "no"),
            rec("c2", "closed", "<image>\nIs there a nodule?", "yes"),
            rec("c3", "closed", "<image>\nIs there a pleural effusion?", "no"),      # never asked in training
            rec("q1", "mcq", stem, "C", dict(zip("ABCD", ["Necrosis", "Tumor", "Normal tissue", "Inflammation"]))),
            rec("q2", "mcq", stem, "A", dict(zip("ABCD", ["Tumor", "Necrosis", "Inflammation", "Normal tissue"])))]
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images/x.png")
    bench = MedSynth(tmp_path, tasks=["closed", "mcq"])
    summary = run_benchmark(bench, RunOptions(out_dir=tmp_path / "run", prompts={}, progress=False,
                                              bootstrap={"resamples": 50, "seed": 0}), predictions={})
    assert bench.prior_correct == {"c1": True, "c2": False, "c3": False, "q1": True, "q2": False}
    assert summary["by_task"]["closed"]["prior_accuracy"] == pytest.approx(1 / 3)
    assert summary["by_task"]["mcq"]["prior_accuracy"] == 0.5


def test_medsynth_counts_wrong_letters_that_name_the_right_option(tmp_path):
    """by_task.mcq.wrong_letter_right_text: wrong answers whose reply names the right option's text under
    another letter (the finding was seen, the letter not bound to it) -- of by_task.mcq.wrong."""
    from medgpt_oss.eval.runner import RunOptions, run_benchmark

    options = dict(zip("ABCD", ["Tumor", "Lung nodule", "No abnormality", "Brain mass"]))
    question = "<image>\nWhich finding is present in this image?\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    test = [{"id": f"q{i}", "task": "mcq", "image": "images/x.png", "modality": "cxr", "answer": "B",
             "options": options, "conversations": [{"from": "human", "value": question},
                                                   {"from": "gpt", "value": "B. Lung nodule"}]} for i in range(4)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images/x.png")
    replies = {"q0": "B. Lung nodule", "q1": "C. Lung nodule", "q2": "A. Tumor", "q3": "D. lung nodule"}
    summary = run_benchmark(MedSynth(tmp_path, tasks=["mcq"]),
                            RunOptions(out_dir=tmp_path / "run", prompts={}, progress=False,
                                       bootstrap={"resamples": 50, "seed": 0}), predictions=replies)
    mcq = summary["by_task"]["mcq"]
    assert (mcq["accuracy"], mcq["wrong"], mcq["wrong_letter_right_text"]) == (0.25, 3, 2)
