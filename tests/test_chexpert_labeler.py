"""The CheXpert-style labeler's rule classes, one table each, and its agreement command on IU X-ray labels."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medgpt_oss.eval.chexpert import NEGATIVE, POSITIVE, UNCERTAIN, label_report
from medgpt_oss.eval.chexpert_agreement import MAPPED, mesh_observations

FIXTURE = Path(__file__).parent / "fixtures" / "iu_xray_reports_sample.csv"
CM, EC, EFF = "Cardiomegaly", "Enlarged Cardiomediastinum", "Pleural Effusion"


def _check(sentence, observation, expected):
    assert label_report(sentence)[observation] == expected, (sentence, label_report(sentence))


# Structures listed before one normal / negated predicate: every listed structure is negated. Before, only the
# structure next to the predicate was, and the most common sentence of a normal report made Cardiomegaly positive.
LISTS = [
    ("The cardiac silhouette and mediastinum size are within normal limits.", CM, NEGATIVE),
    ("The cardiac silhouette and mediastinum size are within normal limits.", EC, NEGATIVE),
    ("Heart size and mediastinal contours are normal.", CM, NEGATIVE),
    ("The heart, pulmonary XXXX and mediastinum are within normal limits.", CM, NEGATIVE),
    ("The heart, pulmonary XXXX and mediastinum are within normal limits.", EC, NEGATIVE),
    ("The heart size and mediastinal contours appear unremarkable.", CM, NEGATIVE),
    ("Heart size, mediastinal contour, and pulmonary vascularity are not enlarged.", CM, NEGATIVE),
    ("The heart and mediastinum are stable.", CM, NEGATIVE),
    ("The heart and mediastinum are clear.", CM, NEGATIVE),
    ("Heart size and pulmonary vascularity within normal limits.", CM, NEGATIVE),  # no copula
    ("The heart and the mediastinum are normal.", CM, NEGATIVE),
    ("Stable heart size and mediastinal contours.", CM, NEGATIVE),
    ("Normal heart size, mediastinal contours and pulmonary vasculature.", EC, NEGATIVE),
    ("The right pleural effusion and basilar atelectasis have resolved.", EFF, NEGATIVE),
    # stated abnormal, the same structures stay positive; "stable" qualifies the abnormality, not the structure
    ("The heart and mediastinum are enlarged.", CM, POSITIVE),
    ("Stable cardiomegaly.", CM, POSITIVE),
    ("There is stable enlargement of the heart.", CM, POSITIVE),
    ("Heart size is upper limits of normal.", CM, UNCERTAIN),  # borderline, not normal
    # a comma not closed by "and" ends the subject: the predicate belongs to the next clause
    ("Small effusion at the left base, lungs are clear.", EFF, POSITIVE),
]

# A clause boundary never swallows the words of a mention: "and the" ends the clause before "the heart".
BOUNDARIES = [
    ("No pleural effusion and the heart is enlarged.", CM, POSITIVE),
    ("No pleural effusion and the heart size is normal.", CM, NEGATIVE),
    ("There is no effusion and the cardiac silhouette is enlarged.", CM, POSITIVE),
    ("Lungs are clear with the heart enlarged.", CM, POSITIVE),
    ("The heart is enlarged and the lungs are clear.", CM, POSITIVE),
    ("There is no effusion but there is cardiomegaly.", CM, POSITIVE),
]

# Uncertainty scopes to the mention it modifies, not the whole clause or sentence.
UNCERTAINTY = [
    ("No pneumothorax. Mild atelectasis may be present.", "Pneumothorax", NEGATIVE),
    ("No pneumothorax. Mild atelectasis may be present.", "Atelectasis", UNCERTAIN),
    ("Heart size is normal and there may be a small effusion", CM, NEGATIVE),
    ("Heart size is normal and there may be a small effusion", EFF, UNCERTAIN),
    ("Mild cardiomegaly, possible small left pleural effusion.", CM, POSITIVE),
    ("Mild cardiomegaly, possible small left pleural effusion.", EFF, UNCERTAIN),
    ("Left basilar opacity, atelectasis or pneumonia.", "Lung Opacity", POSITIVE),
    ("Left basilar opacity, atelectasis or pneumonia.", "Atelectasis", UNCERTAIN),
    ("Left basilar opacity, atelectasis or pneumonia.", "Pneumonia", UNCERTAIN),
    ("Left basilar opacity may represent atelectasis.", "Lung Opacity", POSITIVE),
    ("Left basilar opacity may represent atelectasis.", "Atelectasis", UNCERTAIN),
    ("Atelectasis versus pneumonia in the left base.", "Atelectasis", UNCERTAIN),
    # an uncertainty word inside a negated list does not undo the negation
    ("No focal consolidation, suspicious pulmonary opacity, pneumothorax or effusion.", "Consolidation", NEGATIVE),
    ("There is no focal opacity to suggest pneumonia.", "Lung Opacity", NEGATIVE),
    ("Pneumonia cannot be excluded.", "Pneumonia", UNCERTAIN),
]

# "resolved" / "cleared" negate, before or after the mention; "no change in X" does not negate X.
RESOLVED = [
    ("The pneumothorax has resolved.", "Pneumothorax", NEGATIVE),
    ("Left lower lobe pneumonia has cleared.", "Pneumonia", NEGATIVE),
    ("Previously seen atelectasis has largely cleared.", "Atelectasis", NEGATIVE),
    ("Resolved left lower lobe pneumonia.", "Pneumonia", NEGATIVE),
    ("Interval clearing of the right basilar consolidation.", "Consolidation", NEGATIVE),
    ("The previously seen effusion, pneumothorax and atelectasis have cleared.", EFF, NEGATIVE),
    ("The previously seen effusion, pneumothorax and atelectasis have cleared.", "Pneumothorax", NEGATIVE),
    ("No interval change in the bibasilar opacities.", "Lung Opacity", POSITIVE),
]

# Negation runs across a list, but stops at an item that states its own status.
NEGATED_LISTS = [
    ("No pneumothorax, large pleural effusion, or focal airspace disease.", EFF, NEGATIVE),
    ("No evidence of pneumonia, effusion, or pneumothorax.", "Pneumothorax", NEGATIVE),
    ("No effusion, mild atelectasis.", "Atelectasis", POSITIVE),
    ("No acute disease, stable cardiomegaly.", CM, POSITIVE),
]


@pytest.mark.parametrize("sentence,observation,expected", LISTS)
def test_lists_before_a_normal_or_negated_predicate(sentence, observation, expected):
    _check(sentence, observation, expected)


@pytest.mark.parametrize("sentence,observation,expected", BOUNDARIES)
def test_clause_boundaries_keep_mentions_whole(sentence, observation, expected):
    _check(sentence, observation, expected)


@pytest.mark.parametrize("sentence,observation,expected", UNCERTAINTY)
def test_uncertainty_scopes_to_its_mention(sentence, observation, expected):
    _check(sentence, observation, expected)


@pytest.mark.parametrize("sentence,observation,expected", RESOLVED)
def test_resolved_and_cleared_negate(sentence, observation, expected):
    _check(sentence, observation, expected)


@pytest.mark.parametrize("sentence,observation,expected", NEGATED_LISTS)
def test_negation_scope_over_lists(sentence, observation, expected):
    _check(sentence, observation, expected)


def test_a_structure_stated_nothing_about_is_not_mentioned():
    labels = label_report("The heart and lungs have XXXX XXXX in the interval.")
    assert labels[CM] is None and labels["No Finding"] == POSITIVE


@pytest.mark.parametrize("mesh,expected", [
    ("normal", {"No Finding"}),
    ("Cardiomegaly/mild;Pleural Effusion/left/small", {CM, EFF}),
    ("Cardiac Shadow/enlarged/borderline", {CM}),
    ("Cardiac Shadow", set()),  # needs the "enlarged" qualifier
    ("Cicatrix/lung/base/left;Cicatrix/pleura/right", {"Lung Opacity"}),  # lung scar only
    ("Opacity/lung/upper lobe/right/round", {"Lung Opacity", "Lung Lesion"}),
    ("Hydropneumothorax/right", {"Pneumothorax", EFF}),
    ("Calcified Granuloma/lung/base/right;Spine/degenerative", set()),
])
def test_mesh_map(mesh, expected):
    assert mesh_observations(mesh) == expected


def _agreement(path, *extra):
    result = subprocess.run([sys.executable, "-m", "medgpt_oss.eval.chexpert_agreement", "--reports", str(path),
                             *extra], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_agreement_command_on_a_hand_checked_case(tmp_path):
    rows = [  # uid, MeSH, findings, impression
        ("1", "normal", "The heart size is normal. The lungs are clear.", "No acute disease."),  # NF tp
        ("2", "Cardiomegaly/mild;Pleural Effusion/left/small", "The heart is enlarged.",
         "No pleural effusion."),  # CM tp, effusion fn
        ("3", "Pulmonary Atelectasis/base/left", "", "Cardiomegaly. Possible left basilar atelectasis."),
        # ^ CM fp; atelectasis uncertain: fn, or tp with --uncertain-as-positive
        ("4", "Cardiac Shadow", "Heart size is normal.", ""),  # maps to nothing: NF fp
        ("5", "No Indexing", "Cardiomegaly.", ""),  # no human labels: skipped
        ("6", "normal", "", ""),  # no text: skipped
    ]
    path = tmp_path / "indiana_reports.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        writer.writerows((uid, mesh, mesh, "", "", "", f, i) for uid, mesh, f, i in rows)
    table, result = _agreement(path)
    per = result["per_label"]
    assert result["n_reports"] == 4 and set(per) == set(MAPPED)
    assert {k: per["No Finding"][k] for k in ("tp", "fp", "fn")} == {"tp": 1, "fp": 1, "fn": 0}
    assert per["No Finding"]["precision"] == 0.5 and per["No Finding"]["recall"] == 1.0
    assert per[CM]["f1"] == pytest.approx(2 / 3)
    assert (per[EFF]["fn"], per[EFF]["f1"], per["Atelectasis"]["fn"]) == (1, 0.0, 1)
    assert result["micro"] == {"tp": 2, "fp": 2, "fn": 2, "support": 4, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert "Cardiomegaly" in table and "micro" in table

    _, lenient = _agreement(path, "--uncertain-as-positive")
    assert lenient["per_label"]["Atelectasis"]["tp"] == 1
    assert lenient["micro"]["precision"] == pytest.approx(3 / 5) and lenient["micro"]["f1"] == pytest.approx(2 / 3)


def test_agreement_command_on_the_iu_xray_sample():
    with open(FIXTURE, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labelled = [r for r in rows if r["MeSH"].strip() != "No Indexing" and (r["findings"] or r["impression"]).strip()]
    _, result = _agreement(FIXTURE)
    assert result["n_reports"] == len(labelled) == 44
    # supports come straight from the MeSH column
    assert result["per_label"]["No Finding"]["support"] == sum(r["MeSH"].strip() == "normal" for r in labelled)
    assert result["per_label"][CM]["support"] == sum(
        "Cardiomegaly" in r["MeSH"] or "Cardiac Shadow/enlarged" in r["MeSH"] for r in labelled)
    micro = result["micro"]
    assert micro["tp"] == sum(s["tp"] for s in result["per_label"].values())
    assert micro["f1"] == pytest.approx(2 * micro["tp"] / (2 * micro["tp"] + micro["fp"] + micro["fn"]))
    # the sample's figures with the rules documented in docs/evaluation.md (a change to the rules shows here)
    assert (micro["tp"], micro["fp"], micro["fn"]) == (62, 1, 13)
