"""Each published-format source on fixture files in its exact schema: ids, tasks, splits, turns, meta, skips."""

from __future__ import annotations

import pytest

from tests.fixtures_formats import (write_iu_kaggle, write_iu_r2gen, write_llava, write_mimic, write_mimic_r2gen,
                              write_pathvqa, write_pmc_oa, write_pmc_vqa, write_qa50, write_roco, write_slake,
                              write_vqa_rad)
from medgpt_oss.data.published.layout import Skip, has_bad_text
from medgpt_oss.data.sources.base import SourceLayoutError
from medgpt_oss.data.sources.captions import CAPTION_PROMPTS, PMCOACaptions, ROCOCaptions
from medgpt_oss.data.sources.iu_xray import IUXrayKaggle, IUXrayR2Gen
from medgpt_oss.data.sources.llava import LLaVAConversations, LLaVAMedQA50
from medgpt_oss.data.sources.mimic_cxr import MIMICCXR, MIMICCXRR2Gen
from medgpt_oss.data.sources.pathvqa import PathVQA
from medgpt_oss.data.sources.pmc_vqa import PMCVQA
from medgpt_oss.data.sources.slake import SLAKE
from medgpt_oss.data.sources.vqa_rad import VQARAD


def split_items(source):
    items = list(source.records())
    records = {r.id: r for r in items if not isinstance(r, Skip)}
    skips = {s.id: s.kind for s in items if isinstance(s, Skip)}
    assert len(records) + len(skips) == len(items), "duplicate ids"
    return records, skips


def test_vqa_rad_keeps_answers_as_published_and_strips_answer_type(tmp_path):
    records, skips = split_items(VQARAD(write_vqa_rad(tmp_path)))
    assert sorted(records) == ["vqa_rad-1", "vqa_rad-10", "vqa_rad-11", "vqa_rad-2", "vqa_rad-3"]
    assert skips == {"vqa_rad-12": "missing_field"}
    first = records["vqa_rad-1"]  # answer_type "CLOSED " (trailing space) in the file
    assert (first.task, first.split, first.meta["answer_type"]) == ("closed", "train", "closed")
    assert first.conversations == [{"from": "human", "value": "<image>\nIs there a pneumothorax?"},
                                   {"from": "gpt", "value": "Yes"}]  # original case, not normalised to "yes"
    assert first.images == [tmp_path / "images" / "synpic100.jpg"]
    assert [records[i].split for i in ("vqa_rad-10", "vqa_rad-11")] == ["test", "test"]
    assert records["vqa_rad-11"].task == "open" and records["vqa_rad-11"].conversations[1]["value"] == "Left lower lobe"


@pytest.mark.parametrize("language, expected, other", [
    ("en", {"slake-100": ("train", "closed"), "slake-102": ("train", "open"), "slake-200": ("val", "open"),
            "slake-300": ("test", "closed")}, ["slake-101", "slake-201"]),
    ("zh", {"slake-101": ("train", "closed"), "slake-201": ("val", "open")},
     ["slake-100", "slake-102", "slake-200", "slake-300"]),
])
def test_slake_selects_language_and_keeps_semantic_meta(tmp_path, language, expected, other):
    records, skips = split_items(SLAKE(write_slake(tmp_path), language=language))
    assert {k: (r.split, r.task) for k, r in records.items()} == expected
    # the other language is counted as an expected skip, never silently dropped
    assert sorted(skips) == other and set(skips.values()) == {"other_language"}
    rec = records[next(iter(expected))]
    assert rec.meta["q_lang"] == language
    assert {k: rec.meta[k] for k in ("modality", "content_type", "location")} == \
        {"modality": "X-Ray", "content_type": "Organ", "location": "Lung"}
    assert rec.images == [tmp_path / "imgs" / f"xmlab{rec.meta['img_id']}" / "source.jpg"]
    if language == "zh":
        assert records["slake-201"].conversations[1]["value"] == "心脏"


def test_pathvqa_pairs_ith_label_with_ith_question(tmp_path):
    records, skips = split_items(PathVQA(write_pathvqa(tmp_path)))
    assert sorted(records) == ["pathvqa-test_0001-0", "pathvqa-train_0001-0", "pathvqa-train_0001-1",
                               "pathvqa-val_0001-0"]
    assert skips == {"pathvqa-train_0002": "label_count"}
    open_q, closed_q = records["pathvqa-train_0001-0"], records["pathvqa-train_0001-1"]
    assert (open_q.task, open_q.conversations[1]["value"]) == ("open", "squamous cell carcinoma")
    assert (closed_q.task, closed_q.conversations[1]["value"]) == ("closed", "yes")
    assert open_q.images == [tmp_path / "images" / "train" / "train_0001.jpg"]
    assert records["pathvqa-val_0001-0"].split == "val"


