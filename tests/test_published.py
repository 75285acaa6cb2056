"""One reader per published data set: the training source and the benchmark of a data set read the same
records from the same files, so the two can never drift apart."""

from __future__ import annotations

import pytest

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.sources.iu_xray import IUXrayR2Gen
from medgpt_oss.data.sources.mimic_cxr import MIMICCXRR2Gen
from medgpt_oss.data.sources.pathvqa import PathVQA
from medgpt_oss.data.sources.pmc_vqa import PMCVQA
from medgpt_oss.data.sources.slake import SLAKE
from medgpt_oss.data.sources.vqa_rad import VQARAD
from medgpt_oss.eval.benchmarks import image_mcq, reports, vqa
from medgpt_oss.eval.benchmarks.base import MalformedItem
from tests.fixtures_formats import (write_iu_r2gen, write_mimic_r2gen, write_pathvqa, write_pmc_vqa, write_slake,
                                    write_vqa_rad)

# data set: (fixture writer, training source, benchmark on the same root, the source id of a benchmark item id)
SAME_FILES = {
    "vqa_rad": (write_vqa_rad, VQARAD, vqa.VQARAD, lambda item_id: item_id),
    "slake": (write_slake, SLAKE, vqa.SLAKE, lambda item_id: item_id),
    "pathvqa": (write_pathvqa, PathVQA, vqa.PathVQA, lambda item_id: item_id),
    "pmc_vqa": (write_pmc_vqa, PMCVQA, lambda root: image_mcq.PMCVQA(root, file="test_2.csv"),
                lambda item_id: item_id.replace("pmc_vqa-", "pmc_vqa-test-")),
    "iu_xray": (write_iu_r2gen, IUXrayR2Gen, lambda root: reports.IUXray(root, name="iu_xray"),
                lambda item_id: item_id),
    "mimic_cxr": (write_mimic_r2gen, MIMICCXRR2Gen, lambda root: reports.MIMICCXR(root, name="mimic_cxr"),
                  lambda item_id: item_id.replace("mimic_cxr-", "mimic_cxr-s") + "-report"),
}


@pytest.mark.parametrize("dataset", sorted(SAME_FILES))
def test_the_training_source_and_the_benchmark_read_the_same_test_records(tmp_path, dataset):
    write, source, benchmark, source_id = SAME_FILES[dataset]
    write(tmp_path)
    read = [r for r in source(tmp_path).records() if r.split == "test"]
    records = {r.id: r for r in read if not isinstance(r, Skip)}
    skipped = {r.id for r in read if isinstance(r, Skip)}
    items = list(benchmark(tmp_path).items())
    assert records and items
    samples = {source_id(i.id) for i in items}
    assert samples == {i for i in records if dataset != "mimic_cxr" or i.endswith("-report")} | skipped
    for item in items:
        if isinstance(item, MalformedItem):
            assert source_id(item.id) in skipped, item
            continue
        record = records[source_id(item.id)]
        human, answer = (turn["value"] for turn in record.conversations)
        assert [tmp_path / image for image in item.images] == record.images
        if item.kind in ("closed", "open"):
            assert human == f"<image>\n{item.question}"
            assert item.gold == (answer.lower() if item.kind == "closed" else answer)
            assert item.groups["type"] == record.task
        elif item.kind == "mcq":
            assert human.startswith(f"<image>\n{item.question}\n")
            assert answer == f"{item.gold}. {item.options[item.gold]}"
        else:
            assert item.gold == answer


@pytest.mark.parametrize("allowed", [False, True])
def test_an_image_folder_outside_the_root_is_left_to_the_image_check(tmp_path, tiny_tokenizer, allowed):
    """An absolute ``image_dirs`` entry elsewhere is read like one inside the root; whether its images may be used
    is the images' own check (``outside_root`` skips, or allowed with ``allow_outside_root``), for the training
    source and the benchmark alike."""
    from pathlib import Path

    from medgpt_oss.data.conversation import ConversationError, HarmonyFormatter
    from medgpt_oss.data.processor import ModelInputSpec, SampleProcessor
    from medgpt_oss.harmony import IMAGE_TOKEN
    from medgpt_oss.prepare import prepare

    root, elsewhere = write_vqa_rad(tmp_path / "vqa_rad"), tmp_path / "elsewhere" / "imgs"
    elsewhere.parent.mkdir()
    (root / "images").rename(elsewhere)
    source = VQARAD(root, image_dirs=[str(elsewhere)], allow_outside_root=allowed)
    images = {str(p) for r in source.records() if not isinstance(r, Skip) for p in r.images}
    assert images == {str(elsewhere / "synpic100.jpg"), str(elsewhere / "synpic200.jpg")}
    report = prepare(source, tmp_path / "out", HarmonyFormatter(tiny_tokenizer, IMAGE_TOKEN, 16, max_length=256))
    if allowed:
        assert report["written"] == 5 and "outside_root" not in report["skip_reasons"]
    else:
        assert report["written"] == 0 and report["skip_reasons"]["outside_root"]["count"] == 5

    items = [i for i in vqa.VQARAD(str(root), image_dirs=(str(elsewhere),)).items() if not isinstance(i, MalformedItem)]
    assert len(items) == 2 and {Path(image).parent for i in items for image in i.images} == {elsewhere}
    spec = ModelInputSpec(tiny_tokenizer, IMAGE_TOKEN, tokens_per_image=4, image_size=32, image_mean=(0.5, 0.5, 0.5),
                          image_std=(0.5, 0.5, 0.5))
    processor = SampleProcessor(spec, root, allow_outside_root=allowed)
    if allowed:
        assert processor.load_pixels(items[0].id, items[0].images)[0].shape == (1, 3, 32, 32)
    else:
        with pytest.raises(ConversationError, match="outside_root: image .* outside the data root"):
            processor.load_pixels(items[0].id, items[0].images)
