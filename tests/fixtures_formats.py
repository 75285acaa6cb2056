"""Writers of small fixture data sets, each in its publisher's exact schema (see the sources' docstrings).

Every writer builds a few records with tiny generated images and returns what a
test needs to check the adapter: the ids it should produce, and the bad ones.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file


def image_bytes(fmt: str = "PNG", shade: int = 100, mode: str = "L", size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), shade if mode in ("L", "I;16") else (shade, 50, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, fmt: str = "PNG", shade: int = 100, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt, shade, mode))
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def dicom_bytes(pixels: bool = True) -> bytes:
    """pydicom's own CT_small.dcm, optionally with its pixel data removed (a header-only file)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if not pixels:
        del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


# -- VQA ---------------------------------------------------------------------------------------

def vqa_rad_entry(qid: int, image: str, question: str, answer, answer_type: str) -> dict:
    return {"qid": qid, "image_name": image, "image_organ": "CHEST", "answer": answer, "answer_type": answer_type,
            "question_type": "PRES", "question": question, "phrase_type": "freeform"}


def write_vqa_rad(root: Path) -> Path:
    """trainset.json (with the "CLOSED " quirk and mixed-case answers), testset.json, images/."""
    for name, shade in (("synpic100.jpg", 60), ("synpic200.jpg", 160)):
        write_image(root / "images" / name, "JPEG", shade)
    write_json(root / "trainset.json", [
        vqa_rad_entry(1, "synpic100.jpg", "Is there a pneumothorax?", "Yes", "CLOSED "),
        vqa_rad_entry(2, "synpic100.jpg", "is the heart enlarged?", "no", "CLOSED"),
        vqa_rad_entry(3, "synpic200.jpg", "What organ is shown?", "Lungs", "OPEN"),
    ])
    write_json(root / "testset.json", [
        vqa_rad_entry(10, "synpic200.jpg", "Is this a CT?", "yes", "CLOSED"),
        vqa_rad_entry(11, "synpic200.jpg", "Where is the lesion?", "Left lower lobe", "OPEN"),
        {"qid": 12, "image_name": "synpic200.jpg", "question": "Missing its answer_type", "answer": "x"},
    ])
    return root


def slake_entry(qid: int, img: int, lang: str, question: str, answer: str, answer_type: str) -> dict:
    return {"img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": question, "answer": answer,
            "q_lang": lang, "location": "Lung", "modality": "X-Ray", "answer_type": answer_type, "base_type": "vqa",
            "triple": ["vhead", "_", "_"], "qid": qid, "content_type": "Organ"}


def write_slake(root: Path) -> Path:
    """train/validate/test.json with English and Chinese questions in the same files; imgs/xmlabN/source.jpg."""
    for img in (1, 2):
        write_image(root / "imgs" / f"xmlab{img}" / "source.jpg", "JPEG", 40 * img)
        write_json(root / "imgs" / f"xmlab{img}" / "question.json", [])
    write_json(root / "train.json", [
        slake_entry(100, 1, "en", "Does the picture contain lung?", "Yes", "CLOSED"),
        slake_entry(101, 1, "zh", "图中有肺吗?", "是", "CLOSED"),
        slake_entry(102, 1, "en", "What modality is used?", "X-Ray", "OPEN"),
    ])
    write_json(root / "validate.json", [slake_entry(200, 2, "en", "Which organ is abnormal?", "Heart", "OPEN"),
                                        slake_entry(201, 2, "zh", "哪个器官异常?", "心脏", "OPEN")])
    write_json(root / "test.json", [slake_entry(300, 2, "en", "Is the heart enlarged?", "No", "CLOSED")])
    return root


def write_pathvqa(root: Path) -> Path:
    """pvqa_{train,val,test}.json in the per-image labelf/sentf format; images/<split>/<img_id>.jpg."""
    for split in ("train", "val", "test"):
        write_image(root / "images" / split / f"{split}_0001.jpg", "JPEG", 90)
    write_json(root / "pvqa_train.json", [
        {"img_id": "train_0000", "labelf": {"pvqa": []}, "sentf": {"pvqa": []}},  # no questions: nothing to do
        {"img_id": "train_0001", "labelf": {"pvqa": [{"squamous cell carcinoma": 1}, {"yes": 1}]},
         "sentf": {"pvqa": ["What is composed of nests of malignant cells?", "Is this carcinoma?"]}},
        {"img_id": "train_0002", "labelf": {"pvqa": [{"no": 1}]}, "sentf": {"pvqa": ["One", "Two"]}},
    ])
    write_json(root / "pvqa_val.json", [{"img_id": "val_0001", "labelf": {"pvqa": [{"no": 1}]},
                                         "sentf": {"pvqa": ["Is this normal?"]}}])
    write_json(root / "pvqa_test.json", [{"img_id": "test_0001", "labelf": {"pvqa": [{"fibrosis": 1}]},
                                          "sentf": {"pvqa": ["What is present?"]}}])
    return root


