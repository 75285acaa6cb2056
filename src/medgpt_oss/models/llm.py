"""The language model: any ``AutoModelForCausalLM`` (GPT-oss by default) + its tokenizer + LoRA.

:class:`LanguageModelBase` is what a MedVLM uses of it, however it was built: :class:`LanguageModel` from
the ``llm`` config group, :class:`ExportedLanguageModel` from an export's transformers config.

``scale=full`` loads weights from a local folder or the HF cache (never the
network); ``scale=tiny`` builds the same model class from a small config with a
deterministic random init and the shipped tiny harmony tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from medgpt_oss.models.attention import FLEX, packed_block_masks  # importing registers attn_implementation="flex"
from medgpt_oss.models.document_attention import EAGER_PACKED, SampleSpans  # registers "eager_packed"
from medgpt_oss.models.hub import check_scale, resolve_pretrained
from medgpt_oss.models.lora import LoraSettings
from medgpt_oss.models.loss import chunked_cross_entropy
from medgpt_oss.models.quantize import (
    NF4Embedding, QuantPlan, check_lora_quantize, load_quantized, quantize_model, require_cuda_bitsandbytes,
)
from medgpt_oss.models.recompute import apply_activation_checkpointing, compile_layers
from medgpt_oss.harmony import IMAGE_TOKEN, ChatSettings, add_format_tokens
from medgpt_oss.models.tokenizer import TINY_TOKENIZER_DIR


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


class LanguageModelBase(nn.Module):
    """A causal LM as a MedVLM uses it: token embeddings, the forward (packed-row masks, chunked loss), the
    embedding rows added for the image token, LoRA adapters.

    Subclasses build ``self.model`` (the transformers causal LM) and set ``self.tokenizer``.
    """

    def __init__(self, pretrained_id: str, image_token: str, chat: ChatSettings,
                 lora_config: dict[str, Any] | None = None, loss_chunk_size: int | None = None) -> None:
        super().__init__()
        self.pretrained_id = pretrained_id
        self.image_token = image_token
        # The harmony system message's settings (date, reasoning effort, identity): part of the model's
        # input format, so they travel with it into checkpoints, data, evaluation and exports.
        self.chat = chat
        self.lora_config = lora_config
        # Set: the training loss runs the output head in chunks of this many supervised tokens (models/loss.py)
        # and forward(labels=...) returns the loss without logits. None: the plain transformers loss.
        self.loss_chunk_size = loss_chunk_size
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.added_rows: int | None = None  # first row added to the embedding matrices; None: none added

    def _row_matrices(self) -> list[torch.Tensor]:
        """The input embedding and (when not tied to it) the output head: the matrices with a row per token."""
        matrices = [self.model.get_input_embeddings().weight]
        head = self.model.get_output_embeddings()
        if head is not None and head.weight is not matrices[0]:
            matrices.append(head.weight)
        return matrices

    def added_rows_state(self) -> dict[str, torch.Tensor]:
        """The rows this model added to its embedding matrices (empty when it used spare rows)."""
        if self.added_rows is None:
            return {}
        return {str(i): m[self.added_rows:].detach().clone() for i, m in enumerate(self._row_matrices())}

    def load_added_rows(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        matrices = self._row_matrices()
        if self.added_rows is None or set(state) != {str(i) for i in range(len(matrices))}:
            raise ValueError("the checkpoint holds added embedding rows this model does not have; build it with the "
                             "same llm and tokenizer as the run that wrote it")
        with torch.no_grad():
            for i, matrix in enumerate(matrices):
                rows = state[str(i)]
                if rows.shape != matrix[self.added_rows:].shape:
                    raise ValueError(f"added embedding rows {tuple(rows.shape)} do not fit this model's "
                                     f"{tuple(matrix[self.added_rows:].shape)}; same llm and tokenizer needed")
                matrix[self.added_rows:] = rows.to(matrix.dtype)

    def load_lora_adapter(self, path: str | Path) -> None:
        """Wrap the causal LM with a saved peft adapter (e.g. an export's unmerged ``lora_adapter/``)."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"'{path}' holds no LoRA adapter (adapter_config.json)")
        self.model = PeftModel.from_pretrained(self.model, str(path))
        self.lora_config = json.loads((path / "adapter_config.json").read_text())

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def is_adapter_param(self, name: str) -> bool:
        return "lora_" in name

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        return {type(m) for m in self.model.modules() if type(m).__name__ in names}

    def packed_attention_masks(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """Block-diagonal causal masks for packed rows, one per attention type of the model.

        Sample boundaries are where position ids do not advance by one. Built here because
        some models (GPT-oss in transformers 5) do not derive them from ``position_ids``.
        """
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        config = self.model.config
        if config._attn_implementation == FLEX:  # one BlockMask per attention type, document mask inside
            return packed_block_masks(config, position_ids)
        if config._attn_implementation == EAGER_PACKED:  # each sample's own span: no cross-sample scores
            windows = {"full_attention": None, "sliding_attention": getattr(config, "sliding_window", None)}
            return {kind: SampleSpans.from_positions(position_ids, windows[kind])
                    for kind in set(getattr(config, "layer_types", None) or ["full_attention"])}
        builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        # Given position_ids and no 2D mask, the builders find the samples themselves and index them by
        # token. (An extra and_mask_function would be indexed by the remapped *positions* and cut later
        # samples off from their own first tokens whenever an earlier sample in the row is shorter.)
        return {
            kind: builders[kind](config, inputs_embeds, None, None, position_ids=position_ids,
                                 allow_is_causal_skip=False)
            for kind in layer_types
        }

    def forward(self, **kwargs: Any):
        if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = self.packed_attention_masks(kwargs["inputs_embeds"], kwargs["position_ids"])
        if self.loss_chunk_size and kwargs.get("labels") is not None:
            return self._chunked_loss_forward(**kwargs)
        return self.model(**kwargs)

    def _chunked_loss_forward(self, labels: torch.Tensor, **kwargs: Any) -> CausalLMOutputWithPast:
        if getattr(self.model.config, "output_router_logits", False):
            raise ValueError("llm.loss_chunk_size does not add the router auxiliary loss; set it to null "
                             "when training with output_router_logits=true")
        hidden = self.model.get_decoder()(**kwargs).last_hidden_state
        head = self.model.get_output_embeddings()
        return CausalLMOutputWithPast(loss=chunked_cross_entropy(hidden, head, labels, self.loss_chunk_size))


class LanguageModel(LanguageModelBase):
    """Causal LM + tokenizer built from the ``llm`` config group, with the image sentinel token registered and
    optional LoRA."""

    def __init__(
        self,
        pretrained: str,
        scale: str = "full",
        tiny: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        image_token: str = IMAGE_TOKEN,
        dtype: str | None = None,
        attn_implementation: str | None = "eager",
        init_seed: int = 0,
        lora: LoraSettings | Mapping[str, Any] | None = None,
        loss_chunk_size: int | None = None,
        chat: ChatSettings | dict[str, Any] | None = None,
        activation_checkpointing: str | None = None,
        compile: str | None = None,
    ) -> None:
        lora = LoraSettings.of(lora)  # conf/lora/ (models/lora.py)
        super().__init__(
            pretrained_id=pretrained, image_token=image_token,
            chat=ChatSettings.of(OmegaConf.to_container(chat) if isinstance(chat, DictConfig) else chat),
            lora_config=lora.as_dict() if lora else None, loss_chunk_size=loss_chunk_size,
        )
        self.init_seed = int(init_seed)
        # QLoRA (lora.quantize): the combination and the machine are checked before anything is loaded.
        quant_targets = check_lora_quantize(lora)
        if quant_targets:
            require_cuda_bitsandbytes()
        self.quantization: QuantPlan | None = None  # what is stored in 4-bit (models/quantize.py)
        if check_scale(scale) == "full":
            path = resolve_pretrained(pretrained, "llm.pretrained")
            tok_path = resolve_pretrained(tokenizer, "llm.tokenizer") if tokenizer else path
            self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tok_path)
            if quant_targets:  # meta skeleton, checkpoint streamed into 4-bit on the GPU: never whole in bf16
                self.model, self.quantization = load_quantized(
                    path, quant_targets, _dtype(dtype) or torch.bfloat16,
                    torch.device("cuda", torch.cuda.current_device()), attn_implementation)
            else:
                self.model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=_dtype(dtype), attn_implementation=attn_implementation
                )
        else:
            # Plain nested dicts: transformers' config fields (e.g. rope_parameters) reject DictConfig.
            tiny = OmegaConf.to_container(tiny, resolve=True) if isinstance(tiny, DictConfig) else dict(tiny or {})
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or TINY_TOKENIZER_DIR)
            model_type = tiny.pop("model_type")
            tiny.setdefault("vocab_size", len(self.tokenizer))
            config = AutoConfig.for_model(model_type, **tiny)
            config._attn_implementation = attn_implementation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)  # same config -> bit-identical weights, so reloads match
                self.model = AutoModelForCausalLM.from_config(config)
        self._register_special_tokens(image_token)
        if quant_targets and self.quantization is None:  # scale=tiny: built above, quantized on the GPU in place
            self.model.to(torch.cuda.current_device())
            self.quantization = quantize_model(self.model, quant_targets, dtype=_dtype(dtype))
        if lora:
            self._apply_lora(lora)
        # Speed/memory switches on the decoder layers (models/recompute.py); weight names do not change.
        self.checkpointed = apply_activation_checkpointing(self.model, activation_checkpointing)
        compile_layers(self.model, compile)

    def _register_special_tokens(self, image_token: str) -> None:
        """Give the tokenizer the image token (and, if it lacks them, harmony's control tokens).

        GPT-oss has 201,088 embedding rows for 200,019 tokens: the new token takes a spare row and
        nothing is resized. Only a tokenizer without spare rows grows the embeddings (see
        :meth:`_grow_embeddings`); ``added_rows`` then holds the first new row.
        """
        add_format_tokens(self.tokenizer, image_token)
        rows = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows and isinstance(self.model.get_input_embeddings(), NF4Embedding):
            raise ValueError(f"the tokenizer needs {len(self.tokenizer) - rows} new embedding rows, which a 4-bit "
                             "embedding cannot grow; drop 'embed' from lora.quantize_modules")
        if len(self.tokenizer) > rows:
            self._grow_embeddings(rows, len(self.tokenizer))

    def _grow_embeddings(self, old: int, new: int) -> None:
        """Resize to ``new`` rows; rows ``old..new-1`` drawn from the old rows' per-dimension mean and std
        with a generator seeded by ``init_seed``: the same rows on every build, whatever the global RNG,
        and the checkpoints save them too (:meth:`added_rows_state`)."""
        self.model.resize_token_embeddings(new, mean_resizing=False)
        generator = torch.Generator().manual_seed(self.init_seed)
        with torch.no_grad():
            for matrix in self._row_matrices():
                base = matrix[:old].float()
                noise = torch.randn(new - old, matrix.shape[1], generator=generator)
                matrix[old:] = (base.mean(0) + noise * base.std(0)).to(matrix.dtype)
        self.added_rows = old

    def _apply_lora(self, lora: LoraSettings) -> None:
        from peft import get_peft_model

        self.model = get_peft_model(self.model, lora.peft_config())


class ExportedLanguageModel(LanguageModelBase):
    """The LLM rebuilt from an export's transformers config (or around an already-loaded causal LM): same
    module tree and weight names as :class:`LanguageModel`, but no tokenizer (the caller may set one) and
    no pretrained weights. Its loss is the plain transformers one, and its embedding matrices hold every row."""

    def __init__(self, text_config: PreTrainedConfig, image_token: str, image_token_id: int,
                 model: nn.Module | None = None, chat: dict[str, Any] | None = None) -> None:
        super().__init__(pretrained_id=getattr(text_config, "_name_or_path", "") or "exported",
                         image_token=image_token, chat=ChatSettings.of(chat))
        self._image_token_id = int(image_token_id)
        self.model = model if model is not None else AutoModelForCausalLM.from_config(text_config)

    @property
    def image_token_id(self) -> int:
        return self._image_token_id
