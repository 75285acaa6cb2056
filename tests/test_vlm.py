"""Images really flow into the LLM: projected patches land in the image slots, in order."""

import pytest
import torch
from omegaconf import OmegaConf

from medgpt_oss.config import load_option
from medgpt_oss.models.vlm import MedVLM


def tiny_vlm(encoder="clip", projector="mlp2x_gelu", lora=None) -> MedVLM:
    cfg = OmegaConf.create({"scale": "tiny", "init_seed": 0, "chat": load_option("chat", "harmony")})
    cfg.encoder = load_option("encoder", encoder)
    cfg.projector = load_option("projector", projector)
    cfg.llm = load_option("llm", "gpt_oss")
    cfg.lora = load_option("lora", lora) if lora else None
    return MedVLM.from_config(cfg)


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def sample_ids(vlm, n_images, text=(20, 21, 22)):
    ids = [5]
    for _ in range(n_images):
        ids += [vlm.image_token_id] * vlm.tokens_per_image + [30]
    return torch.tensor(ids + list(text))


def test_projected_patches_fill_the_image_slots_in_order(vlm):
    # Sample 0 has two images (multi-view), sample 1 one image; images are consumed in batch order.
    a, b = sample_ids(vlm, 2), sample_ids(vlm, 1)
    ids = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True, padding_value=0)
    pixels = torch.randn(3, 3, vlm.encoder.image_size, vlm.encoder.image_size)
    embeds = vlm.embed(ids, pixels)
    features = vlm.encode_images(pixels)
    slots = ids == vlm.image_token_id
    torch.testing.assert_close(embeds[0][slots[0]], features[:2].reshape(-1, features.shape[-1]))
    torch.testing.assert_close(embeds[1][slots[1]], features[2])
    torch.testing.assert_close(embeds[~slots], vlm.llm.embed(ids)[~slots])


def test_changing_the_image_changes_later_logits_only(vlm):
    ids = sample_ids(vlm, 1).unsqueeze(0)
    first_image_pos = int((ids[0] == vlm.image_token_id).nonzero()[0])
    x = torch.randn(1, 3, 64, 64)
    logits_a = vlm(input_ids=ids, pixel_values=x).logits
    logits_b = vlm(input_ids=ids, pixel_values=torch.zeros_like(x)).logits
    torch.testing.assert_close(logits_a[:, :first_image_pos], logits_b[:, :first_image_pos])
    assert (logits_a[:, -1] - logits_b[:, -1]).abs().max() > 1e-3


def test_slot_count_mismatch_is_an_error(vlm):
    ids = sample_ids(vlm, 2).unsqueeze(0)
    with pytest.raises(ValueError, match="image-token slots"):
        vlm.embed(ids, torch.randn(1, 3, 64, 64))


def test_text_only_batch_needs_no_images(vlm):
    ids = torch.tensor([[5, 20, 21, 22]])
    assert vlm(input_ids=ids, labels=ids).loss.isfinite()


def test_align_freezing_lets_gradient_reach_only_the_projector():
    vlm = tiny_vlm()
    vlm.set_trainable(encoder=False, projector=True, llm=False)
    ids = sample_ids(vlm, 1).unsqueeze(0)
    vlm(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64), labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.projector.parameters())
    assert all(p.grad is None for p in vlm.encoder.parameters())
    assert all(p.grad is None for p in vlm.llm.parameters())
    summary = vlm.parameter_summary()
    assert summary["encoder"]["trainable"] == 0 and summary["llm"]["trainable"] == 0
    assert summary["projector"]["trainable"] == summary["projector"]["total"] > 0


def test_lora_llm_training_means_adapters_only():
    vlm = tiny_vlm(lora="r16")
    vlm.set_trainable(encoder=False, projector=True, llm=True)
    trainable = [n for n, p in vlm.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_text_only_batch_under_distributed_training_still_runs_the_vision_tower(tmp_path):
    """DDP/FSDP need the same modules on every rank: a text-only batch runs a blank image times zero."""
    import torch.distributed as dist

    vlm = tiny_vlm()
    vlm.set_trainable(encoder=False, projector=True, llm=True)
    ids = torch.tensor([[5, 20, 21, 22]])
    vlm.train()
    alone = vlm(input_ids=ids, labels=ids).loss
    alone.backward()
    assert all(p.grad is None for p in vlm.projector.parameters())  # one process: nothing to line up
    vlm.zero_grad(set_to_none=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loss = vlm(input_ids=ids, labels=ids).loss
        loss.backward()
    finally:
        dist.destroy_process_group()
    assert torch.equal(loss, alone)  # the blank image changes nothing...
    grads = [p.grad for p in vlm.projector.parameters()]
    assert all(g is not None and not g.any() for g in grads)  # ...but the projector took part (zero gradient)
