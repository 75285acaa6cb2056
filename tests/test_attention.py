"""FlexAttention with GPT-oss sinks (models/attention.py) against transformers' eager reference, fp32 on CPU.

What CPU allows in torch 2.14.1: flex_attention's forward (uncompiled) but no backward. So the
forward is compared kernel to kernel; the gradients (q, k, v, sinks) of our part -- the mask_mod
and the sink folded in as ``out * sigmoid(lse - sink)`` -- are compared through a dense
differentiable attention built from the same mask_mod; experiments/gpu/bench_h200.sh compares
the compiled kernel's gradients with eager on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention.flex_attention import create_mask
from transformers import GptOssConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

from medgpt_oss.models.attention import (
    FLEX,
    block_mask,
    document_mask_mod,
    flex_attention_forward,
    fold_sinks,
    sequence_ids_from_positions,
)

# fp32: the kernels sum in different orders, so outputs agree to rounding, not bit for bit.
ATOL = 2e-5
BATCH, HEADS, KV_HEADS, LENGTH, HEAD_DIM, WINDOW = 2, 4, 2, 300, 16, 32   # 300: three 128-token blocks, one partial
DOC_LENGTHS = [(90, 130, 80), (300,)]   # row 0 packs three samples, row 1 is one sample


def packed_positions() -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in DOC_LENGTHS])


def eager_mask(kind: str) -> torch.Tensor:
    """The additive [B, 1, S, S] mask transformers' own builders give the eager path (independent of our mask_mod)."""
    config = GptOssConfig(sliding_window=WINDOW)
    config._attn_implementation = "eager"
    embeds = torch.zeros(BATCH, LENGTH, 8)
    builder = create_sliding_window_causal_mask if kind == "sliding" else create_causal_mask
    if kind == "packed":
        # transformers finds the samples from position ids that restart (as LanguageModel relies on).
        return builder(config, embeds, None, None, position_ids=packed_positions(), allow_is_causal_skip=False)
    return builder(config, embeds, None, None, allow_is_causal_skip=False)


def our_mask_mod(kind: str):
    sequence_ids = sequence_ids_from_positions(packed_positions()) if kind == "packed" else None
    return document_mask_mod(sequence_ids, WINDOW if kind == "sliding" else None), sequence_ids


class SinkHeads(nn.Module):
    """What the attention functions read from a GptOssAttention module."""

    def __init__(self, sinks: torch.Tensor) -> None:
        super().__init__()
        self.sinks = nn.Parameter(sinks)
        self.num_key_value_groups = HEADS // KV_HEADS


def inputs(requires_grad: bool = False):
    gen = torch.Generator().manual_seed(0)
    shapes = [(BATCH, HEADS, LENGTH, HEAD_DIM), (BATCH, KV_HEADS, LENGTH, HEAD_DIM),
              (BATCH, KV_HEADS, LENGTH, HEAD_DIM)]
    q, k, v = (torch.randn(*s, generator=gen).requires_grad_(requires_grad) for s in shapes)
    return q, k, v, torch.randn(HEADS, generator=gen) * 2


def dense_sink_attention(q, k, v, sinks, mask_mod):
    """Differentiable dense attention from the same mask_mod, with our sink folding."""
    keep = create_mask(mask_mod, BATCH, 1, LENGTH, LENGTH, device="cpu")
    groups = HEADS // KV_HEADS
    scores = q @ k.repeat_interleave(groups, 1).transpose(-1, -2) * HEAD_DIM**-0.5
    scores = scores.masked_fill(~keep, float("-inf"))
    out = torch.softmax(scores, -1) @ v.repeat_interleave(groups, 1)
    return fold_sinks(out, torch.logsumexp(scores, -1), sinks).transpose(1, 2)


@pytest.mark.parametrize("kind", ["full", "sliding", "packed"])
def test_flex_forward_equals_eager(kind):
    q, k, v, sinks = inputs()
    reference, _ = eager_attention_forward(SinkHeads(sinks), q, k, v, eager_mask(kind), scaling=HEAD_DIM**-0.5)
    mask_mod, sequence_ids = our_mask_mod(kind)
    mask = block_mask(LENGTH, "cpu", WINDOW if kind == "sliding" else None, sequence_ids)
    with torch.no_grad():
        out, _ = flex_attention_forward(SinkHeads(sinks), q, k, v, mask, scaling=HEAD_DIM**-0.5, s_aux=sinks)
    assert out.shape == reference.shape == (BATCH, LENGTH, HEADS, HEAD_DIM)
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)
    # The sinks matter here: without them the outputs differ by far more than the tolerance.
    no_sink, _ = flex_attention_forward(SinkHeads(sinks), q, k, v, mask, scaling=HEAD_DIM**-0.5, s_aux=None)
    assert (no_sink - reference).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind", ["full", "sliding", "packed"])
def test_sink_folding_gradients_equal_eager(kind):
    q, k, v, sinks = inputs(requires_grad=True)
    heads = SinkHeads(sinks.clone())
    sinks = sinks.clone().requires_grad_(True)
    target = torch.randn(BATCH, LENGTH, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1))

    reference, _ = eager_attention_forward(heads, q, k, v, eager_mask(kind), scaling=HEAD_DIM**-0.5)
    ref_grads = torch.autograd.grad((reference * target).sum(), [q, k, v, heads.sinks])
    ours = dense_sink_attention(q, k, v, sinks, our_mask_mod(kind)[0])
    our_grads = torch.autograd.grad((ours * target).sum(), [q, k, v, sinks])

    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    for name, mine, theirs in zip("q k v sinks".split(), our_grads, ref_grads):
        assert theirs.abs().max() > 1e-3, f"{name}: reference gradient is ~0, the comparison would prove nothing"
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


