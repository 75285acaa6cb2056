"""The data throughput benchmark runs the real loading path and ends with one JSON line."""

from __future__ import annotations

import json

from medgpt_oss.bench.data import NEEDED_PER_CORE, main


def test_bench_data_prints_its_figures_as_json_last(capsys):
    result = main(["--samples", "32", "--workers", "0,1", "--batch-size", "8"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
    assert [r["workers"] for r in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert run["images"] == 32  # 4 full batches, no sample skipped
        assert run["images_per_s"] > 0 and run["images_per_s_per_core"] == round(run["images_per_s"], 1)
    assert result["input_size"] == 336 and result["source_size"] == 512
    assert set(result["breakdown_ms"]) == {"decode_ms", "resize_ms", "normalise_ms", "transform_total_ms",
                                           "normalise_torchvision_ms", "tokenise_ms", "collate_ms"}
    assert result["needed_images_per_s_per_core"] == round(NEEDED_PER_CORE, 1) == 67.8
    assert result["vs_h200_need"] == round(result["best_images_per_s_per_core"] / NEEDED_PER_CORE, 3)