def test_pmc_vqa_builds_mcq_with_letter_and_text(tmp_path):
    records, skips = split_items(PMCVQA(write_pmc_vqa(tmp_path)))
    assert sorted(records) == ["pmc_vqa-test-0", "pmc_vqa-train-0"] and skips == {"pmc_vqa-train-1": "bad_answer"}
    rec = records["pmc_vqa-train-0"]
    assert rec.task == "mcq" and rec.meta["options"] == {"A": "CT", "B": "MRI", "C": "X-ray", "D": "US"}
    assert rec.conversations[0]["value"] == ("<image>\nWhat imaging modality is this?\nA. CT\nB. MRI\nC. X-ray\nD. US\n"
                                             "Answer with the letter of the correct option.")
    assert rec.conversations[1]["value"] == "B. MRI"


def test_caption_sources(tmp_path):
    records, skips = split_items(PMCOACaptions(write_pmc_oa(tmp_path / "pmc")))
    assert {k: r.split for k, r in records.items()} == {"pmc_oa-PMC10_F1": "train", "pmc_oa-PMC11_F2": "val"}
    rec = records["pmc_oa-PMC10_F1"]
    assert rec.task == "caption" and rec.conversations[1]["value"] == "CT of the abdomen showing a mass."
    assert rec.conversations[0]["value"].removeprefix("<image>\n") in CAPTION_PROMPTS

    records, skips = split_items(ROCOCaptions(write_roco(tmp_path / "roco")))
    assert {k: r.split for k, r in records.items()} == {
        "roco-ROCOv2_2023_train_000001": "train", "roco-ROCOv2_2023_train_000002": "train",
        "roco-ROCOv2_2023_valid_000001": "val", "roco-ROCOv2_2023_test_000001": "test"}
    # the Latin-1 byte survives decoding as a marker, so prepare can skip that row alone
    assert has_bad_text(records["roco-ROCOv2_2023_train_000002"].conversations)
    assert not has_bad_text(records["roco-ROCOv2_2023_train_000001"].conversations)
    assert records["roco-ROCOv2_2023_valid_000001"].images == [tmp_path / "roco/valid/ROCOv2_2023_valid_000001.jpg"]


def test_pmc_oa_reports_bad_lines_by_line(tmp_path):
    _, skips = split_items(PMCOACaptions(write_pmc_oa(tmp_path)))
    assert skips == {"pmc_oa-train.jsonl:2": "bad_json_line", "pmc_oa-PMC11_F2": "missing_field"}


def test_llava_json_and_jsonl(tmp_path):
    expected_tasks = write_llava(tmp_path)
    records, skips = split_items(LLaVAConversations(tmp_path, split_files={"train": "train.json", "val": "val.jsonl"}))
    assert {k: r.task for k, r in records.items()} == expected_tasks and not skips
    assert records["l2"].images == [tmp_path / "images/a.png", tmp_path / "images/b.jpg"]
    assert records["l3"].images == [] and records["l5"].split == "val"
    assert records["l5"].meta == {"domain": {"ct_scan": True}}
    records, _ = split_items(LLaVAConversations(tmp_path, task="caption"))
    assert {r.task for r in records.values()} == {"caption"}


def test_llava_med_qa50(tmp_path):
    records, skips = split_items(LLaVAMedQA50(write_qa50(tmp_path)))
    assert sorted(records) == ["llava_med_qa50-0", "llava_med_qa50-1"] and not skips
    first, second = records["llava_med_qa50-0"], records["llava_med_qa50-1"]
    assert first.conversations[0]["value"] == "What is the organ in the image?\n<image>"  # placeholder kept in place
    assert second.conversations[0]["value"] == "<image>\nDescribe the image."             # added where missing
    assert (first.split, first.task, first.meta["type"], second.meta["type"]) == \
        ("test", "open", "conversation", "detailed_description")
    assert first.meta["domain"]["histology"] is True


