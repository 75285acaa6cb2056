"""A packed batch gives every sample exactly the loss it gets when run on its own."""

import pytest
import torch
import torch.nn.functional as F

from medgpt_oss.data.conversation import IGNORE_INDEX
from medgpt_oss.data.jsonl import read_jsonl
from medgpt_oss.data.packing import PackedBatchSampler, pack, plan_rows, plan_window
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


# -- rows planned over a lookahead window --------------------------------------------------------------

def _lengths(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(40, 300, (n,), generator=g).tolist()


@pytest.mark.parametrize("pack_length", [512, 2048])
def test_planned_rows_hold_every_sample_once_and_fill_their_rows(pack_length):
    lengths = _lengths(3000)
    rows = plan_window(lengths, pack_length, lookahead=256)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= pack_length for row in rows)
    assert sum(lengths) / (len(rows) * pack_length) >= 0.97
    # without lookahead, rows are what the stream order leaves: far emptier
    assert sum(lengths) / (len(plan_window(lengths, pack_length, 1)) * pack_length) < 0.85


def test_planned_rows_keep_the_stream_order_within_the_window():
    lengths = _lengths(2000)
    rows = plan_window(lengths, 1024, lookahead=64)
    firsts = [row[0] for row in rows]
    assert firsts == sorted(firsts)  # each row opens with the oldest sample still waiting
    # so a sample waits at most for the rows of the samples older than it in the window
    row_of = {i: k for k, row in enumerate(rows) for i in row}
    assert all(row_of[i] <= sum(1 for f in firsts if f < i) for i in row_of)
    with pytest.raises(ValueError, match="more than pack_length=100"):
        plan_window([50, 101], 100, 4)


def _batches(sampler: PackedBatchSampler, count: int | None = None) -> list[list[tuple[int, int]]]:
    out = []
    for batch in sampler:
        out.append(batch)
        sampler.batches_done += 1  # what the data module does per trained batch
        if count is not None and len(out) == count:
            break
    return out


def test_packed_sampler_resumes_mid_pass_and_across_passes_to_the_same_rows():
    lengths = _lengths(500)
    straight = PackedBatchSampler(lengths, seed=3, pack_length=1024, rows=2, lookahead=128)
    per_pass = len(straight)
    stream = _batches(straight) + _batches(straight)  # two passes, reshuffled
    assert len(stream) == 2 * per_pass and stream[0] != stream[per_pass]
    assert sorted(i for b in stream[:per_pass] for i, _ in b) == list(range(500))
    for stop in (1, per_pass - 1, per_pass, per_pass + 3):
        fresh = PackedBatchSampler(lengths, seed=3, pack_length=1024, rows=2, lookahead=128)
        fresh.epoch, fresh.batches_done = divmod(stop, per_pass)
        assert (_batches(fresh) + _batches(fresh))[: 2 * per_pass - stop] == stream[stop:]


@pytest.mark.parametrize("replicas", [2, 3])
def test_packed_ranks_together_train_the_one_process_rows_in_equal_numbers(replicas):
    lengths = _lengths(400)
    one = PackedBatchSampler(lengths, seed=1, pack_length=1024, rows=2 * replicas, lookahead=64)
    ranks = [PackedBatchSampler(lengths, seed=1, pack_length=1024, rows=2, lookahead=64, num_replicas=replicas,
                                rank=r) for r in range(replicas)]
    per_rank = [list(iter(r)) for r in ranks]
    assert len({len(b) for b in per_rank}) == 1  # no DDP hang
    for k, batch in enumerate(per_rank[0]):
        together = sorted(i for r in per_rank for i, _ in r[k])
        assert together == sorted(i for i, _ in list(iter(one))[k])


def _module(root, spec, **overrides):
    from medgpt_oss.data.datamodule import ConversationDataModule

    kwargs = dict(tasks=["caption", "closed", "report", "multiview_report"], pack_length=2048, pack_lookahead=256,
                  pack_rows=2, val_split=None, seed=5)
    module = ConversationDataModule(str(root), spec, **{**kwargs, **overrides})
    module.setup("fit")
    return module


def test_data_module_packs_planned_rows_and_resumes_them_from_its_state(medsynth_dir):
    spec = tiny_vlm().input_spec()
    root = medsynth_dir / "medsynth"
    module = _module(root, spec)
    loader = iter(module.train_dataloader())
    first = [next(loader) for _ in range(3)]
    for batch in first:
        module.train_sampler.batches_done += 1  # as on_after_batch_transfer does for each trained batch
        assert batch["input_ids"].shape[0] == 2
    # rows are full (with first-fit inside batches of samples they are not): the whole pass, as planned
    # (but the pass's last few rows, where the window drains)
    lengths, rows = module.datasets["train"].lengths(), [row for b in module.train_sampler.plan(0) for row in b]
    assert sum(lengths[i] for row in rows[:-2] for i in row) / (len(rows[:-2]) * 2048) > 0.95
    state = module.state_dict()
    assert state["train_packed_position"] == [0, 3]
    expected = [next(loader) for _ in range(2)]

    resumed = _module(root, spec)
    resumed.load_state_dict(state)
    again = iter(resumed.train_dataloader())
    for want in expected:
        got = next(again)
        assert got["ids"] == want["ids"]
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])

    changed = _module(root, spec, pack_rows=3)
    changed.load_state_dict(state)
    with pytest.raises(ValueError, match="pack_rows: 2 -> 3"):
        changed.train_dataloader()
    unplanned = _module(root, spec, pack_lookahead=0)
    unplanned.load_state_dict(state)
    with pytest.raises(ValueError, match="this run does not"):
        unplanned.train_dataloader()


def test_a_sample_longer_than_the_row_is_named_before_training(medsynth_dir):
    spec = tiny_vlm().input_spec()
    module = _module(medsynth_dir / "medsynth", spec, tasks=["series_report"], pack_length=600)
    with pytest.raises(ValueError, match=r"longer than data.pack_length=600, e.g. record 'medsynth-train-\d+-series"):
        module.train_dataloader()
    # with max_length at the row length, the long ones are skipped (length 0 in the plan) and counted in training
    module = _module(medsynth_dir / "medsynth", spec, tasks=["series_report", "caption"], pack_length=600,
                     max_length=600)
    batches = list(module.train_dataloader())
    assert max(b["input_ids"].shape[1] for b in batches) <= 600
    skipped = module.datasets["train"].lengths().count(0)
    assert skipped > 0 and sum(b["skipped"] for b in batches) == skipped
    assert all("exceed max_length=600" in reason for b in batches for reason in b["skipped_reasons"])


def test_planned_packing_over_several_passes_needs_max_steps(medsynth_dir):
    import lightning as L

    module = _module(medsynth_dir / "medsynth", tiny_vlm().input_spec())
    module.trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        module.train_dataloader()
    module.trainer = L.Trainer(max_epochs=3, max_steps=10, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False)
    assert len(module.train_dataloader()) > 0
