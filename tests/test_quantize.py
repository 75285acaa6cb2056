"""QLoRA storage (models/quantize.py) on GPT-oss's real module structure at tiny dimensions, on CPU.

bitsandbytes' NF4 quantize/dequantize run on CPU in this version, so the numerics are checked here;
the CUDA-only parts are the LanguageModel/train gate (tests/test_llm.py, below) and speed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, GptOssConfig

from medgpt_oss.config import CONF_DIR, load_option
from medgpt_oss.models.lora import LoraSettings
from medgpt_oss.models import quantize as Q
from medgpt_oss.plan import ASSETS

pytest.importorskip("bitsandbytes")


def tiny_gpt_oss(dtype=torch.float32):
    tiny = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "llm" / "gpt_oss.yaml").tiny)
    config = AutoConfig.for_model(tiny.pop("model_type"), **tiny)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(dtype)


def test_plan_names_the_experts_attention_and_embedding_on_the_gpt_oss_structure():
    model = tiny_gpt_oss()
    plan = Q.quantization_plan(model, Q.DEFAULT_TARGETS)
    layers = model.config.num_hidden_layers
    expected = {"model.embed_tokens.weight"}
    for i in range(layers):
        expected |= {f"model.layers.{i}.mlp.experts.{w}" for w in ("gate_up_proj", "down_proj")}
        expected |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
    assert set(plan.tensors) == expected
    params = dict(model.named_parameters())
    assert plan.quantized == sum(params[n].numel() for n in expected)
    assert plan.total == sum(p.numel() for p in model.parameters())
    # router, norms, sinks, biases and the output head stay as they are
    assert not any("router" in n or "norm" in n or "sinks" in n or "lm_head" in n for n in plan.tensors)
    experts = ("experts.gate_up_proj", "experts.down_proj")
    assert Q.quantization_plan(model, ["experts"]).by_target() == {
        "experts": sum(p.numel() for n, p in params.items() if n.endswith(experts))}


def test_quantize_model_stores_exactly_the_planned_tensors_in_4bit():
    model = tiny_gpt_oss()
    before = Q.quantization_plan(model, Q.DEFAULT_TARGETS)
    plan = Q.quantize_model(model, Q.DEFAULT_TARGETS)
    assert plan.tensors == before.tensors
    layer = model.model.layers[0]
    assert isinstance(layer.mlp.experts, Q.NF4Experts)
    assert type(layer.self_attn.q_proj).__name__ == "Linear4bit"
    assert isinstance(model.model.embed_tokens, Q.NF4Embedding)
    assert isinstance(model.lm_head, torch.nn.Linear) and type(model.lm_head).__name__ == "Linear"
    # the same plan read back from the quantized model; logical size unchanged
    after = Q.quantization_plan(model, Q.DEFAULT_TARGETS)
    assert after.tensors == before.tensors and after.total == before.total
    # what is left in full precision is exactly what the plan did not take
    remaining = sum(p.numel() for p in model.parameters() if p.dtype != torch.uint8)
    assert remaining == before.total - before.quantized
    assert not any(p.requires_grad for p in model.parameters())


def test_nf4_experts_compute_what_gpt_oss_experts_compute_with_the_dequantized_weights():
    model = tiny_gpt_oss()
    experts = model.model.layers[0].mlp.experts
    q = Q.NF4Experts(experts)
    ref = copy.deepcopy(experts)
    with torch.no_grad():
        ref.gate_up_proj.copy_(torch.stack([q.gate_up_proj.dequantize(i) for i in range(q.num_experts)]))
        ref.down_proj.copy_(torch.stack([q.down_proj.dequantize(i) for i in range(q.num_experts)]))
    err = (ref.gate_up_proj - experts.gate_up_proj).norm() / experts.gate_up_proj.norm()
    assert 0.02 < err < 0.15  # NF4 on normal weights: ~9% relative
    torch.manual_seed(1)
    h = torch.randn(12, experts.hidden_size, requires_grad=True)
    idx = torch.randint(0, q.num_experts, (12, 2))
    weights = torch.rand(12, 2)
    out, expected = q(h, idx, weights), ref(h, idx, weights)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    g_out, = torch.autograd.grad(out.square().sum(), h)
    g_ref, = torch.autograd.grad(expected.square().sum(), h)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-4)


def test_nf4_embedding_dequantizes_only_the_rows_it_looks_up():
    model = tiny_gpt_oss()
    emb = model.model.embed_tokens
    q = Q.NF4Embedding(emb)
    full = q(torch.arange(emb.num_embeddings))
    ids = torch.randint(0, emb.num_embeddings, (3, 9))
    assert torch.equal(q(ids), full[ids])
    assert (full - emb.weight).norm() / emb.weight.norm() < 0.15


def test_lora_attaches_to_the_quantized_attention_and_trains_only_adapters():
    from peft import LoraConfig, get_peft_model

    model = tiny_gpt_oss()
    Q.quantize_model(model, Q.DEFAULT_TARGETS)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                       "o_proj"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    layers = model.config.num_hidden_layers
    assert len(trainable) == layers * 4 * 2 and all("lora_" in n for n in trainable)
    # the plan of the adapted model ignores the adapters (they train) and still sees the 4-bit tensors
    assert Q.quantization_plan(peft_model, Q.DEFAULT_TARGETS).quantized == Q.quantization_plan(
        model, Q.DEFAULT_TARGETS).quantized
    ids = torch.randint(0, 1000, (2, 16))
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]  # lora_A's is 0 while B is 0
    assert len(grads) == layers * 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_expert_lora_on_4bit_experts_is_refused_and_allowed_on_bf16_experts():
    lora = LoraSettings(rank=16, quantize="nf4", target_modules=("q_proj",),
                        target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
    with pytest.raises(Q.QuantizationUnavailableError, match="peft's parameter-LoRA cannot wrap"):
        Q.check_lora_quantize(lora)
    assert Q.check_lora_quantize(replace(lora, quantize_modules=("linear", "embed"))) == ("linear", "embed")
    assert Q.check_lora_quantize(LoraSettings(rank=16, target_modules=("q_proj",))) == ()
    with pytest.raises(ValueError, match="unknown"):
        Q.check_lora_quantize(LoraSettings(rank=16, quantize="nf4", quantize_modules=("attention",)))


def test_the_cuda_check_runs_on_the_config_before_any_model(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"lora": load_option("lora", "qlora_r16")})
    with pytest.raises(Q.QuantizationUnavailableError, match="needs a CUDA GPU"):
        Q.check_quantization(cfg)
    Q.check_quantization(OmegaConf.create({"lora": load_option("lora", "r16")}))


def test_real_gpt_oss_20b_is_97_percent_4bit_under_qlora_r16():
    """GPT-oss-20B built from its published config on the meta device (no weights)."""
    arch = json.loads((ASSETS / "gpt-oss-20b.json").read_text())
    config = GptOssConfig(**{k: v for k, v in arch.items() if not k.startswith("_")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    targets = Q.quantize_targets(LoraSettings.of(load_option("lora", "qlora_r16")))
    plan = Q.quantization_plan(model, targets)
    assert abs(plan.total / 1e9 - arch["_published_total_params_billions"]) / 20.91 < 0.01
    assert plan.fraction >= 0.95
    experts_only = Q.quantization_plan(model, ["experts"]).fraction
    assert 0.90 < experts_only < 0.92  # what 'nn.Linear only' left in bf16: the experts are 91%
    linear_only = Q.quantization_plan(model, ["linear"]).fraction
    assert linear_only < 0.04  # the old QLoRA path's share


def _mxfp4_encode(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-oss's published expert format from a [E, in, out] weight: blocks [E, out, in/32, 16] + scales."""
    from transformers.integrations.mxfp4 import FP4_VALUES

    lut = torch.tensor(FP4_VALUES)
    w = weight.transpose(1, 2).float()  # [E, out, in]
    groups = w.reshape(*w.shape[:2], -1, 32)
    exp = torch.ceil(torch.log2(groups.abs().amax(-1).clamp(min=1e-30) / 6.0)).clamp(-127, 127)
    scaled = groups / torch.exp2(exp)[..., None]
    codes = (scaled[..., None] - lut).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exp + 127).to(torch.uint8)


