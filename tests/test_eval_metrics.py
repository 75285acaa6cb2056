"""Report metrics against reference implementations; the CheXpert-style labeler; accuracy summaries."""

import pytest

from medgpt_oss.eval.chexpert import (
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    chexpert_f1,
    label_report,
    load_phrases,
)
from medgpt_oss.eval.clinical import clinical_metrics
from medgpt_oss.eval.metrics import accuracy_summary, bleu_scores, cider_d, report_metrics, report_tokens, rouge_l

PREDS = ["The heart is enlarged. There is a small left pleural effusion.", "No acute cardiopulmonary process.",
         "Lungs are clear. No pneumothorax.", "Heart size normal. Mild atelectasis"]
REFS = ["The heart size is enlarged. Small left effusion.", "No acute cardiopulmonary abnormality.",
        "The lungs are clear. No pleural effusion or pneumothorax.",
        "The heart size is normal. There is mild bibasilar atelectasis."]


def _joined(texts):
    return [" ".join(report_tokens(t)) for t in texts]


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    ours = bleu_scores(PREDS, REFS)
    for n in (1, 2, 3, 4):
        ref = sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=n, smooth_method="none")
        expected = ref.corpus_score(_joined(PREDS), [_joined(REFS)]).score / 100
        assert ours[f"bleu_{n}"] == pytest.approx(expected, abs=1e-5)


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(_joined(PREDS), _joined(REFS))) / len(PREDS)
    assert rouge_l(PREDS, REFS) == pytest.approx(expected, abs=1e-5)


def test_cider_d_matches_pycocoevalcap():
    # pycocoevalcap 1.2 CiderScorer(n=4, sigma=6) on these tokenised strings gave 3.1061535021859368
    # (per item 2.26424425, 4.6474359, 4.12656651, 1.38636734); the package is 104 MB, so not a dependency.
    assert cider_d(PREDS, REFS) == pytest.approx(3.1061535021859368, abs=1e-9)
    assert cider_d(PREDS[:1], REFS[:1]) == 0.0  # one document: every idf is log(1/1) = 0


