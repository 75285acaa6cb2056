"""`python -m medgpt_oss.evaluate` and `python -m medgpt_oss.chat`: configs, run folders, known-answer scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from medgpt_oss.config import CONF_DIR, group_options, load_option
from medgpt_oss.eval.benchmarks.base import BenchmarkLayoutError
from medgpt_oss.evaluate import evaluate
from tests.test_eval_benchmarks import image, write_pubmedqa, write_vqa_rad


def compose_eval(overrides: list[str], tmp_path: Path):
    """conf/eval.yaml as `python -m medgpt_oss.evaluate` composes it, with the run folder under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.paths.root_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # @hydra.main hands the task config without it
    return cfg


def predictions(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in answers.items()))
    return path


def test_every_benchmark_config_composes_alone_and_in_a_list(tmp_path):
    # report_suite lists other benchmarks (tests/test_experiment.py composes it)
    names = [n for n in group_options("benchmark") if n != "report_suite"]
    assert len(names) >= 21
    cfg = compose_eval([f"benchmark=[{','.join(names)}]"], tmp_path)
    assert set(cfg.benchmark) == {"root", *names}
    for name in names:
        assert cfg.benchmark[name].name == name and cfg.benchmark[name]._target_.startswith("medgpt_oss.eval.")


def test_predictions_file_is_scored_without_a_model(tmp_path):
    root = write_vqa_rad(tmp_path / "vqa_rad")
    preds = predictions(tmp_path / "p.jsonl", {
        "vqa_rad-1": "Yes, the heart is enlarged.",   # correct
        "vqa_rad-2": "Normal.",                       # "no" is not in "normal": unparseable -> wrong
        "vqa_rad-3": "The right upper lobe.",         # correct after normalisation
    })                                                # vqa_rad-4 missing -> wrong
    cfg = compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={preds}"], tmp_path)
    out = tmp_path / "run"
    summary = evaluate(cfg, out)["vqa_rad"]
    assert summary["accuracy"] == 0.5 and (summary["n_scored"], summary["n_items"]) == (4, 4)
    assert {k: summary["by_type"]["closed"][k] for k in ("accuracy", "n")} == {"accuracy": 0.5, "n": 2}
    assert summary["accuracy_ci95"] == [0.0, 1.0] and summary["by_type"]["closed"]["accuracy_ci95"] == [0.0, 1.0]
    assert summary["unparsed"] == 1 and summary["n_missing_predictions"] == 1
    rows = [json.loads(x) for x in open(out / "vqa_rad/predictions.jsonl")]
    assert [r["correct"] for r in rows] == [True, False, True, False]
    assert rows[1]["extracted"] is None and rows[1]["output"] == "Normal."
    assert rows[0]["prompt"].endswith("Answer with yes or no.")
    for name in ("summary.json", "results.md", "config.yaml", "prompts.json", "meta.json"):
        assert (out / name).is_file()
    assert "| vqa_rad | 4 / 4 | 50.00 |" in (out / "results.md").read_text()
    assert json.loads((out / "prompts.json").read_text())["default"]["closed"] == "{question}\nAnswer with {choices}."


def test_raw_harmony_and_non_text_outputs_in_a_predictions_file(tmp_path):
    root = write_vqa_rad(tmp_path / "vqa_rad")
    preds = predictions(tmp_path / "p.jsonl", {
        # another stack's raw reply: the final channel is the answer
        "vqa_rad-1": "<|channel|>analysis<|message|>Looks enlarged.<|end|><|start|>assistant"
                     "<|channel|>final<|message|>Yes.<|return|>",
        # no final channel: unparseable, even though the analysis says the gold answer
        "vqa_rad-2": "<|channel|>analysis<|message|>no<|end|>",
        "vqa_rad-3": None,   # null is a missing answer, never the text "None"
        "vqa_rad-4": 3.4,    # a number is not an answer either (gold "3.4 cm")
    })
    cfg = compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={preds}"], tmp_path)
    evaluate(cfg, tmp_path / "run")
    rows = {r["id"]: r for r in map(json.loads, open(tmp_path / "run" / "vqa_rad/predictions.jsonl"))}
    assert rows["vqa_rad-1"]["output"] == "Yes." and rows["vqa_rad-1"]["correct"] is True
    assert rows["vqa_rad-2"]["output"] is None and rows["vqa_rad-2"]["correct"] is False
    assert rows["vqa_rad-3"]["output"] is None and rows["vqa_rad-3"]["correct"] is False
    assert rows["vqa_rad-4"]["output"] is None