@pytest.mark.parametrize("fmt", ["bf16", "mxfp4"])
def test_load_quantized_streams_a_checkpoint_into_4bit(tmp_path, fmt):
    """The full-scale path (meta skeleton + safetensors streamed into 4-bit) on a tiny checkpoint, on CPU."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    model = tiny_gpt_oss(torch.bfloat16)
    model.save_pretrained(tmp_path)
    if fmt == "mxfp4":  # rewrite the experts as the published checkpoint stores them
        (file,) = tmp_path.glob("*.safetensors")
        state = load_file(file)
        for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
            blocks, scales = _mxfp4_encode(state.pop(key))
            state[key + "_blocks"], state[key + "_scales"] = blocks, scales
            decoded = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
            with torch.no_grad():
                model.get_parameter(key).copy_(decoded)  # the reference holds what the checkpoint decodes to
        save_file(state, file, metadata={"format": "pt"})
    loaded, plan = Q.load_quantized(tmp_path, Q.DEFAULT_TARGETS, torch.bfloat16, "cpu", "eager")
    reference = copy.deepcopy(model)
    reference.model.rotary_emb = type(reference.model.rotary_emb)(config=reference.config)  # fp32, as loaded
    Q.quantize_model(reference, Q.DEFAULT_TARGETS, dtype=torch.bfloat16)
    assert plan.tensors == Q.quantization_plan(model, Q.DEFAULT_TARGETS).tensors
    assert not [n for n, t in list(loaded.named_parameters()) + list(loaded.named_buffers()) if t.is_meta]
    ids = torch.randint(0, 1000, (1, 12))
    torch.testing.assert_close(loaded(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