def write_pmc_vqa(root: Path) -> Path:
    """train_2.csv / test_2.csv (v2 columns, choices with "A:" prefixes as published); images/."""
    write_image(root / "images" / "PMC1_F1.jpg", "JPEG", 30)
    header = ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
              "Answer", "split"]
    write_csv(root / "train_2.csv", header, [
        [0, "PMC1_F1.jpg", "cap", "What imaging modality is this?", "A:CT ", "B:MRI ", "C:X-ray ", "D:US ", "B",
         "train"],
        [1, "PMC1_F1.jpg", "cap", "Which organ?", "A:Liver", "B:Lung", "C:", "D:Brain", "C", "train"],  # empty choice
    ])
    write_csv(root / "test_2.csv", header, [
        [0, "PMC1_F1.jpg", "cap", "Where is the lesion?", "A:left", "B:right", "C:both", "D:none", "A", "test"]])
    return root


# -- captions and conversations ----------------------------------------------------------------

def write_pmc_oa(root: Path) -> Path:
    write_image(root / "images" / "PMC10_F1.jpg", "JPEG", 70)
    write_image(root / "images" / "PMC11_F2.jpg", "JPEG", 80)
    (root / "train.jsonl").write_text(
        json.dumps({"image": "PMC10_F1.jpg", "caption": "CT of the abdomen showing a mass."}) + "\n"
        + "{not json\n" + json.dumps({"image": "PMC11_F2.jpg"}) + "\n", encoding="utf-8")
    (root / "valid.jsonl").write_text(json.dumps({"image": "PMC11_F2.jpg", "caption": "H&E stain."}) + "\n")
    (root / "test.jsonl").write_text("")
    return root


def write_roco(root: Path) -> Path:
    """ROCOv2 caption CSVs; the second train row holds a Latin-1 byte (not UTF-8)."""
    for split, image_id in (("train", "ROCOv2_2023_train_000001"), ("train", "ROCOv2_2023_train_000002"),
                            ("valid", "ROCOv2_2023_valid_000001"), ("test", "ROCOv2_2023_test_000001")):
        write_image(root / split / f"{image_id}.jpg", "JPEG", 50)
    (root / "train_captions.csv").write_bytes(
        b'ID,Caption\nROCOv2_2023_train_000001,"Chest X-ray, PA view."\n'
        b"ROCOv2_2023_train_000002,Radiographie du th\xe9rax\n")
    write_csv(root / "valid_captions.csv", ["ID", "Caption"], [["ROCOv2_2023_valid_000001", "Axial CT slice."]])
    write_csv(root / "test_captions.csv", ["ID", "Caption"], [["ROCOv2_2023_test_000001", "MRI of the knee."]])
    return root