def test_flex_refuses_to_train_on_cpu_with_a_clear_message():
    q, k, v, sinks = inputs(requires_grad=True)
    with pytest.raises(RuntimeError, match="llm.attn_implementation=eager"):
        flex_attention_forward(SinkHeads(sinks), q, k, v, None, scaling=HEAD_DIM**-0.5, s_aux=sinks)


def test_tiny_gpt_oss_logits_flex_equal_eager(tmp_path):
    """The whole tiny GPT-oss (alternating sliding/full layers) built from conf/llm with attn_implementation=flex."""
    import hydra

    from tests.conftest import compose_train

    def build(impl: str):
        cfg = compose_train(["+stage=instruct", "scale=tiny", f"llm.attn_implementation={impl}",
                              "llm.tiny.sliding_window=32"], tmp_path)  # windows shorter than the spans
        return hydra.utils.instantiate(cfg.llm)

    eager, flex = build("eager"), build(FLEX)
    assert flex.model.config._attn_implementation == FLEX
    assert set(flex.model.config.layer_types) == {"sliding_attention", "full_attention"}
    ids = torch.randint(0, 300, (BATCH, LENGTH), generator=torch.Generator().manual_seed(2))
    padding = torch.ones(BATCH, LENGTH, dtype=torch.long)
    padding[1, 200:] = 0
    with torch.no_grad():
        embeds = eager.embed(ids)
        for name, extra in [("packed", {"position_ids": packed_positions()}), ("plain", {}),
                            ("padded", {"attention_mask": padding})]:
            reference = eager(inputs_embeds=embeds, use_cache=False, **extra).logits
            logits = flex(inputs_embeds=embeds, use_cache=False, **extra).logits
            if name == "padded":   # padded positions' outputs are meaningless in both
                reference, logits = reference[1, :200], logits[1, :200]
            torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0, msg=name)


def test_eager_packed_equals_eager_in_logits_gradients_and_generation(tmp_path):
    """Per-sample eager attention (models/document_attention.py) on the whole tiny GPT-oss: packed rows give
    eager's logits and gradients (sinks included), plain/padded batches and cached generation are eager's own."""
    import hydra

    from medgpt_oss.models.document_attention import EAGER_PACKED, SampleSpans
    from tests.conftest import compose_train

    def build(impl: str):
        cfg = compose_train(["+stage=instruct", "scale=tiny", f"llm.attn_implementation={impl}",
                              "llm.tiny.sliding_window=32"], tmp_path)  # windows shorter than the spans
        return hydra.utils.instantiate(cfg.llm)

    eager, packed = build("eager"), build(EAGER_PACKED)
    positions = packed_positions()
    spans = SampleSpans.from_positions(positions)
    assert spans.spans == (((0, 90), (90, 220), (220, 300)), ((0, 300),))
    ids = torch.randint(0, 300, (BATCH, LENGTH), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    for model in (eager, packed):
        model.train()  # the gradients are what training uses
    results = {}
    for name, model in (("eager", eager), ("packed", packed)):
        out = model(inputs_embeds=model.embed(ids), position_ids=positions, labels=labels, use_cache=False)
        out.loss.backward()
        results[name] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.model.named_parameters()
                                             if p.grad is not None})
    torch.testing.assert_close(results["packed"][0], results["eager"][0], atol=1e-5, rtol=0)
    sinks = [n for n in results["eager"][1] if n.endswith("sinks")]
    assert sinks and set(results["packed"][1]) == set(results["eager"][1])
    for n, grad in results["eager"][1].items():
        torch.testing.assert_close(results["packed"][1][n], grad, atol=1e-5, rtol=1e-4, msg=n)
    # without packing (no position restarts, padding, a KV cache) it is eager itself
    padding = torch.ones(BATCH, 40, dtype=torch.long)
    padding[1, 30:] = 0
    with torch.no_grad():
        for model in (eager, packed):
            model.eval()
        torch.testing.assert_close(packed.model(input_ids=ids[:, :40], attention_mask=padding).logits[1, :30],
                                   eager.model(input_ids=ids[:, :40], attention_mask=padding).logits[1, :30],
                                   atol=1e-5, rtol=0)
        prompt = ids[:1, :12]
        assert torch.equal(packed.model.generate(prompt, max_new_tokens=8, do_sample=False),
                           eager.model.generate(prompt, max_new_tokens=8, do_sample=False))


def test_eager_packed_refuses_spans_over_a_kv_cache():
    from medgpt_oss.models.document_attention import SampleSpans, eager_packed_attention_forward

    q, k, v, sinks = inputs()
    module = type("GptOssAttention", (SinkHeads,), {"__module__": eager_attention_forward.__module__})(sinks)
    spans = SampleSpans.from_positions(packed_positions()[:, :200])
    with pytest.raises(ValueError, match="cannot extend a KV cache"):
        eager_packed_attention_forward(module, q[:, :, :200], k, v, spans, scaling=HEAD_DIM**-0.5)
