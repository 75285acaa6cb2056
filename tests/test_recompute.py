"""The LLM's speed/memory switches change nothing but speed and memory: selective activation checkpointing
and compiled decoder layers give the plain path's loss and gradients (tiny GPT-oss, CPU)."""

from __future__ import annotations

import pytest
import torch

from medgpt_oss.models.llm import LanguageModel
from tests.test_llm import TINY_GPT_OSS


def loss_and_grads(**switches) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """Loss, gradients, and how often each block of layer 0 ran forward (twice when it is recomputed)."""
    llm = LanguageModel(pretrained="openai/gpt-oss-20b", scale="tiny", tiny=TINY_GPT_OSS, init_seed=1, **switches)
    llm.train()
    layer = llm.model.model.layers[0]
    calls = {"self_attn": 0, "mlp": 0}
    # Pre-hooks on each block's first sub-module (q_proj, the router): recomputation re-enters them, and may stop
    # inside a block once it has what backward needs (early stop), so a hook after the block could miss it.
    for name, first in (("self_attn", layer.self_attn.q_proj), ("mlp", layer.mlp.router)):
        first.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
    loss = llm(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in llm.named_parameters() if p.grad is not None}, calls


@pytest.fixture(scope="module")
def plain():
    return loss_and_grads()


@pytest.mark.parametrize("mode, wrapped, layer0_calls", [
    ("layers", ["layers.0", "layers.1"], {"self_attn": 2, "mlp": 2}),
    ("every_2", ["layers.0"], {"self_attn": 2, "mlp": 2}),
    ("attention", ["layers.0.self_attn", "layers.1.self_attn"], {"self_attn": 2, "mlp": 1}),
    ("moe", ["layers.0.mlp", "layers.1.mlp"], {"self_attn": 1, "mlp": 2}),
])
def test_selective_activation_checkpointing_gives_the_plain_loss_and_gradients(plain, mode, wrapped, layer0_calls):
    llm = LanguageModel(pretrained="x", scale="tiny", tiny=TINY_GPT_OSS, activation_checkpointing=mode)
    assert llm.checkpointed == wrapped
    assert set(llm.state_dict()) == set(LanguageModel(pretrained="x", scale="tiny", tiny=TINY_GPT_OSS).state_dict())
    loss, grads, calls = loss_and_grads(activation_checkpointing=mode)
    assert calls == layer0_calls and plain[2] == {"self_attn": 1, "mlp": 1}  # recomputed in backward: ran twice
    want_loss, want_grads, _ = plain
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    assert grads.keys() == want_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_compiled_decoder_layers_give_the_plain_loss_and_gradients(plain):
    loss, grads, _ = loss_and_grads(compile="aot_eager")  # inductor is for the card; aot_eager traces the same graph
    want_loss, want_grads, _ = plain
    llm = LanguageModel(pretrained="x", scale="tiny", tiny=TINY_GPT_OSS, compile="aot_eager")
    assert all(layer._compiled_call_impl is not None for layer in llm.model.model.layers)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_misspelt_mode_is_refused():
    with pytest.raises(ValueError, match="llm.activation_checkpointing='layer'"):
        LanguageModel(pretrained="x", scale="tiny", tiny=TINY_GPT_OSS, activation_checkpointing="layer")
