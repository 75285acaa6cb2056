"""A packed batch gives every sample exactly the loss it gets when run on its own."""

import pytest
import torch
import torch.nn.functional as F

from medgpt_oss.data.conversation import IGNORE_INDEX
from medgpt_oss.data.datamodule import read_jsonl
from medgpt_oss.data.packing import pack, plan_rows
from medgpt_oss.data.processor import SampleProcessor
from tests.test_vlm import tiny_vlm


def test_plan_rows_fits_everything_without_overflow():
    lengths = [70, 10, 50, 40, 30, 30, 100]
    rows = plan_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 330 tokens need at least 4 rows of 100
    with pytest.raises(ValueError, match="exceeds pack_length"):
        plan_rows([101], 100)


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss of one sample's labels (shifted within the sample)."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


def test_packed_loss_equals_per_sample_loss(medsynth_dir):
    vlm = tiny_vlm().eval()
    root = medsynth_dir / "medsynth"
    records = read_jsonl(root / "train.jsonl")
    # Single-image, two-image (multi-view, longitudinal) and text-only samples together.
    chosen = [next(r for r in records if r["task"] == t) for t in
              ("caption", "multiview_report", "longitudinal", "text_qa", "closed", "multiturn")]
    processor = SampleProcessor(vlm.input_spec(), root)
    samples = [processor(r) for r in chosen]
    batch = pack(samples, pack_length=400, pad_id=processor.pad_id)
    assert batch["input_ids"].shape[0] < len(samples), "nothing was packed"

    with torch.no_grad():
        packed_logits = vlm(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            pixel_values=batch["pixel_values"], use_cache=False).logits
        packed_loss = vlm(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                          pixel_values=batch["pixel_values"], labels=batch["labels"], use_cache=False).loss
    # Walk each row, cutting it at the position-id restarts, in the order pack() laid samples out.
    starts = {}
    for r in range(batch["input_ids"].shape[0]):
        pos = batch["position_ids"][r]
        starts[r] = [i for i in range(len(pos)) if pos[i] == 0]
    cursor = {r: 0 for r in starts}
    total, count = 0.0, 0
    for sample_id, r in zip(batch["ids"], batch["row_of_sample"]):
        sample = samples[[s["id"] for s in samples].index(sample_id)]
        n = len(sample["input_ids"])
        begin = starts[r][cursor[r]]
        cursor[r] += 1
        assert torch.equal(batch["input_ids"][r, begin:begin + n], sample["input_ids"])
        with torch.no_grad():
            alone = vlm(input_ids=sample["input_ids"][None], pixel_values=sample["pixel_values"],
                        use_cache=False).logits[0]
        torch.testing.assert_close(packed_logits[r, begin:begin + n], alone, rtol=1e-4, atol=1e-4)
        total += float(sample_losses(alone, sample["labels"]))
        count += int((sample["labels"][1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(float(packed_loss), total / count, rtol=1e-4, atol=1e-4)