def conv(*texts: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def write_llava(root: Path) -> dict[str, str]:
    """A LLaVA JSON (list) and JSONL file; returns id -> expected task."""
    write_image(root / "images" / "a.png", "PNG", 10)
    write_image(root / "images" / "b.jpg", "JPEG", 20)
    write_json(root / "train.json", [
        {"id": "l1", "image": "a.png", "conversations": conv("<image>\nWhat is shown?", "A chest X-ray.")},
        {"id": "l2", "image": ["a.png", "b.jpg"],
         "conversations": conv("<image>\n<image>\nCompare.", "Same.", "Any effusion?", "No.")},
        {"id": "l3", "conversations": conv("What is a pneumothorax?", "Air in the pleural space.")},
        {"id": "l4", "image": "b.jpg", "task": "caption", "conversations": conv("<image>\nCaption it.", "A stain.")},
    ])
    (root / "val.jsonl").write_text(json.dumps({"id": "l5", "image": "a.png", "domain": {"ct_scan": True},
                                                "conversations": conv("<image>\nModality?", "CT.")}) + "\n")
    return {"l1": "open", "l2": "multiturn", "l3": "text_qa", "l4": "caption", "l5": "open"}


def write_qa50(root: Path) -> Path:
    write_image(root / "images" / "18063892_F3.jpg", "JPEG", 120)
    lines = [{"question_id": i, "image": "18063892_F3.jpg", "pair_id": "18063892_F3", "text": text,
              "gpt4_answer": answer, "fig_caption": "cap", "type": kind,
              "domain": {"chest_xray": False, "mri": False, "ct_scan": False, "histology": True, "gross": False}}
             for i, (text, answer, kind) in enumerate([
                 ("What is the organ in the image?\n<image>", "The conjunctiva.", "conversation"),
                 ("Describe the image.", "A cystic wall lined by epithelium.", "detailed_description")])]
    (root / "llava_med_eval_qa50_qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


# -- reports -----------------------------------------------------------------------------------

def write_iu_r2gen(root: Path) -> Path:
    def study(sid: str, report: str, split: str) -> dict:
        for k in (0, 1):
            write_image(root / "images" / sid / f"{k}.png", "PNG", 100 + k)
        return {"id": sid, "report": report, "image_path": [f"{sid}/0.png", f"{sid}/1.png"], "split": split}

    write_json(root / "annotation.json", {
        "train": [study("CXR1_IM-0001", "The lungs are clear. No effusion.", "train"),
                  study("CXR2_IM-0002", "", "train")],
        "val": [study("CXR3_IM-0003", "Heart size is enlarged.", "val")],
        "test": [study("CXR4_IM-0004", "No acute disease.", "test")],
    })
    return root


def write_iu_kaggle(root: Path) -> Path:
    images = root / "images" / "images_normalized"
    projections = [[1, "1_IM-0001-3001.dcm.png", "Lateral"], [1, "1_IM-0001-4001.dcm.png", "Frontal"],
                   [2, "2_IM-0652-1001.dcm.png", "Frontal"], [3, "3_IM-1384-1001.dcm.png", "Frontal"]]
    for _, name, _ in projections:
        write_image(images / name, "PNG", 90)
    write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    write_csv(root / "indiana_reports.csv",
              ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"],
              [[1, "normal", "normal", "Xray Chest PA and Lateral", "TB test", "None.",
                "The cardiac silhouette is normal. No pneumothorax.", "Normal chest."],
               [2, "Cardiomegaly", "Cardiomegaly", "Chest, 1 view", "Preop", "None.", "Borderline cardiomegaly.",
                "No acute findings."],
               [3, "normal", "normal", "Xray Chest PA", "pain", "", "", "No acute abnormality."]])
    return root


MIMIC_REPORT = ("FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n"
                " FINDINGS:\n {findings}\n\n IMPRESSION:\n {impression}\n")


def write_mimic(root: Path) -> dict:
    """Official layout: metadata CSV (rows deliberately not in date order), split CSV, reports, JPGs.

    Subject 10000032: studies s3 (2180-05-06), s1 (2180-06-26), s2 (2180-07-23) -> s1's prior is s3, s2's is s1.
    s4 (subject 10000764): AP only, no lateral. s5: no FINDINGS section. s6: lateral only.
    """
    studies = {  # study: (subject, date, time, [(dicom, view)], findings or None, split)
        "1": ("10000032", "21800626", "165500.312", [("d1a", "PA"), ("d1b", "LATERAL")], "Lungs clear.", "train"),
        "2": ("10000032", "21800723", "080000", [("d2a", "AP")], "New small effusion.", "test"),
        "3": ("10000032", "21800506", "213014.531", [("d3a", "PA"), ("d3b", "LL")], "Mild edema.", "train"),
        "4": ("10000764", "21321006", "095200", [("d4a", "AP")], "Tube in place.", "validate"),
        "5": ("10000764", "21330101", "100000", [("d5a", "PA")], None, "train"),
        "6": ("10000898", "21000101", "100000", [("d6a", "LATERAL")], "Normal lateral.", "train"),
    }
    rows, split_rows = [], []
    for study, (subject, date, time, images, findings, split) in studies.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        report = (MIMIC_REPORT.format(findings=findings, impression="See above.") if findings
                  else "FINAL REPORT\n IMPRESSION:\n No change.\n")
        (folder).mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(report)
        for dicom, view in images:
            write_image(folder / f"s{study}" / f"{dicom}.jpg", "JPEG", 70)
            rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, 3056, 2544, date, time])
            split_rows.append([dicom, study, subject, split])
    rows = rows[2:] + rows[:2]  # the file's order must not matter
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id",
              "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"], rows)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    return studies


