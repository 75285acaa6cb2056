"""95% bootstrap intervals in a run's summary, and `python -m medgpt_oss.compare` of two runs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from medgpt_oss.compare import RunFolderError, compare_runs, main as compare_main
from medgpt_oss.eval.bootstrap import ItemMetric, _mean, add_chexpert_labels, add_intervals, interval, item_metrics
from medgpt_oss.evaluate import evaluate
from tests.test_eval_benchmarks import dump, image
from tests.test_eval_cli import compose_eval, predictions


def correct_rows(n: int, n_correct: int) -> list[dict]:
    return [{"id": f"q{i}", "kind": "closed", "correct": i < n_correct, "extracted": "yes"} for i in range(n)]


def accuracy(rows: list[dict]) -> ItemMetric:
    return item_metrics(rows)[("accuracy",)]


def test_hand_checkable_interval_contains_the_estimate_and_narrows_with_more_items():
    small = interval(accuracy(correct_rows(100, 80)), 1000, 0)
    # 80 of 100: standard error sqrt(0.8 * 0.2 / 100) = 0.04, so about 0.80 -/+ 1.96 * 0.04 = [0.72, 0.88]
    assert small[0] == pytest.approx(0.72, abs=0.015) and small[1] == pytest.approx(0.88, abs=0.015)
    assert small[0] < 0.8 < small[1]
    large = interval(accuracy(correct_rows(1000, 800)), 1000, 0)
    assert large[0] < 0.8 < large[1] and (large[1] - large[0]) < (small[1] - small[0]) / 2  # ~1/sqrt(10)
    assert interval(accuracy(correct_rows(5, 5)), 1000, 0) == [1.0, 1.0]
    assert interval(accuracy(correct_rows(100, 80)), 0, 0) is None


def test_the_seed_makes_intervals_reproducible():
    metric = accuracy(correct_rows(37, 20))
    assert interval(metric, 500, 3) == interval(metric, 500, 3)
    draws = {tuple(interval(metric, 200, seed)) for seed in range(5)}
    assert len(draws) > 1  # the seed is what fixes them


def test_mean_metric_matches_a_plain_index_bootstrap():
    """The vectorised counts @ features form is the textbook bootstrap: mean of x[idx] per resample."""
    x = np.random.default_rng(1).random(50)
    metric = ItemMetric([str(i) for i in range(50)], x[:, None], _mean)
    rng = np.random.default_rng(7)
    plain = x[rng.integers(0, 50, size=(300, 50))].mean(axis=1)
    assert interval(metric, 300, 7) == [round(float(q), 6) for q in np.quantile(plain, [0.025, 0.975])]


def report_rows(n: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    words = ("the heart is enlarged no pleural effusion small left atelectasis pneumothorax mild edema lungs are "
             "clear tube in place normal").split()

    def report() -> str:
        return " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 25))) + "."

    return [{"id": f"r{i}", "kind": "report", "gold": report(), "output": report() if i % 7 else None,
             "correct": None} for i in range(n)]


def test_chexpert_f1_intervals_recompute_the_summary_numbers():
    from medgpt_oss.eval.chexpert import chexpert_f1

    rows = report_rows(60)
    add_chexpert_labels(rows)
    assert len(rows[0]["chexpert"]["output"]) == len(rows[0]["chexpert"]["gold"]) == 14
    summary = {**chexpert_f1([r["output"] or "" for r in rows], [r["gold"] for r in rows]), "bleu_1": 0.3}
    add_intervals(summary, rows, 300, 0)
    for key in ("chexpert_micro_f1", "chexpert_macro_f1"):
        low, high = summary[f"{key}_ci95"]
        assert 0 <= low < high <= 1, key
    micro = summary["chexpert_micro_f1_ci95"]
    assert micro[0] <= summary["chexpert_micro_f1"] <= micro[1]
    assert "bleu_1_ci95" not in summary and "ci95_skipped" not in summary  # lexical metrics: no interval
    # a summary number that the items do not reproduce gets no interval, and the summary says so
    summary = {"chexpert_micro_f1": summary["chexpert_micro_f1"] + 0.01}
    add_intervals(summary, rows, 300, 0)
    assert "chexpert_micro_f1_ci95" not in summary and "chexpert_micro_f1" in summary["ci95_skipped"]


# -- real runs: a VQA-RAD test set of 100 closed questions, scored from predictions files ----------------------

def write_vqa_rad_closed(root: Path, n: int = 100) -> Path:
    image(root / "images/synpic100.jpg", "JPEG")
    dump(root / "testset.json", [
        {"qid": qid, "image_name": "synpic100.jpg", "image_organ": "CHEST" if qid % 2 else "HEAD",
         "answer": "yes", "answer_type": "CLOSED", "question_type": "PRES", "question": f"Finding {qid}?",
         "phrase_type": "freeform"} for qid in range(1, n + 1)])
    return root


def run_with(tmp_path: Path, root: Path, name: str, n_correct: int, extra: list[str] = ()) -> Path:
    answers = {f"vqa_rad-{q}": "Yes." if q <= n_correct else "No." for q in range(1, 101)}
    preds = predictions(tmp_path / f"{name}.jsonl", answers)
    out = tmp_path / name
    evaluate(compose_eval(["benchmark=vqa_rad", f"benchmark.root={root}", f"predictions={preds}", *extra],
                          tmp_path), out)
    return out


@pytest.fixture
def vqa_runs(tmp_path):
    root = write_vqa_rad_closed(tmp_path / "vqa_rad")
    return {"a": run_with(tmp_path, root, "a", 80), "b": run_with(tmp_path, root, "b", 90),
            "short": run_with(tmp_path, root, "short", 80, ["limit=90"])}


def test_a_run_summary_and_table_carry_intervals(vqa_runs, tmp_path):
    summary = json.loads((vqa_runs["a"] / "summary.json").read_text())
    bench = summary["benchmarks"]["vqa_rad"]
    assert bench["accuracy"] == 0.8
    assert bench["accuracy_ci95"][0] == pytest.approx(0.72, abs=0.015)
    assert bench["accuracy_ci95"][1] == pytest.approx(0.88, abs=0.015)
    assert set(bench["by_organ"]["chest"]) == {"accuracy", "n", "accuracy_ci95"}
    assert summary["meta"]["bootstrap"]["resamples"] == 1000 and summary["meta"]["bootstrap"]["seed"] == 0
    table = (vqa_runs["a"] / "results.md").read_text()
    low, high = (f"{100 * v:.2f}" for v in bench["accuracy_ci95"])
    assert f"| vqa_rad | 100 / 100 | 80.00 | {low}–{high} | 0 |" in table
    # the same run again gives the same intervals; resamples 0 turns them off
    again = run_with(tmp_path, tmp_path / "vqa_rad", "again", 80)
    assert json.loads((again / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]
    off = run_with(tmp_path, tmp_path / "vqa_rad", "off", 80, ["bootstrap.resamples=0"])
    assert "_ci95" not in (off / "summary.json").read_text()


def test_compare_a_run_with_itself_is_zero(vqa_runs):
    result = compare_runs(vqa_runs["a"], vqa_runs["a"])
    for m in result["benchmarks"]["vqa_rad"]["metrics"].values():
        assert m["diff"] == 0 and m["diff_ci95"] == [0.0, 0.0]
    assert result["benchmarks"]["vqa_rad"]["items"]["matched"] == 100


def test_compare_gives_the_difference_on_known_items(vqa_runs, tmp_path, capsys):
    result = compare_runs(vqa_runs["a"], vqa_runs["b"])
    acc = result["benchmarks"]["vqa_rad"]["metrics"]["accuracy"]
    assert (acc["a"], acc["b"], acc["n"]) == (0.8, 0.9, 100) and acc["diff"] == pytest.approx(0.1)
    # B fixes 10 items and breaks none: every resample's difference is >= 0; about 0.10 -/+ 1.96 * 0.03
    assert 0 < acc["diff_ci95"][0] < 0.1 < acc["diff_ci95"][1] < 0.2
    assert result["benchmarks"]["vqa_rad"]["metrics"]["by_organ[chest].accuracy"]["n"] == 50

    assert compare_main([str(vqa_runs["a"]), str(vqa_runs["b"]), "--out", str(tmp_path / "cmp")]) == 0
    written = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert written["benchmarks"]["vqa_rad"]["metrics"]["accuracy"] == acc
    md = (tmp_path / "cmp/compare.md").read_text()
    assert "| vqa_rad | accuracy | 100 | 80.00 | 90.00 | +10.00 |" in md and md in capsys.readouterr().out


def test_items_missing_from_one_run_are_reported(vqa_runs):
    bench = compare_runs(vqa_runs["a"], vqa_runs["short"])["benchmarks"]["vqa_rad"]
    assert bench["items"]["only_in_a"] == {"count": 10, "examples": [f"vqa_rad-{q}" for q in range(91, 96)]}
    assert bench["items"]["only_in_b"]["count"] == 0
    acc = bench["metrics"]["accuracy"]
    assert acc["n"] == 90 and acc["unpaired"] == {"a": 10, "b": 0}
    assert (acc["a"], acc["b"]) == pytest.approx((80 / 90, 80 / 90)) and acc["diff_ci95"] == [0.0, 0.0]


def test_a_run_folder_missing_its_per_item_file_is_a_clear_error(vqa_runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(vqa_runs["a"], broken)
    (broken / "vqa_rad/predictions.jsonl").unlink()
    with pytest.raises(RunFolderError, match=r"broken/vqa_rad/predictions.jsonl: missing"):
        compare_runs(vqa_runs["a"], broken)
    assert compare_main([str(vqa_runs["a"]), str(broken), "--out", str(tmp_path / "cmp")]) == 1
    assert "predictions.jsonl: missing" in capsys.readouterr().err

    (broken / "vqa_rad/predictions.jsonl").write_text('{"id": "vqa_rad-1"}\nnot json\n')
    with pytest.raises(RunFolderError, match=r"predictions.jsonl:2: not valid JSON"):
        compare_runs(vqa_runs["a"], broken)
    (broken / "summary.json").write_text('{"benchmarks": {"../../etc": {}}}')
    with pytest.raises(RunFolderError, match="is not a folder name"):
        compare_runs(vqa_runs["a"], broken)
    (broken / "summary.json").unlink()
    with pytest.raises(RunFolderError, match=r"broken/summary.json: missing"):
        compare_runs(vqa_runs["a"], broken)
