"""MedSynth wording of findings: captions, chest reports, nodule-change sentences, and the report parser.

``findings_from_report`` reads back what ``report_text`` writes (the evaluator's finding F1).
"""

from __future__ import annotations


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def capitalized(s: str) -> str:
    return s[:1].upper() + s[1:]


def _cxr_phrases(f: dict, lateral: bool = False) -> list[str]:
    out = []
    if f["nodule"]:
        n = f["nodule"]
        out.append(f"a {n['size']} nodule" if lateral else f"a {n['size']} nodule in the {n['side']} lung")
    if f["effusion"]:
        out.append("a pleural effusion" if lateral else f"a {f['effusion']['side']} pleural effusion")
    if f["cardiomegaly"]:
        out.append("cardiomegaly")
    return out


def caption_text(modality: str, f: dict, view: str, k: int) -> str:
    if modality == "cxr":
        name = "lateral" if view.endswith("lateral") else "frontal"
        ph = _cxr_phrases(f, lateral=name == "lateral")
        if ph:
            return (f"{capitalized(name)} chest radiograph showing {_join(ph)}.",
                    f"Chest X-ray, {name} view, with {_join(ph)}.",
                    f"{capitalized(name)} chest X-ray demonstrating {_join(ph)}.")[k]
        return (f"Normal {name} chest radiograph.",
                f"Chest X-ray, {name} view, with clear lungs and a normal heart; normal study.",
                f"{capitalized(name)} chest X-ray with no abnormality; the study is normal.")[k]
    if modality == "ct":
        if f["liver_lesion"]:
            return ("Axial abdominal CT slice showing a hypodense liver lesion.",
                    "Abdominal CT, axial view, with a dark lesion in the liver.",
                    "CT of the abdomen demonstrating a hypodense lesion in the liver.")[k]
        return ("Normal axial abdominal CT slice.",
                "Abdominal CT, axial view, with a normal liver; normal study.",
                "CT of the abdomen with no abnormality; the liver is normal.")[k]
    if modality == "mri":
        if f["brain_mass"]:
            s = f["brain_mass"]["side"]
            return (f"Axial brain MRI showing a bright mass in the {s} hemisphere.",
                    f"Brain MRI, axial view, with a mass in the {s} hemisphere.",
                    f"MRI of the brain demonstrating a {s} hemisphere mass.")[k]
        return ("Normal axial brain MRI.",
                "Brain MRI, axial view, with no mass; normal study.",
                "MRI of the brain with no abnormality; the brain is normal.")[k]
    if f["tumor"]:
        return ("Pathology patch showing tumor with large, dense, irregular nuclei.",
                "H&E stained tissue with tumor: many large, dark, irregular nuclei.",
                "Pathology image of tumor with crowded, large, irregular nuclei.")[k]
    return ("Pathology patch of normal tissue with small, regular, sparse nuclei.",
            "H&E stained normal tissue: few small, regular nuclei around glands.",
            "Pathology image of normal tissue with small, round, sparse nuclei.")[k]


def report_text(f: dict) -> str:
    """Radiology-style report of a chest study: every finding drawn, negatives stated."""
    findings, impression = [], []
    if not f["nodule"] and not f["effusion"]:
        findings.append("The lungs are clear.")
    if f["nodule"]:
        n = f["nodule"]
        findings.append(f"There is a {n['size']} nodule in the {n['side']} lung.")
        impression.append(f"{capitalized(n['size'])} {n['side']} lung nodule.")
    else:
        findings.append("No lung nodule.")
    if f["effusion"]:
        findings.append(f"There is a {f['effusion']['side']} pleural effusion.")
        impression.append(f"{capitalized(f['effusion']['side'])} pleural effusion.")
    else:
        findings.append("No pleural effusion.")
    if f["cardiomegaly"]:
        findings.append("The heart is enlarged.")
        impression.append("Cardiomegaly.")
    else:
        findings.append("The heart size is normal.")
    if not impression:
        impression.append("No acute abnormality.")
    return "Findings: " + " ".join(findings) + "\nImpression: " + " ".join(impression)


def findings_from_report(text: str) -> list[str]:
    """Positive chest finding names stated in a MedSynth-style report (for finding-level F1).

    Reads the sentences of the Findings section (or the whole text if there is
    none) and keeps those that mention a finding without a negation.
    """
    body = text.split("Impression:")[0]
    out = []
    for sent in body.replace("Findings:", " ").replace("\n", " ").split("."):
        s = sent.strip().lower()
        if not s or s.startswith("no ") or " no " in f" {s} " or "normal" in s:
            continue
        if "nodule" in s:
            out.append("nodule")
        if "effusion" in s:
            out.append("effusion")
        if "enlarged" in s or "cardiomegaly" in s:
            out.append("cardiomegaly")
    return sorted(set(out), key=["nodule", "effusion", "cardiomegaly"].index)


# How each nodule change is stated: the longitudinal answer and a series report's Comparison line.
CHANGE_SENTENCES = {"new": "The nodule is new.", "grown": "The nodule has grown.",
                    "resolved": "The nodule has resolved.", "stable": "The nodule is stable.",
                    "none": "There is no nodule on either study."}