def write_mimic_r2gen(root: Path) -> Path:
    """R2Gen-style annotation.json (the skeleton's fields) + the metadata CSV for dates."""
    def study(sid: str, subject: str, views: list[str], report: str, split: str) -> dict:
        paths = [f"p{subject}/s{sid}/{v.lower()}.jpg" for v in views]
        for p in paths:
            write_image(root / "images" / p, "JPEG", 60)
        return {"id": f"id{sid}", "image_path": paths, "view": views, "study_id": sid, "subject_id": subject,
                "report": report, "split": split}

    write_json(root / "annotation.json", {
        "train": [study("20", "11", ["PA", "LATERAL"], "Prior: clear lungs.", "train")],
        "val": [],
        "test": [study("21", "11", ["AP"], "Current: new opacity.", "test")],
    })
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition",
                                                      "StudyDate", "StudyTime"],
              [["pa20", "11", "20", "PA", "21500101", "1200"], ["lat20", "11", "20", "LATERAL", "21500101", "1200"],
               ["ap21", "11", "21", "AP", "21500301", "0900"]])
    return root


# -- the bad-input corpus ----------------------------------------------------------------------

BAD_KINDS = {  # record id -> the skip kind prepare must report
    "bad-truncated": "corrupt_image",
    "bad-missing-file": "missing_image",
    "bad-zero-byte": "empty_image",
    "bad-dicom-no-pixels": "dicom_no_pixels",
    "bad-placeholders": "image_placeholders",
    "bad-empty-answer": "empty_answer",
    "bad-no-answer": "missing_answer",
    "bad-non-utf8": "non_utf8",
    "bad-too-long": "too_long",
}
GOOD_IDS = ["good-png", "good-jpeg", "good-rgba", "good-16bit", "good-dicom", "good-two", "good-text"]


def write_bad_corpus(root: Path) -> Path:
    """A LLaVA JSON file mixing good records with one of each kind of bad input (``BAD_KINDS``)."""
    img = root / "images"
    write_image(img / "ok.png", "PNG", 10)
    write_image(img / "ok.jpg", "JPEG", 200)
    write_image(img / "rgba.png", "PNG", 30, "RGBA")
    (img / "i16.png").write_bytes(image_bytes("PNG", 3000, "I;16"))
    (img / "ct.dcm").write_bytes(dicom_bytes(pixels=True))
    (img / "header_only.dcm").write_bytes(dicom_bytes(pixels=False))
    # noise, so the scan data is long: cut at 2/3 the header is intact and only a full decode notices
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    (img / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    (img / "zero.png").write_bytes(b"")
    records = [
        {"id": "good-png", "image": "ok.png", "conversations": conv("<image>\nWhat is shown?", "A chest X-ray.")},
        {"id": "good-jpeg", "image": "ok.jpg", "conversations": conv("<image>\nDescribe.", "A CT slice.")},
        {"id": "good-rgba", "image": "rgba.png", "conversations": conv("<image>\nDescribe.", "A stain.")},
        {"id": "good-16bit", "image": "i16.png", "conversations": conv("<image>\nDescribe.", "An MRI.")},
        {"id": "good-dicom", "image": "ct.dcm", "conversations": conv("<image>\nWhat modality?", "CT.")},
        {"id": "good-two", "image": ["ok.png", "ok.jpg"], "conversations": conv("<image>\n<image>\nCompare.", "Same.")},
        {"id": "good-text", "conversations": conv("What is an effusion?", "Fluid in the pleural space.")},
        {"id": "bad-truncated", "image": "truncated.jpg", "conversations": conv("<image>\nDescribe.", "X.")},
        {"id": "bad-missing-file", "image": "nowhere.png", "conversations": conv("<image>\nDescribe.", "X.")},
        {"id": "bad-zero-byte", "image": "zero.png", "conversations": conv("<image>\nDescribe.", "X.")},
        {"id": "bad-dicom-no-pixels", "image": "header_only.dcm", "conversations": conv("<image>\nDescribe.", "X.")},
        {"id": "bad-placeholders", "image": "ok.png", "conversations": conv("<image>\n<image>\nCompare.", "X.")},
        {"id": "bad-empty-answer", "image": "ok.png", "conversations": conv("<image>\nDescribe.", "  ")},
        {"id": "bad-no-answer", "image": "ok.png", "conversations": conv("<image>\nDescribe.")},
        {"id": "bad-non-utf8", "image": "ok.png", "conversations": conv("<image>\nDescribe.", "NON_UTF8_MARK")},
        {"id": "bad-too-long", "image": "ok.png", "conversations": conv("<image>\nDescribe.", "effusion " * 400)},
    ]
    text = json.dumps(records, indent=1).encode("utf-8")
    (root / "train.json").write_bytes(text.replace(b"NON_UTF8_MARK", b"Radiographie du th\xe9rax"))
    return root