def test_report_metrics_has_every_score():
    scores = report_metrics(PREDS, REFS, {"meteor": False})
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d",
                           "chexpert_micro_f1", "chexpert_macro_f1", "report_metrics_convention",
                           "unavailable_metrics"}  # METEOR switched off: said so
    assert set(report_metrics(PREDS, REFS, {"convention": "plain"})) == set(scores) - {"unavailable_metrics"}
    perfect = report_metrics(REFS, REFS, {"meteor": False})
    assert perfect["bleu_4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["chexpert_micro_f1"] == 1.0


LABELS = [
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
    ("There is a small left pleural effusion.", {"Pleural Effusion": POSITIVE}),
    ("Pericardial effusion is present.", {"Pleural Effusion": None}),  # an "unmention" phrase
    ("The heart size is normal.", {"Cardiomegaly": NEGATIVE}),
    ("The heart is not enlarged.", {"Cardiomegaly": NEGATIVE}),
    ("Heart size is enlarged.", {"Cardiomegaly": POSITIVE}),
    ("Cardiomegaly with normal pulmonary vascularity.", {"Cardiomegaly": POSITIVE}),
    ("Possible left basilar atelectasis.", {"Atelectasis": UNCERTAIN}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
    ("No new consolidation.", {"Consolidation": UNCERTAIN}),  # the labeler's "no new" rule
    ("Opacity may represent atelectasis or pneumonia.", {"Atelectasis": UNCERTAIN, "Pneumonia": UNCERTAIN}),
    ("There are no XXXX of a large pleural effusion.", {"Pleural Effusion": NEGATIVE}),
    ("No evidence of pneumonia, effusion, or pneumothorax.",
     {"Pneumonia": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
    ("There is no pneumothorax but there is mild atelectasis.", {"Pneumothorax": NEGATIVE, "Atelectasis": POSITIVE}),
    ("The effusion has resolved.", {"Pleural Effusion": NEGATIVE}),
    ("Right IJ catheter tip in the SVC. Lungs are clear.", {"Support Devices": POSITIVE, "No Finding": POSITIVE}),
    ("Displaced fracture of the right clavicle.", {"Fracture": POSITIVE, "No Finding": None}),
    ("Mild emphysema.", {"No Finding": None}),  # a no_finding phrase: another finding, so not "No Finding"
    ("Findings consistent with CHF.", {"Edema": POSITIVE, "Cardiomegaly": UNCERTAIN}),
]


@pytest.mark.parametrize("report,expected", LABELS)
def test_chexpert_labeler(report, expected):
    labels = label_report(report)
    for observation, value in expected.items():
        assert labels[observation] == value, (observation, labels)


def test_phrase_lists_ship_with_the_package():
    mention = load_phrases("mention")
    assert set(mention) == set(OBSERVATIONS)
    assert " line " in mention["Support Devices"]  # "_line_" in the file: underscores are spaces
    assert "pericardial effusion" in load_phrases("unmention")["Pleural Effusion"]


def test_chexpert_f1_counts_positive_findings():
    preds = ["Small left pleural effusion.", "Cardiomegaly.", "No acute process."]
    refs = ["Small left pleural effusion.", "Pneumothorax.", "No acute process."]
    scores = chexpert_f1(preds, refs)
    # TP effusion + No Finding; FP cardiomegaly; FN pneumothorax -> micro 2*2/(2*2+1+1)
    assert scores["chexpert_micro_f1"] == pytest.approx(4 / 6)
    assert scores["chexpert_macro_f1"] == pytest.approx((1 + 0 + 0 + 1) / 4)


def test_unavailable_clinical_metrics_say_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_packages(name, *args, **kwargs):
        if name in ("radgraph", "RaTEScore") or name.startswith("CXRMetric"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_packages)
    scores, why = clinical_metrics(PREDS, REFS)
    assert scores == {}
    assert "pip install radgraph" in why["radgraph_f1"] and "RRG_scorers" in why["radgraph_f1"]
    assert "pip install ratescore" in why["ratescore"]
    assert "CXR-Report-Metric" in why["radcliq_v1"] and "CheXbert" in why["radcliq_v1"]


def test_accuracy_summary_reports_splits_and_counts_unparsed_as_wrong():
    rows = [
        {"kind": "closed", "correct": True, "extracted": "yes", "groups": {"type": "closed"}},
        {"kind": "closed", "correct": False, "extracted": None, "groups": {"type": "closed"}},
        {"kind": "open", "correct": True, "extracted": "lung", "groups": {"type": "open"},
         "scores": {"recall": 1.0, "f1": 1.0}},
        {"kind": "open", "correct": False, "extracted": None, "groups": {"type": "open"}, "missing_prediction": True,
         "scores": {"recall": 0.0, "f1": 0.0}},
    ]
    s = accuracy_summary(rows)
    assert s["accuracy"] == 0.5 and s["n"] == 4 and s["unparsed"] == 1
    assert s["by_type"] == {"closed": {"accuracy": 0.5, "n": 2}, "open": {"accuracy": 0.5, "n": 2}}
    assert s["open_token_recall"] == 0.5


def test_a_missing_or_empty_report_earns_no_no_finding_credit():
    from medgpt_oss.eval.chexpert import OBSERVATIONS, chexpert_f1, label_report

    normal = "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
    assert label_report(normal)["No Finding"] == 1
    for empty in ("", "   \n", None):
        assert label_report(empty) == {o: None for o in OBSERVATIONS}
    # Before: an empty report matched every normal reference's No Finding, and beat a real report with one
    # wrong finding. An empty report set now scores zero.
    references = [normal] * 4
    assert chexpert_f1([""] * 4, references)["chexpert_micro_f1"] == 0.0
    real = chexpert_f1([normal] * 3 + ["There is a small right pleural effusion."], references)
    assert real["chexpert_micro_f1"] == pytest.approx(6 / 8)  # TP 3 No Finding; FP effusion; FN No Finding


def test_chexpert_cli_reads_and_writes_the_labelers_csv_formats(tmp_path):
    import csv
    import subprocess
    import sys

    reports = ["The heart is normal in size. The lungs are clear without effusion, consolidation or pneumothorax.",
               "Moderate cardiomegaly. Small bilateral pleural effusions. Possible left basilar atelectasis.",
               "Right internal jugular catheter in place.\nNo pneumothorax."]  # multi-line cells stay one report
    with open(tmp_path / "in.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([r] for r in reports)  # headerless, one report per row
    result = subprocess.run([sys.executable, "-m", "medgpt_oss.eval.chexpert", "--reports_path",
                             str(tmp_path / "in.csv"), "--output_path", str(tmp_path / "out.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["Reports", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion",
                             "Lung Opacity", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                             "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    assert [r["Reports"] for r in rows] == reports
    normal, findings, device = rows
    assert (normal["No Finding"], normal["Cardiomegaly"], normal["Pleural Effusion"], normal["Edema"]) == \
        ("1.0", "0.0", "0.0", "")
    assert (findings["No Finding"], findings["Cardiomegaly"], findings["Pleural Effusion"],
            findings["Atelectasis"]) == ("", "1.0", "1.0", "-1.0")
    assert (device["Support Devices"], device["No Finding"], device["Pneumothorax"]) == ("1.0", "1.0", "0.0")
