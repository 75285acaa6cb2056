"""GPU check of models/attention.py against GPT-oss's eager attention: forward outputs AND gradients.

    python experiments/gpu/check_attention.py OUT.json

GPT-oss-20B head shapes (64 query / 8 key-value heads of dim 64), 4,096 tokens, for full,
128-token sliding and packed (documents of 1,000 / 1,500 / 1,596 tokens, full attention)
masks, in fp32 and bf16: max |difference| of the output and of the q, k, v and sink gradients
(the compiled FlexAttention backward, which CPU lacks), and forward+backward milliseconds of
each. Writes one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

from types import SimpleNamespace

import torch
from transformers import GptOssConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

from medgpt_oss.models.attention import block_mask, flex_attention_forward, sequence_ids_from_positions

HEADS, KV_HEADS, HEAD_DIM, LENGTH, WINDOW = 64, 8, 64, 4096, 128
DOCS = (1000, 1500, 1596)


def heads(sinks: torch.Tensor) -> SimpleNamespace:
    """What the attention functions read from a GptOssAttention module (sinks as a tensor, so its gradient flows)."""
    return SimpleNamespace(sinks=sinks, num_key_value_groups=HEADS // KV_HEADS, training=True)


def eager_mask(kind: str, dtype: torch.dtype, positions: torch.Tensor) -> torch.Tensor:
    config = GptOssConfig(sliding_window=WINDOW)
    config._attn_implementation = "eager"
    embeds = torch.zeros(1, LENGTH, 8, device="cuda", dtype=dtype)
    builder = create_sliding_window_causal_mask if kind == "sliding" else create_causal_mask
    extra = {"position_ids": positions} if kind == "packed" else {}
    return builder(config, embeds, None, None, allow_is_causal_skip=False, **extra)


def fwd_bwd(fn, inputs, target):
    out = fn(*inputs)
    grads = torch.autograd.grad((out.float() * target).sum(), inputs)
    return out, grads


def timed(fn, inputs, target, repeats=5) -> float:
    fwd_bwd(fn, inputs, target)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fwd_bwd(fn, inputs, target)
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


def check(kind: str, dtype: torch.dtype) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, device="cuda", generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    q, k, v = make(1, HEADS, LENGTH, HEAD_DIM), make(1, KV_HEADS, LENGTH, HEAD_DIM), make(1, KV_HEADS, LENGTH, HEAD_DIM)
    sinks = make(HEADS)
    target = torch.randn(1, LENGTH, HEADS, HEAD_DIM, device="cuda", generator=gen)
    positions = torch.cat([torch.arange(n, device="cuda") for n in DOCS])[None]
    scale = HEAD_DIM**-0.5
    mask = eager_mask(kind, dtype, positions)
    bmask = block_mask(LENGTH, "cuda", WINDOW if kind == "sliding" else None,
                       sequence_ids_from_positions(positions) if kind == "packed" else None)

    def eager(q, k, v, sinks):
        return eager_attention_forward(heads(sinks), q, k, v, mask, scaling=scale)[0]

    def flex(q, k, v, sinks):
        return flex_attention_forward(heads(sinks), q, k, v, bmask, scaling=scale,
                                      sliding_window=WINDOW if kind == "sliding" else None, s_aux=sinks)[0]

    inputs = (q, k, v, sinks)
    ref_out, ref_grads = fwd_bwd(eager, inputs, target)
    out, grads = fwd_bwd(flex, inputs, target)
    result = {"kind": kind, "dtype": str(dtype).split(".")[-1],
              "out_max_abs_diff": float((out.float() - ref_out.float()).abs().max()),
              "out_max_abs": float(ref_out.float().abs().max())}
    for name, g, r in zip(("q", "k", "v", "sinks"), grads, ref_grads):
        result[f"grad_{name}_max_abs_diff"] = float((g.float() - r.float()).abs().max())
        result[f"grad_{name}_max_abs"] = float(r.float().abs().max())
    result["eager_fwd_bwd_ms"] = timed(eager, inputs, target)
    result["flex_fwd_bwd_ms"] = timed(flex, inputs, target)
    return result


def main() -> None:
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": []}
    for dtype in (torch.float32, torch.bfloat16):
        for kind in ("full", "sliding", "packed"):
            try:
                results["checks"].append(check(kind, dtype))
            except Exception as exc:  # record and go on: one failing case must not hide the others
                results["checks"].append({"kind": kind, "dtype": str(dtype), "error": f"{type(exc).__name__}: {exc}"[:2000]})
            print(json.dumps(results["checks"][-1]), flush=True)
            torch.cuda.empty_cache()
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
