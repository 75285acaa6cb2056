"""Chunked cross-entropy (models/loss.py, llm.loss_chunk_size) against transformers' own loss, fp32 on CPU."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from medgpt_oss.config import load_option
from medgpt_oss.models.llm import LanguageModel
from medgpt_oss.models.loss import chunked_cross_entropy

LENGTH = 120
# Two rows; row 0 packs samples of 40, 50 and 30 tokens (position ids restart), row 1 is one sample.
PACKED_POSITIONS = torch.stack([torch.cat([torch.arange(40), torch.arange(50), torch.arange(30)]),
                                torch.arange(LENGTH)])


def tiny_llm(lora: bool) -> LanguageModel:
    cfg = OmegaConf.to_container(load_option("llm", "gpt_oss"))
    lora_cfg = None
    if lora:
        lora_cfg = OmegaConf.to_container(load_option("lora", "r16"))
        lora_cfg["dropout"] = 0.0   # the two losses must see the same network
    llm = LanguageModel(pretrained=cfg["pretrained"], scale="tiny", tiny=cfg["tiny"], lora=lora_cfg)
    if lora:
        # peft starts lora_B at zero, which would make every lora_A gradient zero and the comparison empty.
        with torch.no_grad():
            for name, p in llm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        for name, p in llm.named_parameters():
            p.requires_grad_("lora_" in name)
    return llm.train()


def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (2, LENGTH), generator=gen)
    labels = ids.clone()
    labels[:, :25] = -100            # prompts are not supervised
    labels[0, 60:75] = -100
    return ids, labels


def loss_and_grads(llm: LanguageModel, chunk_size: int | None, packed: bool):
    ids, labels = batch()
    llm.loss_chunk_size = chunk_size
    embeds = llm.embed(ids).detach().requires_grad_(True)
    extra = {"position_ids": PACKED_POSITIONS} if packed else {}
    out = llm(inputs_embeds=embeds, labels=labels, use_cache=False, **extra)
    # The input embedding table is bypassed (inputs_embeds are given), so it has no gradient here.
    trained = {n: p for n, p in llm.named_parameters() if p.requires_grad and "embed_tokens" not in n}
    grads = torch.autograd.grad(out.loss, [embeds, *trained.values()])
    return out, dict(zip(["inputs_embeds", *trained], grads))


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_chunked_loss_and_gradients_equal_transformers(lora, packed):
    llm = tiny_llm(lora)
    reference, ref_grads = loss_and_grads(llm, None, packed)
    assert reference.logits is not None
    for chunk_size in (7, 4096):   # 7 leaves a ragged last chunk; 4096 is one chunk
        out, grads = loss_and_grads(llm, chunk_size, packed)
        assert out.logits is None, "the chunked path must not hand back full logits"
        torch.testing.assert_close(out.loss, reference.loss, rtol=1e-6, atol=1e-6)
        assert grads.keys() == ref_grads.keys()
        if lora:
            assert sum("lora_A" in n for n in grads) and sum("lora_B" in n for n in grads)
        for name, grad in grads.items():
            assert ref_grads[name].abs().max() > 0, f"{name}: reference gradient is zero"
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_output_head_runs_on_supervised_tokens_only_in_chunks_recomputed_in_backward():
    llm = tiny_llm(lora=False)
    ids, labels = batch()
    supervised = int((labels[:, 1:] != -100).sum())
    calls: list[int] = []
    head = llm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    hidden = llm.model.get_decoder()(input_ids=ids).last_hidden_state
    loss = chunked_cross_entropy(hidden, head, labels, chunk_size=64)
    forward_calls = list(calls)
    loss.backward()
    handle.remove()
    assert supervised == 175   # 2 rows x 119 shifted targets - 2 x 24 prompt - 15 masked
    assert forward_calls == [64, 64, 47]
    # Backward recomputes each chunk's logits (last chunk first) instead of keeping them.
    assert calls == forward_calls + forward_calls[::-1]


def test_no_supervised_tokens_is_nan_like_transformers():
    llm = tiny_llm(lora=False)
    ids, _ = batch()
    labels = torch.full_like(ids, -100)
    llm.loss_chunk_size = None
    reference = llm(input_ids=ids, labels=labels, use_cache=False).loss
    llm.loss_chunk_size = 16
    assert torch.isnan(reference) and torch.isnan(llm(input_ids=ids, labels=labels, use_cache=False).loss)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        chunked_cross_entropy(torch.zeros(1, 4, 8), torch.nn.Linear(8, 5), torch.zeros(1, 4, dtype=torch.long), 0)


def test_config_sets_the_chunk_size(tmp_path):
    import hydra

    from tests.conftest import compose_train

    cfg = compose_train(["+stage=instruct", "scale=tiny"], tmp_path)
    assert hydra.utils.instantiate(cfg.llm).loss_chunk_size == 1024   # on by default (experiments/throughput.md)
    cfg = compose_train(["+stage=instruct", "scale=tiny", "llm.loss_chunk_size=null"], tmp_path)
    assert hydra.utils.instantiate(cfg.llm).loss_chunk_size is None