def test_iu_xray_r2gen_multiview_and_empty_findings(tmp_path):
    records, skips = split_items(IUXrayR2Gen(write_iu_r2gen(tmp_path)))
    assert {k: r.split for k, r in records.items()} == {"iu_xray-CXR1_IM-0001": "train",
                                                        "iu_xray-CXR3_IM-0003": "val", "iu_xray-CXR4_IM-0004": "test"}
    assert skips == {"iu_xray-CXR2_IM-0002": "empty_findings"}
    rec = records["iu_xray-CXR1_IM-0001"]
    assert rec.task == "multiview_report" and rec.conversations[0]["value"].count("<image>") == 2
    assert rec.conversations[1]["value"] == "The lungs are clear. No effusion."


def test_iu_xray_kaggle_orders_frontal_first(tmp_path):
    records, skips = split_items(IUXrayKaggle(write_iu_kaggle(tmp_path)))
    assert sorted(records) == ["iu_xray-1", "iu_xray-2"] and skips == {"iu_xray-3": "empty_findings"}
    two = records["iu_xray-1"]
    assert two.task == "multiview_report" and two.meta["projections"] == ["frontal", "lateral"]
    assert [p.name for p in two.images] == ["1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png"]
    assert records["iu_xray-2"].task == "report" and len(records["iu_xray-2"].images) == 1
    with_imp = split_items(IUXrayKaggle(tmp_path, with_impression=True))[0]
    assert with_imp["iu_xray-2"].conversations[1]["value"] == "Borderline cardiomegaly. Impression: No acute findings."


def test_mimic_cxr_views_priors_by_date_and_splits(tmp_path):
    write_mimic(tmp_path)
    records, skips = split_items(MIMICCXR(tmp_path))
    assert {k: (r.task, r.split) for k, r in records.items()} == {
        "mimic_cxr-s3-report": ("report", "train"), "mimic_cxr-s3-multiview": ("multiview_report", "train"),
        "mimic_cxr-s1-report": ("report", "train"), "mimic_cxr-s1-multiview": ("multiview_report", "train"),
        "mimic_cxr-s1-longitudinal": ("longitudinal", "train"),
        "mimic_cxr-s2-report": ("report", "test"), "mimic_cxr-s2-longitudinal": ("longitudinal", "test"),
        "mimic_cxr-s4-report": ("report", "val"),
    }
    assert skips == {"mimic_cxr-s5": "no_report_section", "mimic_cxr-s6": "no_frontal_view"}
    files = tmp_path / "files" / "p10" / "p10000032"
    # the prior of s1 is s3 (earlier date), not s2 (later) nor the metadata file's row order
    long1 = records["mimic_cxr-s1-longitudinal"]
    assert long1.meta["prior_study_id"] == "3" and long1.images == [files / "s3/d3a.jpg", files / "s1/d1a.jpg"]
    assert long1.conversations == [
        {"from": "human", "value": "Prior study:\n<image>\nPrior report: Mild edema.\nCurrent study:\n<image>\n"
                                   "Write the findings section of the radiology report for this chest X-ray."},
        {"from": "gpt", "value": "Lungs clear."}]
    assert records["mimic_cxr-s2-longitudinal"].meta["prior_study_id"] == "1"
    assert records["mimic_cxr-s3-multiview"].images == [files / "s3/d3a.jpg", files / "s3/d3b.jpg"]  # PA, then LL
    impression = split_items(MIMICCXR(tmp_path, section="impression", tasks=["report"]))[0]
    assert impression["mimic_cxr-s5-report"].conversations[1]["value"] == "No change."


def test_mimic_cxr_r2gen_annotation(tmp_path):
    records, skips = split_items(MIMICCXRR2Gen(write_mimic_r2gen(tmp_path)))
    assert {k: (r.task, r.split) for k, r in records.items()} == {
        "mimic_cxr-s20-report": ("report", "train"), "mimic_cxr-s20-multiview": ("multiview_report", "train"),
        "mimic_cxr-s21-report": ("report", "test"), "mimic_cxr-s21-longitudinal": ("longitudinal", "test")}
    assert not skips
    assert "Prior report: Prior: clear lungs." in records["mimic_cxr-s21-longitudinal"].conversations[0]["value"]


def test_layout_errors_name_the_missing_files(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SourceLayoutError, match=r"(?s)trainset.json.*osf.io"):
        list(VQARAD(tmp_path).records())
    with pytest.raises(SourceLayoutError, match="does not exist"):
        list(SLAKE(tmp_path / "nowhere").records())
