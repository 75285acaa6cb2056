"""python -m medgpt_oss.plan: the real-size model on the meta device, no weights, no GPU, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from medgpt_oss.config import CONF_DIR
from medgpt_oss.plan import llm_activation_bytes_per_token, verdicts

GPT_OSS_20B = 20.91e9  # published total (gpt-oss model card)


def plan(*overrides: str) -> tuple[dict, str, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "medgpt_oss.plan", *overrides], capture_output=True, text=True,
                          timeout=300, check=False)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, took


def test_qlora_plan_of_gpt_oss_20b_without_weights():
    summary, out, took = plan("+stage=instruct", "lora=qlora_r16", "data.max_length=4096", "data.pack_length=4096",
                              "llm.attn_implementation=flex", "llm.activation_checkpointing=layers", "trainer=gpu",
                              "encoder=clip")  # openai/gpt-oss-20b + CLIP-L/336; no weights on this machine
    assert took < 120  # seconds on a shared CPU; nothing is loaded
    assert summary["quantized_fraction"] >= 0.95
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["quantized_params"] <= summary["llm_total_params"]
    # LoRA adds 8M adapters to GPT-oss-20B's 20.91B: within 1% of the published total
    assert abs(summary["llm_total_params"] - GPT_OSS_20B) / GPT_OSS_20B < 0.01
    assert summary["estimated_gib_per_rank"] < 23.6  # the 24 GB goal
    assert "experts 19.110B" in out and "encoder" in out and "projector" in out


@pytest.mark.parametrize("length", [32768, 65536])
def test_lora_long_context_plan_has_nothing_quantized(length):
    summary, out, _ = plan("+stage=longctx", "lora=r16", f"data.max_length={length}", f"data.pack_length={length}",
                           "llm.attn_implementation=flex", "llm.activation_checkpointing=layers", "trainer=gpu")
    assert summary["quantized_fraction"] == 0.0 and summary["quantized_params"] == 0
    assert 0 < summary["trainable_params"] < summary["llm_total_params"]
    assert abs(summary["llm_total_params"] - GPT_OSS_20B) / GPT_OSS_20B < 0.01
    assert f"{length} tokens" in out


def test_plan_refuses_expert_lora_on_4bit_experts():
    proc = subprocess.run([sys.executable, "-m", "medgpt_oss.plan", "+stage=instruct", "lora=qlora_r16",
                           "lora.target_parameters=[mlp.experts.gate_up_proj]", "lora.dropout=0"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "cannot wrap" in proc.stderr


def test_verdicts():
    cards = {"24GB": 23.6, "80GB": 79.1}
    assert verdicts(20.0, cards) == {"24GB": "fits", "80GB": "fits"}
    assert verdicts(23.0, cards) == {"24GB": "tight", "80GB": "fits"}
    assert verdicts(30.0, cards) == {"24GB": "does not fit", "80GB": "fits"}


def test_activation_formula_against_what_autograd_saves_on_a_gpt_oss_layer():
    """Bytes saved for backward per token, one tiny GPT-oss layer (bf16, eager, LoRA on q/k/v/o): the
    formula of docs/memory.md within a factor 1.5 either way (it is an estimate, checked at tiny dims)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "llm" / "gpt_oss.yaml").tiny)
    config = AutoConfig.for_model(tiny.pop("model_type"), **tiny)
    for length in (64, 256):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 lora_dropout=0.05))
        decoder = model.base_model.model.model
        x = torch.randn(1, length, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(length)[None]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None].to(torch.bfloat16)
        saved: dict[int, int] = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = decoder.layers[0](x, attention_mask=mask, position_embeddings=decoder.rotary_emb(x, pos),
                                    position_ids=pos)
        measured = sum(saved.values()) / length
        est = llm_activation_bytes_per_token(dict(tiny, vocab_size=1088), 2, 4, length, True)
        assert measured / 1.5 < est["attention"] + est["mlp"] < measured * 1.5, (length, measured, est)
        del out
