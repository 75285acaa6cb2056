"""Report metrics in the R2Gen-family convention (R2Gen cleaning + pycocoevalcap scorers) and ours ("plain").

The expected numbers were computed with pycocoevalcap 1.2 (Bleu(4), Rouge(), Cider(), Meteor()) on the
fixture's 20 IU X-ray findings pairs after R2Gen's cleaning, so these tests run without the package; when
it is installed, ``test_same_as_pycocoevalcap_when_installed`` recomputes them live.
"""

import json
from pathlib import Path

import pytest

from medgpt_oss.eval import report_metrics as rm
from medgpt_oss.eval.metrics import report_metrics, report_tokens

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "iu_xray_findings_pairs.json").read_text())
PREDS = [p["prediction"] for p in FIXTURE["pairs"]]
REFS = [p["reference"] for p in FIXTURE["pairs"]]

# pycocoevalcap 1.2 on [r2gen_text(t, "iu_xray")] (the mimic_cxr cleaner gives the same text here)
COCO_R2GEN = {"bleu_1": 0.5418326693219896, "bleu_2": 0.43245494420785346, "bleu_3": 0.375590435514359,
              "bleu_4": 0.3381439427381362, "rouge_l": 0.4586602317830297, "cider_d": 2.2619911725556663}
COCO_METEOR = 0.2716874924933058
# two references per item: item i's own and item (i+3)'s
COCO_TWO_REFS = {"bleu_1": 0.6387782204506789, "bleu_2": 0.5130108309330587, "bleu_3": 0.435000210614896,
                 "bleu_4": 0.3834437283245251, "rouge_l": 0.5047455034979891, "cider_d": 1.1058031511915158}
# ours before: punctuation dropped, torchmetrics BLEU / ROUGE-L (beta 1); float32 in torchmetrics
PLAIN = {"bleu_1": 0.492514967918396, "bleu_2": 0.4089154601097107, "bleu_3": 0.362565815448761,
         "bleu_4": 0.3351742923259735, "rouge_l": 0.41191473603248596, "cider_d": 2.46500757963334}
# pycocoevalcap Rouge() (beta 1.2) on the plain tokens
COCO_ROUGE_ON_PLAIN_TOKENS = 0.41196757301400383


def _clean(texts, cleaner="iu_xray"):
    return [rm.r2gen_text(t, cleaner) for t in texts]


def _two_refs():
    return [[rm.r2gen_text(REFS[i], "iu_xray"), rm.r2gen_text(REFS[(i + 3) % len(REFS)], "iu_xray")]
            for i in range(len(REFS))]


def test_fixture_is_real_findings_pairs():
    assert len(FIXTURE["pairs"]) == 20
    assert sum(p["kind"] == "other study" for p in FIXTURE["pairs"]) == 14
    assert all(p["prediction"].strip() and p["reference"].strip() for p in FIXTURE["pairs"])


@pytest.mark.parametrize("cleaner", ["iu_xray", "mimic_cxr"])
def test_pure_python_scorers_equal_pycocoevalcap(cleaner):
    preds, refs = _clean(PREDS, cleaner), [[r] for r in _clean(REFS, cleaner)]
    ours = {**rm.coco_bleu(preds, refs), "rouge_l": rm.coco_rouge_l(preds, refs), "cider_d": rm.coco_cider(preds, refs)}
    for key, expected in COCO_R2GEN.items():
        assert ours[key] == pytest.approx(expected, abs=1e-9), key


def test_several_references_per_item_equal_pycocoevalcap():
    preds, refs = _clean(PREDS), _two_refs()
    ours = {**rm.coco_bleu(preds, refs), "rouge_l": rm.coco_rouge_l(preds, refs), "cider_d": rm.coco_cider(preds, refs)}
    for key, expected in COCO_TWO_REFS.items():
        assert ours[key] == pytest.approx(expected, abs=1e-9), key


def test_rouge_l_uses_beta_1_2():
    plain = [" ".join(report_tokens(t)) for t in PREDS], [" ".join(report_tokens(t)) for t in REFS]
    assert rm.coco_rouge_l(*plain) == pytest.approx(COCO_ROUGE_ON_PLAIN_TOKENS, abs=1e-9)
    assert rm.coco_rouge_l(*plain, beta=1.0) == pytest.approx(PLAIN["rouge_l"], abs=1e-6)  # = torchmetrics F1


def test_bleu_brevity_penalty_takes_the_closest_reference():
    # 4 hypothesis words, 3 matched; references of 3 and 6 words: the closest (3) means no brevity penalty
    assert rm.coco_bleu(["a b c d"], [["a b c", "a b x y z w"]])["bleu_1"] == pytest.approx(0.75)
    # the 6-word reference alone: 2 matched, the hypothesis is shorter: penalty exp(1 - 6/4)
    assert rm.coco_bleu(["a b c d"], [["a b x y z w"]])["bleu_1"] == pytest.approx(0.5 * 0.6065306597, abs=1e-9)
    # a tie (3 and 5 words, both 1 away) takes the shorter: no penalty
    assert rm.coco_bleu(["a b c d"], [["a b c", "a b c d e"]])["bleu_1"] == pytest.approx(1.0)