def test_a_predictions_file_is_checked_not_trusted(tmp_path, capsys):
    root = write_vqa_rad(tmp_path / "vqa_rad")
    lines = [{"id": "vqa_rad-1", "output": "Yes."}, {"id": "vqa_rad-1", "output": "Yes."},  # repeated, agrees
             {"id": 2, "output": "no"},                                                  # a bare qid, as a number
             {"id": "vqa_rad-99", "output": "x"}, {"id": "vqa_rad-3", "output": "Right upper lobe"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cfg = compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={path}"], tmp_path)
    evaluate(cfg, tmp_path / "run")
    check = json.loads((tmp_path / "run" / "summary.json").read_text())["meta"]["predictions_check"]
    assert check["lines"] == 5 and check["matched"] == 2
    assert check["unknown"] == {"count": 2, "examples": ["2", "vqa_rad-99"]}
    assert check["non_string_ids"] == {"count": 1, "examples": ["2"]}
    assert check["duplicate_ids"] == {"count": 1, "examples": ["vqa_rad-1"]}
    assert "2 answers matched items, 2 unknown ids" in capsys.readouterr().out

    path.write_text(json.dumps({"id": "vqa_rad-1", "output": "Yes."}) + "\n"
                    + json.dumps({"id": "vqa_rad-1", "output": "No."}) + "\n")
    with pytest.raises(ValueError, match="id 'vqa_rad-1' was answered before with a different output"):
        evaluate(compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={path}"], tmp_path),
                 tmp_path / "run2")
    path.write_text("".join(json.dumps({"id": i, "output": "yes"}) + "\n" for i in (1, 2, 3)))
    with pytest.raises(ValueError, match=r"none of the 3 ids .* they look like \['vqa_rad-1'"):
        evaluate(compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={path}"], tmp_path),
                 tmp_path / "run3")


def test_several_benchmarks_in_one_run(tmp_path):
    vqa, pubmed = write_vqa_rad(tmp_path / "v"), write_pubmedqa(tmp_path / "p")
    preds = predictions(tmp_path / "p.jsonl", {"pubmedqa-101": "yes", "pubmedqa-102": "no"})
    cfg = compose_eval(["benchmark=[vqa_rad,pubmedqa]", f"benchmark.vqa_rad.root={vqa}",
                        f"benchmark.pubmedqa.root={pubmed}", f"predictions={preds}"], tmp_path)
    summaries = evaluate(cfg, tmp_path / "run")
    assert summaries["pubmedqa"]["accuracy"] == 0.5 and summaries["vqa_rad"]["accuracy"] == 0.0
    bad = compose_eval(["benchmark=[vqa_rad,pubmedqa]", f"benchmark.root={vqa}", f"predictions={preds}"], tmp_path)
    with pytest.raises(ValueError, match="benchmark.vqa_rad.root="):
        evaluate(bad, tmp_path / "run2")


def test_malformed_items_are_counted_and_named(tmp_path):
    from tests.test_eval_benchmarks import write_iu_xray

    root = write_iu_xray(tmp_path / "iu")
    preds = predictions(tmp_path / "p.jsonl", {"iu_xray-CXR1_IM-1": "The heart is normal in size. No effusion."})
    cfg = compose_eval(["benchmark=iu_xray", f"benchmark.root={root}", f"predictions={preds}",
                        "clinical_metrics=[]"], tmp_path)
    summary = evaluate(cfg, tmp_path / "run")["iu_xray"]
    assert (summary["n_scored"], summary["n_items"], summary["n_malformed"]) == (1, 2, 1)
    assert summary["malformed"] == [{"id": "iu_xray-CXR2_IM-2", "problem": "empty or missing report"}]
    assert summary["bleu_1"] > 0.5 and summary["chexpert_micro_f1"] == 1.0
    assert "1 malformed item(s)" in (tmp_path / "run/results.md").read_text()


def test_wrong_root_fails_before_any_work(tmp_path):
    preds = predictions(tmp_path / "p.jsonl", {})
    cfg = compose_eval(["benchmark=slake", f"benchmark.root={tmp_path}/none", f"predictions={preds}"], tmp_path)
    with pytest.raises(BenchmarkLayoutError, match="imgs/xmlabN/source.jpg"):
        evaluate(cfg, tmp_path / "run")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real Lightning checkpoint of the align stage at tiny scale (random init, nothing trained)."""
    import lightning as L
    from omegaconf import OmegaConf

    from medgpt_oss.stages.align import AlignStage

    cfg = OmegaConf.create({"scale": "tiny", "init_seed": 0, "lora": None})
    for group, name in (("encoder", "clip"), ("projector", "mlp2x_gelu"), ("llm", "gpt_oss"), ("chat", "harmony")):
        cfg[group] = load_option(group, name)
    plain = OmegaConf.to_container(cfg, resolve=True)
    stage = AlignStage(model={k: plain[k] for k in ("encoder", "projector", "llm", "lora")}, optim={"lr": 1e-3})
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(stage)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_evaluation_end_to_end(tiny_ckpt, medsynth_dir, tmp_path):
    cfg = compose_eval(["benchmark=medsynth", f"benchmark.root={medsynth_dir / 'medsynth'}", f"ckpt={tiny_ckpt}",
                        "limit=4", "max_new_tokens=4", "batch_size=4", "device=cpu"], tmp_path)
    summary = evaluate(cfg, tmp_path / "run")["medsynth"]
    assert summary["n_scored"] == 4 and summary["accuracy"] is not None
    meta = json.loads((tmp_path / "run/meta.json").read_text())
    assert meta["ckpt"] == str(tiny_ckpt.resolve())
    # the run's prompts are MedSynth's own turns, recorded as the benchmark's override
    assert json.loads((tmp_path / "run/prompts.json").read_text())["medsynth"]["closed"] == "{question}"
    # every accuracy has its 95% interval, and the run compared with itself differs by exactly 0
    low, high = summary["accuracy_ci95"]
    assert low <= summary["accuracy"] <= high
    from medgpt_oss.compare import compare_runs

    same = compare_runs(tmp_path / "run", tmp_path / "run")["benchmarks"]["medsynth"]["metrics"]
    assert same["accuracy"]["diff"] == 0 and same["accuracy"]["diff_ci95"] == [0.0, 0.0]


def test_a_checkpoints_model_must_state_the_contract_of_its_saved_config(tiny_ckpt, monkeypatch):
    """The prompts are built from the loaded model's input_spec(): it is checked against the model/data contract
    computed from the config the checkpoint saved (contract.py), as training's data module had it."""
    from dataclasses import replace

    from medgpt_oss.contract import ContractMismatchError
    from medgpt_oss.eval.generation import load_vlm
    from medgpt_oss.models.vlm import MedVLM

    assert load_vlm(str(tiny_ckpt)).input_spec().tokens_per_image == 64
    stated = MedVLM.input_spec
    monkeypatch.setattr(MedVLM, "input_spec", lambda self: replace(stated(self), image_size=32))
    with pytest.raises(ContractMismatchError, match="image_size: 64 from the config, 32 from the model"):
        load_vlm(str(tiny_ckpt))


def test_chat_answers_about_png_and_dicom(tiny_ckpt, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    from medgpt_oss.chat import chat, parse_args

    png = image(tmp_path / "cxr.png")
    options, images, question = parse_args([f"ckpt={tiny_ckpt}", f"image={png}", "image=b.dcm", "Is", "there?"])
    assert options == {"ckpt": str(tiny_ckpt)} and images == [str(png), "b.dcm"] and question == "Is there?"
    reply = chat([f"ckpt={tiny_ckpt}", f"image={png}", f"image={get_testdata_file('CT_small.dcm')}",
                  "max_new_tokens=3", "device=cpu", "Any", "nodule?"])
    assert isinstance(reply, str) and reply
    assert capsys.readouterr().out.strip() == reply.strip()  # what streamed is the reply


def test_cli_entry_point_writes_the_run_folder(tmp_path):
    root = write_pubmedqa(tmp_path / "p")
    preds = predictions(tmp_path / "p.jsonl", {"pubmedqa-101": "Yes.", "pubmedqa-102": "Maybe"})
    run = subprocess.run([sys.executable, "-m", "medgpt_oss.evaluate", "benchmark=pubmedqa", f"benchmark.root={root}",
                          f"predictions={preds}", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "| pubmedqa | 2 / 2 | 100.00 |" in run.stdout
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["benchmarks"]["pubmedqa"]["accuracy"] == 1.0
    missing = subprocess.run([sys.executable, "-m", "medgpt_oss.evaluate", "benchmark=pubmedqa",
                              f"benchmark.root={tmp_path}/absent", f"predictions={preds}",
                              f"hydra.run.dir={tmp_path / 'run2'}"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "ori_pqal.json" in missing.stderr


def test_images_both_answers_again_with_every_image_blanked(tiny_ckpt, medsynth_dir, tmp_path, monkeypatch):
    """images.mode=both: each image benchmark twice, the second time every pixel the model sees is the same
    black image while the tokens stay the same; a text-only benchmark runs once; both side by side."""
    import torch

    from medgpt_oss.models.vlm import MedVLM
    from medgpt_oss.pipeline import demo_summary

    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    spec: list = []
    embed = MedVLM.embed

    def recording_embed(self, input_ids, pixel_values=None):
        spec[:] = [self.input_spec()]
        seen.append((input_ids.clone(), None if pixel_values is None else pixel_values.detach().clone()))
        return embed(self, input_ids, pixel_values)

    monkeypatch.setattr(MedVLM, "embed", recording_embed)
    pubmed = write_pubmedqa(tmp_path / "p")
    cfg = compose_eval(["benchmark=[medsynth,pubmedqa]", f"benchmark.medsynth.root={medsynth_dir / 'medsynth'}",
                        f"benchmark.pubmedqa.root={pubmed}", "benchmark.medsynth.tasks=[closed,mcq,report]",
                        "+benchmark.medsynth.limit_per_task=2", f"ckpt={tiny_ckpt}", "images.mode=both",
                        "max_new_tokens=3", "batch_size=6", "device=cpu", "bootstrap.resamples=100"], tmp_path)
    out = tmp_path / "run"
    summaries = evaluate(cfg, out)
    assert set(summaries) == {"medsynth", "medsynth@blank", "pubmedqa"}  # the text-only benchmark: once
    assert not (out / "pubmedqa@blank").exists()
    assert summaries["medsynth"]["images"] == "as given" and summaries["medsynth@blank"]["images"] == "blanked"
    assert summaries["pubmedqa"]["images"] == "none (text only)"

    # the model's inputs, in order: medsynth as given (one batch of 6), blanked (one batch), pubmedqa
    (ids_given, px_given), (ids_blank, px_blank), (_, px_text) = seen
    assert torch.equal(ids_given, ids_blank)  # the same prompts, token for token
    assert px_given.shape == px_blank.shape and px_given.shape[0] == 6 and px_text is None
    from medgpt_oss.data.images import ImageTransform

    black = ImageTransform(spec[0].image_size, spec[0].image_mean, spec[0].image_std).blank()  # a black RGB image
    assert all(torch.equal(view, black) for view in px_blank)  # every view of every item: the same black image
    assert not any(torch.equal(view, black) for view in px_given)  # the real images are not black
    assert not torch.equal(px_given, px_blank)

    rows = {k: [json.loads(x) for x in (out / k / "predictions.jsonl").read_text().splitlines()]
            for k in ("medsynth", "medsynth@blank")}
    assert [r["id"] for r in rows["medsynth"]] == [r["id"] for r in rows["medsynth@blank"]]
    assert [r["prompt"] for r in rows["medsynth"]] == [r["prompt"] for r in rows["medsynth@blank"]]

    saved = json.loads((out / "summary.json").read_text())
    ablation = saved["images_blanked"]
    assert ablation["pubmedqa"] == {"skipped": "text only: no item has an image, nothing to blank (run once)"}
    metrics = ablation["medsynth"]["metrics"]
    closed = metrics["by_task[closed].accuracy"]
    assert closed["n"] == 2 and closed["images"] == summaries["medsynth"]["by_task"]["closed"]["accuracy"]
    assert closed["blanked"] == summaries["medsynth@blank"]["by_task"]["closed"]["accuracy"]
    assert closed["images_minus_blanked"] == pytest.approx(closed["images"] - closed["blanked"])
    low, high = closed["images_minus_blanked_ci95"]
    assert low <= closed["images_minus_blanked"] <= high
    assert {"accuracy", "finding_f1", "chexpert_micro_f1", "bleu_1"} <= set(metrics)
    assert "images_minus_blanked_ci95" not in metrics["bleu_1"]  # no per-item scores: no interval
    assert saved["meta"]["images_mode"] == "both"
    results = (out / "results.md").read_text()
    assert "## Images blanked" in results and "| medsynth | by_task[closed].accuracy | 2 |" in results
    assert "| medsynth@blank |" in results

    # the demo's summary.json is this harness summary, mapped to its headline keys
    demo = demo_summary(saved)
    assert demo["closed_accuracy"] == summaries["medsynth"]["by_task"]["closed"]["accuracy"]
    assert demo["closed_accuracy_images_blanked"] == summaries["medsynth@blank"]["by_task"]["closed"]["accuracy"]
    assert demo["closed_accuracy_images_minus_blanked_ci95"] == closed["images_minus_blanked_ci95"]
    assert demo["report_f1"] == summaries["medsynth"]["finding_f1"]
    assert demo["report_f1_images_blanked_ci95"] == summaries["medsynth@blank"]["finding_f1_ci95"]
    assert (demo["n_closed"], demo["n_mcq"], demo["n_report"]) == (2, 2, 2)
    for key in ("closed_accuracy_ci95", "closed_accuracy_images_blanked_ci95", "mcq_accuracy", "mcq_accuracy_ci95",
                "closed_unparseable", "closed_unparseable_images_blanked", "mcq_chance", "report_f1_ci95"):
        assert key in demo, key


def test_blanking_needs_a_model(tmp_path):
    root = write_vqa_rad(tmp_path / "vqa_rad")
    preds = predictions(tmp_path / "p.jsonl", {"vqa_rad-1": "Yes."})
    for mode in ("blank", "both"):
        cfg = compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={preds}",
                            f"images.mode={mode}"], tmp_path)
        with pytest.raises(ValueError, match=f"images.mode={mode} .* predictions= .* nothing to blank"):
            evaluate(cfg, tmp_path / "run")
    bad = compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={preds}", "images.mode=grey"],
                       tmp_path)
    with pytest.raises(ValueError, match="images.mode=grey: choose one of normal, blank, both"):
        evaluate(bad, tmp_path / "run")
