import pytest
import torch
from transformers import GptOssForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from medgpt_oss.models.hub import MissingWeightsError
from medgpt_oss.models.llm import LanguageModel
from medgpt_oss.models.tokenizer import HARMONY_SPECIAL_TOKENS

TINY_GPT_OSS = dict(model_type="gpt_oss", hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=16, initializer_range=0.2)


def tiny_llm(**kw) -> LanguageModel:
    return LanguageModel(pretrained="openai/gpt-oss-20b", scale="tiny", tiny=TINY_GPT_OSS, **kw)


def test_tiny_gpt_oss_is_the_real_class_with_a_deterministic_init():
    a, b, c = tiny_llm(init_seed=3), tiny_llm(init_seed=3), tiny_llm(init_seed=4)
    assert isinstance(a.model, GptOssForCausalLM)
    assert a.model.get_input_embeddings().num_embeddings == len(a.tokenizer)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_full_scale_loads_a_save_pretrained_folder_through_the_real_path(tmp_path):
    tiny = tiny_llm()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = LanguageModel(pretrained=str(tmp_path), scale="full", dtype="float32")
    ids = torch.tensor([[5, 20, 30, 40]])
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
    assert loaded.tokenizer.chat_template == tiny.tokenizer.chat_template


def test_missing_full_weights_fail_fast_with_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        LanguageModel(pretrained="openai/gpt-oss-20b", scale="full")
    assert "openai/gpt-oss-20b" in str(err.value) and "llm.pretrained=" in str(err.value)


def test_any_causal_lm_gets_the_harmony_tokens(tmp_path):
    # A tokenizer that knows nothing of harmony: the LLM wrapper adds the control tokens and grows the embeddings.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["plain text only"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>").save_pretrained(tmp_path)
    llm = LanguageModel(pretrained="Qwen/Qwen2.5-7B-Instruct", scale="tiny", tokenizer=str(tmp_path),
                        tiny=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300))
    assert isinstance(llm.model, Qwen2ForCausalLM)
    vocab = llm.tokenizer.get_vocab()
    assert all(t in vocab for t in HARMONY_SPECIAL_TOKENS + ["<|image|>"])
    assert llm.model.get_input_embeddings().num_embeddings >= len(llm.tokenizer)
    assert llm.tokenizer("<|start|>user", add_special_tokens=False)["input_ids"][0] == vocab["<|start|>"]


def test_lora_trains_only_adapters():
    from medgpt_oss.models.vlm import MedVLM  # noqa: F401  (set_trainable semantics are tested in test_vlm)

    llm = tiny_llm(lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    names = [n for n, _ in llm.named_parameters()]
    assert any("lora_A" in n for n in names) and any("q_proj" in n and "lora_B" in n for n in names)
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert trainable and all(llm.is_adapter_param(n) for n in trainable)


def test_lora_reaches_gpt_oss_expert_weights():
    llm = tiny_llm(lora={"rank": 4, "target_modules": ["q_proj"],
                         "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]})
    with torch.no_grad():  # make the adapters non-trivial so the expert path visibly changes the output
        for name, p in llm.named_parameters():
            if "experts" in name and "lora_B" in name:
                p.normal_()
    ids = torch.tensor([[5, 20, 30, 40]])
    llm.model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in llm.named_parameters() if p.requires_grad and "experts" in n and "lora_A" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_qlora_without_cuda_says_why():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        tiny_llm(lora={"rank": 4, "target_modules": ["q_proj"], "quantize": "nf4"})