def test_same_as_pycocoevalcap_when_installed():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    for refs in ([[r] for r in _clean(REFS)], _two_refs()):
        gts, res = dict(enumerate(refs)), {i: [p] for i, p in enumerate(_clean(PREDS))}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        preds = _clean(PREDS)
        ours = rm.coco_bleu(preds, refs)
        assert [ours[f"bleu_{n}"] for n in (1, 2, 3, 4)] == pytest.approx(bleu, abs=1e-12)
        assert rm.coco_rouge_l(preds, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
        assert rm.coco_cider(preds, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


# -- R2Gen's cleaning -----------------------------------------------------------------------------------

CLEANING = [  # (report, clean_report_iu_xray, clean_report_mimic_cxr) as R2Gen's functions return them
    ("The heart is normal. The lungs are clear.",
     "the heart is normal . the lungs are clear .", "the heart is normal . the lungs are clear ."),
    ("The heart is normal.. The lungs are clear...",
     "the heart is normal . the lungs are clear .", "the heart is normal . the lungs are clear ."),
    ("1. No acute process. 2. Stable cardiomegaly. 3. Small effusion.",
     "no acute process . stable cardiomegaly . small effusion .",
     "no acute process . stable cardiomegaly . small effusion ."),
    ("Findings: 1. Cardiomegaly 2. Effusion",
     "findings cardiomegaly . effusion .", "findings cardiomegaly . effusion ."),
    ("Heart size normal; lungs clear, no effusion (stable)!",
     "heart size normal lungs clear no effusion stable .", "heart size normal lungs clear no effusion stable ."),
    # '/' is deleted, not spaced; '-' stays; quotes and apostrophes go
    ("No pneumothorax/effusion. Mild T-spine \"degenerative\" change's noted",
     "no pneumothoraxeffusion . mild t-spine degenerative changes noted .",
     "no pneumothoraxeffusion . mild t-spine degenerative changes noted ."),
    ("Nodule measures 2.5 cm. No other nodule.", "nodule measures 25 cm . no other nodule .",
     "nodule measures 25 cm . no other nodule ."),
    ("Lungs clear.  No effusion.", "lungs clear . no effusion .", "lungs clear . no effusion ."),
    # newlines and underscores: only the MIMIC cleaner handles them
    ("No acute process.\nStable ___ and ____ lines.",
     "no acute process\nstable  and  lines .", "no acute process . stable  and  lines ."),
    # the ':-\[' range in R2Gen's pattern also drops < = > ? @
    ("Tip at <3 cm = stable @ level [T4] {old}.", "tip at 3 cm  stable  level t4 old .",
     "tip at 3 cm  stable  level t4 old ."),
    ("HEART SIZE IS NORMAL. NO EFFUSION",
     "heart size is normal . no effusion .", "heart size is normal . no effusion ."),
    ("No effusion. ", "no effusion .", "no effusion ."),
    ("", " .", " ."),
    # empty sentences are kept (R2Gen's filter `!= []` never drops a string)
    ("Costophrenic angles sharp.. . Normal.", "costophrenic angles sharp .  . normal .",
     "costophrenic angles sharp .  . normal ."),
]


@pytest.mark.parametrize("report,iu,mimic", CLEANING)
def test_r2gen_cleaning(report, iu, mimic):
    assert rm.clean_report_iu_xray(report) == iu
    assert rm.clean_report_mimic_cxr(report) == mimic
    # what is scored: R2Gen's tokenizer splits on whitespace and decodes with single spaces
    assert rm.r2gen_text(report, "mimic_cxr") == " ".join(mimic.split())


def test_r2gen_text_rejects_an_unknown_cleaner():
    with pytest.raises(ValueError, match="cleaner"):
        rm.r2gen_text("x", "chexpert")


# -- conventions, METEOR, model-based metrics -----------------------------------------------------------

def test_both_conventions_are_selectable():
    r2gen = report_metrics(PREDS, REFS, {"convention": "r2gen", "cleaner": "iu_xray", "meteor": False})
    plain = report_metrics(PREDS, REFS, {"convention": "plain"})
    default = report_metrics(PREDS, REFS, {"meteor": False})
    for key, expected in COCO_R2GEN.items():
        assert r2gen[key] == pytest.approx(expected, abs=1e-9)
        assert default[key] == pytest.approx(expected, abs=1e-9)  # r2gen is the default
    for key, expected in PLAIN.items():
        assert plain[key] == pytest.approx(expected, abs=1e-6)
    assert r2gen["report_metrics_convention"] == "r2gen/iu_xray"
    assert default["report_metrics_convention"] == "r2gen/mimic_cxr"
    assert plain["report_metrics_convention"] == "plain" and "meteor" not in plain
    assert "meteor" in r2gen["unavailable_metrics"]  # switched off: still said, never silent
    assert r2gen["chexpert_micro_f1"] == plain["chexpert_micro_f1"]
    # the literature's numbers read higher than ours on the same text
    assert r2gen["bleu_1"] > plain["bleu_1"] and r2gen["rouge_l"] > plain["rouge_l"]
    with pytest.raises(ValueError, match="convention"):
        report_metrics(PREDS, REFS, {"convention": "coco"})
    with pytest.raises(ValueError, match="unknown report_metrics keys"):
        report_metrics(PREDS, REFS, {"convenion": "plain"})


def test_identical_reports_score_perfectly():
    scores = report_metrics(REFS, REFS, {"meteor": False})
    assert scores["bleu_4"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)


def test_meteor_without_java_or_pycocoevalcap_says_what_to_install(monkeypatch):
    import builtins

    monkeypatch.setattr(rm.shutil, "which", lambda name: None)
    score, why = rm.coco_meteor(["a b ."], ["a b ."])
    assert score is None and "Java" in why and "pip install pycocoevalcap" in why and "[missing: java]" in why

    monkeypatch.setattr(rm.shutil, "which", lambda name: "/usr/bin/java")
    real_import = builtins.__import__

    def no_coco(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_coco)
    scores = report_metrics(PREDS[:3], REFS[:3])
    assert "meteor" not in scores
    assert "pip install pycocoevalcap" in scores["unavailable_metrics"]["meteor"]


@pytest.mark.slow
def test_meteor_equals_pycocoevalcap_when_java_is_there():
    pytest.importorskip("pycocoevalcap")
    score, why = rm.coco_meteor(_clean(PREDS), [[r] for r in _clean(REFS)])
    if score is None and "[missing: java]" in why:
        pytest.skip(why)
    assert why is None and score == pytest.approx(COCO_METEOR, abs=1e-9)


def test_clinical_metrics_not_installed_say_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__
    blocked = ("radgraph", "RaTEScore", "RadEval", "green_score")

    def no_packages(name, *args, **kwargs):
        if name in blocked or name.startswith("CXRMetric"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_packages)
    scores, why = rm.clinical_report_metrics(PREDS, REFS)
    assert scores == {}
    assert set(why) == {"radgraph_f1", "ratescore", "green", "radcliq_v1"}
    assert "pip install radeval" in why["green"] and "GREEN-radllama2-7b" in why["green"]
    assert "[missing: green_score]" in why["green"]
    assert "pip install radgraph" in why["radgraph_f1"]
    # in a benchmark summary: one unavailable_metrics with METEOR's and the clinical metrics' reasons
    summary = report_metrics(PREDS, REFS, {"meteor": False}, clinical=["green", "ratescore"])
    assert set(summary["unavailable_metrics"]) == {"meteor", "green", "ratescore"}
    with pytest.raises(ValueError, match="unknown clinical metric"):
        rm.clinical_report_metrics(PREDS, REFS, ["bertscore"])


def test_green_from_radeval_when_installed(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("RadEval")

    class RadEval:
        def __init__(self, **flags):
            assert flags == {"do_green": True}

        def __call__(self, refs, hyps):
            return {"green": sum(r == h for r, h in zip(refs, hyps)) / len(refs)}

    fake.RadEval = RadEval
    monkeypatch.setitem(sys.modules, "RadEval", fake)
    scores, why = rm.clinical_report_metrics(["a", "b"], ["a", "c"], ["green"])
    assert scores == {"green": 0.5} and why == {}


def test_report_benchmarks_take_the_convention_from_the_config(tmp_path):
    from medgpt_oss.evaluate import evaluate
    from tests.test_eval_benchmarks import write_iu_xray
    from tests.test_eval_cli import compose_eval, predictions

    root = write_iu_xray(tmp_path / "iu")
    preds = predictions(tmp_path / "p.jsonl", {"iu_xray-CXR1_IM-1": "The heart is normal in size. No effusion."})
    base = ["benchmark=iu_xray", f"benchmark.root={root}", f"predictions={preds}", "clinical_metrics=[green]",
            "report_metrics.meteor=false"]
    r2gen = evaluate(compose_eval(base, tmp_path), tmp_path / "r2gen")["iu_xray"]
    plain = evaluate(compose_eval([*base, "report_metrics.convention=plain"], tmp_path), tmp_path / "plain")["iu_xray"]
    assert r2gen["report_metrics_convention"] == "r2gen/iu_xray" and plain["report_metrics_convention"] == "plain"
    assert r2gen["bleu_1"] != plain["bleu_1"]
    assert set(r2gen["unavailable_metrics"]) == {"meteor", "green"}  # both said, neither overwritten
    assert "green" in plain["unavailable_metrics"]
