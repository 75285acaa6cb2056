import pytest
import torch
from transformers import GptOssForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from medgpt_oss.models.hub import MissingWeightsError
from medgpt_oss.models.llm import LanguageModel
from medgpt_oss.harmony import CONTROL_TOKENS, SPECIAL_TOKENS
from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR

# vocab_size above the tokenizer's 1,021 tokens: spare rows, as GPT-oss has 201,088 rows for 200,019 tokens.
TINY_GPT_OSS = dict(model_type="gpt_oss", hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=16, initializer_range=0.2, vocab_size=1088)


def tiny_llm(**kw) -> LanguageModel:
    return LanguageModel(pretrained="openai/gpt-oss-20b", scale="tiny", tiny=TINY_GPT_OSS, **kw)


def test_tiny_gpt_oss_is_the_real_class_with_a_deterministic_init():
    a, b, c = tiny_llm(init_seed=3), tiny_llm(init_seed=3), tiny_llm(init_seed=4)
    assert isinstance(a.model, GptOssForCausalLM)
    assert a.model.get_input_embeddings().num_embeddings == 1088
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_tokenizer_is_shaped_like_o200k_harmony():
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    # Harmony's special tokens (reserved ones included) are the last ids, in o200k_harmony's order: the
    # real ones sit at 199,998..200,018, i.e. offsets 0..20 from the first of them.
    first = base.convert_tokens_to_ids(SPECIAL_TOKENS[0])
    assert [base.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(first, first + 21)) == \
        list(range(len(base) - 21, len(base)))
    assert (base.eos_token, base.pad_token, base.bos_token) == ("<|return|>", "<|endoftext|>", "<|startoftext|>")
    assert "<|image|>" not in base.get_vocab()  # added by the model, as to the real tokenizer


def test_image_token_takes_a_spare_row_and_nothing_is_resized():
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = tiny_llm(init_seed=3)
    assert llm.image_token_id == 1021 and llm.added_rows is None  # the first spare row
    assert llm.model.get_input_embeddings().num_embeddings == llm.model.get_output_embeddings().out_features == 1088
    # The embeddings are exactly those of the plain transformers model from the same seed: untouched.
    config = AutoConfig.for_model(**TINY_GPT_OSS)
    torch.manual_seed(3)
    plain = AutoModelForCausalLM.from_config(config)
    assert torch.equal(plain.get_input_embeddings().weight, llm.model.get_input_embeddings().weight)


def test_without_spare_rows_the_new_rows_are_seeded_not_drawn_from_the_global_rng():
    no_spare = {**TINY_GPT_OSS, "vocab_size": 1021}
    torch.manual_seed(0)
    a = LanguageModel(pretrained="x", scale="tiny", tiny=no_spare, init_seed=5)
    torch.manual_seed(123)
    b = LanguageModel(pretrained="x", scale="tiny", tiny=no_spare, init_seed=5)
    assert a.added_rows == 1021 and a.model.get_input_embeddings().num_embeddings == 1022
    rows_a, rows_b = a.added_rows_state(), b.added_rows_state()
    assert set(rows_a) == {"0", "1"}  # GPT-oss's head is not tied: both matrices grew
    assert all(torch.equal(rows_a[k], rows_b[k]) for k in rows_a)
    assert rows_a["0"].abs().sum() > 0 and not torch.equal(rows_a["0"], rows_a["1"])
    # load_added_rows puts saved rows back (what a checkpoint does)
    b.load_added_rows({k: torch.full_like(v, 0.5) for k, v in rows_b.items()})
    assert (b.model.get_input_embeddings().weight[1021] == 0.5).all()


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
    assert all(t in vocab for t in CONTROL_TOKENS + ("<|image|>",))
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
