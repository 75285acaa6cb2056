"""python -m medgpt_oss.experiment: sweeps (Figure 1), report settings (Figure 2), and the report's benchmark
table (benchmark=report_suite) with the published figures beside ours."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from medgpt_oss.config import CONF_DIR
from tests.conftest import ENCODERS, SMALL_MEDSYNTH

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SMALL = "overrides=[" + ",".join(f"'data.synth.{k}={v}'" for k, v in SMALL_MEDSYNTH.items()) + "]"


def compose_experiment(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("experiment", overrides=overrides, return_hydra_config=True)


def _png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 10_000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- arms from the sweep's overrides ------------------------------------------------------------------------

def test_arms_come_from_the_swept_overrides_not_a_list_of_encoders():
    from medgpt_oss.experiment import arm_name, arms_of, reference_index, sweep_params

    cfg = compose_experiment(["experiment=figure1"])
    params = sweep_params(cfg)
    swept = params["encoder"].split(",")
    assert list(params) == ["encoder"] and sorted(swept) == ENCODERS and swept[0] == "clip"  # every encoder; CLIP first
    arms = arms_of(params)
    assert [arm_name(a) for a in arms] == swept
    # any other sweep: the keys and values of hydra.sweeper.params, their product, Hydra's sweep syntax
    cfg = compose_experiment(["experiment=figure1", "~hydra.sweeper.params.encoder",
                              '+hydra.sweeper.params.projector="linear,mlp2x_gelu"'])
    assert sweep_params(cfg) == {"projector": "linear,mlp2x_gelu"}
    # (a dotted key, as an experiment file writes it: `stage.optim.lr: choice(1e-3,1e-4)` under params)
    arms = arms_of({**sweep_params(cfg), "stage.optim.lr": "choice(1e-3,1e-4)"})
    assert arms[0] == {"projector": "linear", "stage.optim.lr": "0.001"} and len(arms) == 4  # as Hydra reads it
    names = [arm_name(a) for a in arms]
    assert names[0] == "projector-linear_lr-0.001" and len(set(names)) == 4
    listed = [{"name": n, "swept": a, "overrides": [f"{k}={v}" for k, v in a.items()]} for n, a in zip(names, arms)]
    assert reference_index(None, listed) == 0
    assert reference_index({"projector": "mlp2x_gelu", "stage.optim.lr": "0.0001"}, listed) == 3
    with pytest.raises(ValueError, match="no arm matches"):
        reference_index("siglip", listed)


def test_the_suite_and_recipe_follow_scale():
    cfg = compose_experiment(["experiment=figure1"])
    assert [s.name for s in cfg.recipe.stages] == ["align", "instruct"]
    # the random tiny LLM trains fully (LoRA on it learns no closed questions); real weights train through LoRA
    assert not any(o.startswith("lora=") for o in cfg.recipe.stages[1].overrides)
    assert list(cfg.suite.benchmarks) == ["medsynth"] and cfg.suite.images == "both"
    full = compose_experiment(["experiment=figure1", "scale=full"])
    assert "lora=r16" in full.recipe.stages[1].overrides  # projector + LoRA on the LLM, the LLaVA recipe
    assert list(full.suite.benchmarks) == ["vqa_rad", "slake", "pathvqa", "pmc_vqa", "mmmu_med", "medxpertqa_mm",
                                           "medframeqa"]
    f2 = compose_experiment(["experiment=figure2", "scale=full"])
    assert [s.benchmark for s in f2.settings] == ["mimic_cxr_findings", "mimic_cxr_multiview",
                                                  "mimic_cxr_longitudinal"]


def test_the_embedded_recipes_train_a_four_layer_tiny_llm_and_the_tests_default_stays_at_two():
    """Multiple choice needs the depth (docs/design.md): the demo, the reduced headline and Figure 1's tiny arms
    all compose experiment=tiny_cpu, which sets it; the plain tiny model the tests train stays at two layers."""
    def layers(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[*overrides, "+stage=instruct"]).llm.tiny.num_hidden_layers

    recipes = [list(OmegaConf.load(CONF_DIR / "recipe" / f"{r}.yaml").common) for r in ("tiny_demo", "tiny_headline")]
    recipes.append(["scale=tiny", *compose_experiment(["experiment=figure1"]).recipe.common])
    assert [layers(common) for common in recipes] == [4, 4, 4]
    assert layers(["scale=tiny"]) == 2


def test_a_stopped_stage_resumes_and_finished_ones_are_skipped(tmp_path, monkeypatch):
    from medgpt_oss import experiment

    calls = []

    def fake_train(cfg):
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        calls.append((cfg.stage._target_.rsplit(".", 1)[-1], cfg.get("ckpt_path"), cfg.get("init_from")))
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_text("weights")

    monkeypatch.setattr(experiment, "_train", fake_train)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("experiment", overrides=["experiment=figure1", "debug=quick", f"out_dir={tmp_path}",
                                               f"paths.data_dir={tmp_path / 'data'}"])
        arm = tmp_path / "arms" / "clip"
        last = experiment.run_stages(cfg, arm, ["encoder=clip"])
        assert last == arm / "instruct" / "checkpoints" / "last.ckpt"
        assert calls == [("AlignStage", None, None),
                         ("InstructStage", None, str(arm / "align" / "checkpoints" / "last.ckpt"))]
        done = json.loads((arm / "align" / experiment.STAGE_DONE).read_text())
        assert "encoder=clip" in done["overrides"] and "trainer.max_steps=2" in done["overrides"]
        # instruct stopped part-way: its last.ckpt is there, its marker is not
        (arm / "instruct" / experiment.STAGE_DONE).unlink()
        calls.clear()
        experiment.run_stages(cfg, arm, ["encoder=clip"])
        assert calls == [("InstructStage", str(last), str(arm / "align" / "checkpoints" / "last.ckpt"))]
        assert json.loads((arm / "instruct" / experiment.STAGE_DONE).read_text())["resumed"] is True
        calls.clear()
        experiment.run_stages(cfg, arm, ["encoder=clip"])
        assert calls == []


def test_change_of_a_longitudinal_report():
    from medgpt_oss.data.medsynth.text import CHANGE_SENTENCES, report_text
    from medgpt_oss.experiment import change_metric, change_of

    findings = {"nodule": None, "effusion": None, "cardiomegaly": False}
    for change, sentence in CHANGE_SENTENCES.items():
        assert change_of(report_text(findings) + "\nComparison: " + sentence) == change
    assert change_of("Findings: The lungs are clear.") is None and change_of(None) is None
    gold = report_text(findings) + "\nComparison: The nodule has grown."
    rows = [{"id": "a", "kind": "report", "gold": gold, "output": gold},
            {"id": "b", "kind": "report", "gold": gold, "output": "Comparison: The nodule is stable."},
            {"id": "c", "kind": "report", "gold": gold, "output": None}]
    metric = change_metric(rows)
    assert metric.n == 3 and metric.point() == pytest.approx(1 / 3)


# -- the report's benchmark table -------------------------------------------------------------------------

def test_report_suite_lists_the_report_benchmarks_with_their_published_figures():
    from medgpt_oss.evaluate import chosen_benchmarks

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["benchmark=report_suite"])
    figures = OmegaConf.to_container(cfg.benchmark.published.figures)
    assert figures == {"medxpertqa_mm": 49.23, "slake": 71.53, "medframeqa": 63.01, "mmmu_med": 61.49,
                       "mmmu_pro_med_4": 52.34, "mmmu_pro_med_10": 39.94, "medxpertqa_text": 25.38,
                       "medbullets": 68.71, "mmlu_med": 72.59}
    assert list(chosen_benchmarks(cfg)) == list(figures)
    assert cfg.images.mode == "both"  # the blind score of every image benchmark


def test_results_put_the_published_figure_beside_ours(tmp_path):
    from medgpt_oss.eval.results import write_results

    OmegaConf.save(OmegaConf.create({"benchmark": {"published": {"source": "the report", "metric": "accuracy",
                                                                 "figures": {"slake": 71.53, "mmlu_med": 72.59,
                                                                             "medbullets": 68.71}}}}),
                   tmp_path / "config.yaml")
    summaries = {"slake": {"n_items": 10, "n_scored": 10, "accuracy": 0.7, "accuracy_ci95": [0.4, 0.9]},
                 "slake@blank": {"n_items": 10, "n_scored": 10, "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8]},
                 "mmlu_med": {"n_items": 4, "n_scored": 4, "accuracy": 0.75, "accuracy_ci95": [0.25, 1.0]}}
    write_results(tmp_path, summaries, {"ckpt": "x.ckpt", "predictions": None})
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "summary.json").read_text())["published"]["rows"]}
    assert rows["slake"] == {"benchmark": "slake", "metric": "accuracy", "published": 71.53, "n": 10, "ours": 70.0,
                             "ours_ci95": [40.0, 90.0], "blind": 50.0, "blind_ci95": [20.0, 80.0],
                             "ours_minus_published": -1.53, "run": "scored"}
    assert rows["mmlu_med"]["blind"] is None and rows["medbullets"]["run"] == "not run"
    md = (tmp_path / "results.md").read_text()
    assert "## Published figures" in md
    assert "| slake | 10 | 70.00 | 40.00–90.00 | 50.00 | 20.00–80.00 | 71.53 | -1.53 |" in md
    assert "| medbullets | – | not run |" in md


# -- the reduced figures, end to end ----------------------------------------------------------------------------

def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_figure1_reduced_four_arms_then_a_rerun_resumes_only_what_did_not_finish(tmp_path, medsynth_dir):
    out = tmp_path / "figure1"
    command = [sys.executable, "-m", "medgpt_oss.experiment", "experiment=figure1", "debug=quick", f"out_dir={out}",
               f"paths.data_dir={medsynth_dir}", SMALL, "quick.evaluate.limit=2"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    from medgpt_oss.experiment import sweep_params

    arms = sweep_params(compose_experiment(["experiment=figure1"]))["encoder"].split(",")
    assert sorted(arms) == ENCODERS
    rows = _read_csv(out / "comparison.csv")
    assert [r["arm"] for r in rows] == arms and [r["encoder"] for r in rows] == arms
    data = json.loads((out / "comparison.json").read_text())
    assert data["swept"] == ["encoder"] and data["reference"] == "clip"
    keys = [c["key"] for c in data["columns"]]
    assert keys == ["closed", "closed@blank", "open", "open@blank", "mcq", "mcq@blank", "report", "report@blank"]
    reference = rows[0]
    for row, arm in zip(rows, data["arms"]):
        harness = json.loads((out / "arms" / row["arm"] / "eval" / "summary.json").read_text())
        assert harness["meta"]["images_mode"] == "both"
        for key in keys:
            value, low, high = (float(row[key + s]) for s in ("", "_ci95_low", "_ci95_high"))
            assert 0.0 <= low <= value <= high <= 1.0, (row["arm"], key)
            diff, dlow, dhigh = (float(row[key + s]) for s in ("_diff", "_diff_ci95_low", "_diff_ci95_high"))
            assert dlow <= diff <= dhigh
            assert diff == pytest.approx(value - float(reference[key]))  # same items in every arm
            if row is reference:
                assert diff == 0.0 and (dlow, dhigh) == (0.0, 0.0)
        # each number is the harness's, read from the arm's own run folder
        assert float(row["closed"]) == harness["benchmarks"]["medsynth"]["by_task"]["closed"]["accuracy"]
        assert float(row["report@blank"]) == harness["benchmarks"]["medsynth@blank"]["finding_f1"]
        assert arm["metrics"]["closed"]["n"] == 2 and arm["overrides"] == [f"encoder={row['arm']}"]
        for stage in ("align", "instruct"):
            assert (out / "arms" / row["arm"] / stage / "checkpoints" / "last.ckpt").is_file()
    md = (out / "comparison.md").read_text()
    assert "Paired difference to the reference arm `clip`" in md
    assert all(f"| {arm} |" in md for arm in arms)
    _png(out / "figure1.png")
    assert (out / "figure1.pdf").stat().st_size > 1000
    # A rerun: medsiglip's instruct stage stopped part-way (no marker, no evaluation); the rest is kept.
    (out / "arms" / "medsiglip" / "instruct" / "stage_done.json").unlink()
    eval_dir = out / "arms" / "medsiglip" / "eval"
    for path in sorted(eval_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    eval_dir.rmdir()
    before = (out / "arms" / "clip" / "eval" / "summary.json").stat().st_mtime
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    for arm in arms[:3]:
        assert f"=== arm {arm}: finished before" in result.stdout
    assert "=== medsiglip/align: finished before, skipped" in result.stdout
    assert "=== medsiglip/instruct: resuming from" in result.stdout
    assert (out / "arms" / "clip" / "eval" / "summary.json").stat().st_mtime == before
    assert json.loads((out / "arms" / "medsiglip" / "instruct" / "stage_done.json").read_text())["resumed"]
    assert [r["arm"] for r in _read_csv(out / "comparison.csv")] == arms


@pytest.mark.slow
def test_figure2_reduced_trains_then_scores_each_report_setting(tmp_path, medsynth_dir):
    out = tmp_path / "figure2"
    # the tiny demo's three stages (2 steps each), then frontal / multi-view / longitudinal report generation
    result = subprocess.run(
        [sys.executable, "-m", "medgpt_oss.experiment", "experiment=figure2", "debug=quick", f"out_dir={out}",
         f"paths.data_dir={medsynth_dir}", SMALL, "quick.evaluate.limit=3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _read_csv(out / "comparison.csv")
    assert [r["setting"] for r in rows] == ["frontal", "multiview", "longitudinal"]
    tasks = {"frontal": "report", "multiview": "multiview_report", "longitudinal": "longitudinal_report"}
    for row in rows:
        preds = [json.loads(line) for line in
                 (out / "settings" / row["setting"] / "medsynth" / "predictions.jsonl").read_text().splitlines()]
        assert {p["groups"]["task"] for p in preds} == {tasks[row["setting"]]} and int(row["n_reports"]) == len(preds)
        for key in ("finding_f1", "chexpert_micro_f1"):
            value, low, high = (float(row[key + s]) for s in ("", "_ci95_low", "_ci95_high"))
            assert 0.0 <= low <= value <= high <= 1.0
    longitudinal = rows[2]
    assert 0.0 <= float(longitudinal["change_accuracy"]) <= 1.0 and rows[0]["change_accuracy"] == ""
    data = json.loads((out / "comparison.json").read_text())
    assert data["checkpoint"] == str(out / "train" / "instruct" / "checkpoints" / "last.ckpt")
    assert "radgraph_f1" in data["not_available"]  # model-based metrics: not installed here
    assert "| Longitudinal (prior + current) | medsynth |" in (out / "comparison.md").read_text()
    _png(out / "figure2.png")
