"""QLoRA storage for GPT-oss: 4-bit NF4 for the linear layers *and* the 3-D expert weights.

GPT-oss keeps 91% of its parameters in ``mlp.experts.gate_up_proj`` [E, H, 2I] and ``down_proj`` [E, I, H]
(transformers' ``GptOssExperts``), which are ``nn.Parameter`` s, not ``nn.Linear`` layers: bitsandbytes'
usual ``load_in_4bit`` path leaves them in bf16. Here every target is stored in NF4 (bitsandbytes'
``quantize_4bit``, block size 64, double-quantized absmax, as QLoRA):

* ``experts`` -- :class:`NF4Experts` replaces each ``GptOssExperts``: one NF4 slice per expert, dequantized
  in forward *only for the experts the batch routes to*, one at a time, and again in backward (nothing
  dequantized is kept for backward; :class:`_DequantizedMatmul`). Frozen: there is no LoRA on them
  (peft's ``target_parameters`` wraps an ``nn.Parameter``, and these are packed 4-bit buffers);
  :func:`check_lora_quantize` refuses that combination with a message.
* ``linear`` -- the decoder layers' ``nn.Linear`` (GPT-oss: q/k/v/o) become ``bitsandbytes.nn.Linear4bit``,
  which peft's LoRA wraps (QLoRA proper).
* ``embed`` -- the input embedding becomes :class:`NF4Embedding` (only looked-up rows are dequantized).
* ``lm_head`` -- the output head as ``Linear4bit`` (off by default: the logits keep bf16 weights).

:func:`quantization_plan` names the tensors a target list quantizes (on any model, meta device included);
:func:`quantize_model` swaps exactly those, in place; :func:`load_quantized` builds a full-scale model
on the meta device and streams the checkpoint (bf16 or GPT-oss's published MXFP4 experts) tensor by
tensor into 4-bit storage on the GPU, so the bf16 model never exists whole. ``docs/memory.md`` explains
the choice and the numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medgpt_oss.models.lora import LoraSettings

QUANT_KINDS = ("nf4",)
TARGETS = ("experts", "linear", "embed", "lm_head")
DEFAULT_TARGETS = ("experts", "linear", "embed")
BLOCKSIZE = 64          # NF4 block (QLoRA's); every GPT-oss weight row is a multiple of it
NESTED_BLOCKSIZE = 256  # bitsandbytes' block for the double-quantized absmax
# Storage bytes per element: 4-bit codes + uint8 absmax per 64 + fp32 second-level absmax per 64*256.
NF4_BYTES_DOUBLE_QUANT = 0.5 + 1 / BLOCKSIZE + 4 / (BLOCKSIZE * NESTED_BLOCKSIZE)
NF4_BYTES_FP32_ABSMAX = 0.5 + 4 / BLOCKSIZE  # NF4Embedding: fp32 absmax per block (rows gathered directly)


class QuantizationUnavailableError(RuntimeError):
    """QLoRA was asked for where it cannot run (no CUDA GPU, no bitsandbytes) or in a combination it refuses."""


# -- config checks (run before any model is built) -----------------------------------------------------

def quantize_targets(lora: LoraSettings | None) -> tuple[str, ...]:
    """The targets the ``lora`` settings quantize: ``()`` without ``lora.quantize``."""
    if lora is None or not lora.quantize:
        return ()
    if lora.quantize not in QUANT_KINDS:
        raise ValueError(f"lora.quantize must be one of {list(QUANT_KINDS)} or null, got {lora.quantize!r}")
    targets = tuple(lora.quantize_modules or DEFAULT_TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"lora.quantize_modules: unknown {unknown}; choose from {list(TARGETS)}")
    return targets


def check_lora_quantize(lora: LoraSettings | None) -> tuple[str, ...]:
    """Refuse LoRA on quantized experts; return the quantize targets."""
    targets = quantize_targets(lora)
    expert_lora = [p for p in (lora.target_parameters if lora else ()) if "experts" in p]
    if "experts" in targets and expert_lora:
        raise QuantizationUnavailableError(
            f"lora.target_parameters={expert_lora} puts LoRA on the expert weights, but lora.quantize stores "
            "them as packed NF4 buffers, which peft's parameter-LoRA cannot wrap. Either train expert LoRA on "
            "bf16 experts (lora=r16_experts, no quantization; ~42 GB of weights), or keep the experts in bf16 "
            "under QLoRA with lora.quantize_modules=[linear,embed] (then less than 10% of GPT-oss is 4-bit), "
            "or drop lora.target_parameters."
        )
    return targets


def check_quantization(cfg: Any) -> None:
    """``train.py`` calls this before any model work: QLoRA needs a CUDA GPU and bitsandbytes."""
    if not check_lora_quantize(LoraSettings.of(cfg.get("lora"))):
        return
    require_cuda_bitsandbytes()


def require_cuda_bitsandbytes() -> None:
    if not torch.cuda.is_available():
        raise QuantizationUnavailableError(
            "QLoRA (lora.quantize=nf4) needs a CUDA GPU: bitsandbytes runs its 4-bit NF4 kernels on CUDA. "
            "On this machine use lora=r16 (LoRA on unquantized weights) instead."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationUnavailableError("QLoRA needs bitsandbytes: pip install 'medgpt-oss[qlora]'") from exc


# -- which tensors a target list quantizes ---------------------------------------------------------------

def _is_experts(module: nn.Module) -> bool:
    """GPT-oss-style experts: 3-D ``gate_up_proj`` / ``down_proj`` parameters (or already quantized)."""
    if isinstance(module, NF4Experts):
        return True
    weights = [getattr(module, name, None) for name in ("gate_up_proj", "down_proj")]
    return all(isinstance(w, nn.Parameter) and w.dim() == 3 for w in weights)


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _tied(model: nn.Module) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and getattr(head, "weight", None) is getattr(embed, "weight", object())


@dataclass
class QuantPlan:
    """What a target list stores in 4-bit: ``tensors`` maps qualified weight name -> element count."""

    targets: tuple[str, ...]
    tensors: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # weight name -> target that took it
    total: int = 0  # elements of the whole model (quantized or not)

    @property
    def quantized(self) -> int:
        return sum(self.tensors.values())

    @property
    def fraction(self) -> float:
        return self.quantized / self.total if self.total else 0.0

    def by_target(self) -> dict[str, int]:
        out = {t: 0 for t in self.targets}
        for name, n in self.tensors.items():
            out[self.kinds[name]] += n
        return out

    def storage_bytes(self) -> float:
        """Bytes of the 4-bit storage (codes + absmax), as laid out by :func:`quantize_model`."""
        per = {"embed": NF4_BYTES_FP32_ABSMAX}
        return sum(n * per.get(self.kinds[name], NF4_BYTES_DOUBLE_QUANT) for name, n in self.tensors.items())


def logical_numel(model: nn.Module) -> int:
    """Elements of the model's weights as the architecture defines them (4-bit storage counted unpacked)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            shape = getattr(getattr(p, "quant_state", None), "shape", None)
            total += int(torch.Size(shape).numel()) if shape is not None else p.numel()
        if isinstance(module, (NF4Experts, NF4Embedding)):
            total += module.quantized_numel()
    return total


def _selected(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, str, nn.Module]]:
    """(qualified module name, target, module) for every module a target list quantizes."""
    base = _base(model)
    names = {id(m): n for n, m in base.named_modules()}
    chosen: list[tuple[str, str, nn.Module]] = []
    tied = _tied(base)
    if tied and ({"embed", "lm_head"} & set(targets)):
        raise ValueError(f"{type(base).__name__} ties its input embedding to its output head; "
                         "drop 'embed' and 'lm_head' from lora.quantize_modules")
    layers = getattr(base.get_decoder(), "layers", None) or []
    for layer in layers:
        for sub in layer.modules():
            if ".lora_" in names[id(sub)]:  # peft's adapters (lora_A/lora_B are nn.Linear too) train: not quantized
                continue
            if "experts" in targets and _is_experts(sub):
                chosen.append((names[id(sub)], "experts", sub))
            elif "linear" in targets and isinstance(sub, nn.Linear):
                chosen.append((names[id(sub)], "linear", sub))
    if "embed" in targets:
        embed = base.get_input_embeddings()
        chosen.append((names[id(embed)], "embed", embed))
    if "lm_head" in targets and base.get_output_embeddings() is not None:
        head = base.get_output_embeddings()
        chosen.append((names[id(head)], "lm_head", head))
    return chosen


def quantization_plan(model: nn.Module, targets: Sequence[str]) -> QuantPlan:
    """The tensors ``targets`` would store (or stores) in NF4, on any model (meta device included)."""
    plan = QuantPlan(tuple(targets), total=logical_numel(model))
    for name, kind, module in _selected(model, targets):
        if kind == "experts":
            weights = {"gate_up_proj": module.gate_up_proj, "down_proj": module.down_proj}
            for wname, w in weights.items():
                plan.tensors[f"{name}.{wname}"] = w.quantized_numel() if isinstance(w, NF4Stack) else w.numel()
                plan.kinds[f"{name}.{wname}"] = kind
        else:
            n = module.quantized_numel() if isinstance(module, NF4Embedding) else _linear_numel(module)
            plan.tensors[f"{name}.weight"] = n
            plan.kinds[f"{name}.weight"] = kind
    return plan


def _linear_numel(module: nn.Module) -> int:
    shape = getattr(getattr(module.weight, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else module.weight.numel()


# -- 4-bit storage -----------------------------------------------------------------------------------

class NF4Stack(nn.Module):
    """A frozen [E, *shape] weight stored as E NF4 slices (double-quantized absmax), dequantized one at a time.

    Buffers (not parameters: nothing here trains, optimizers and FSDP's flattening leave them alone; not
    persistent: checkpoints hold only trained weights, and the base weights come from the checkpoint folder).
    """

    def __init__(self, count: int, shape: Sequence[int], dtype: torch.dtype, device: Any = None) -> None:
        super().__init__()
        self.count, self.shape, self.dtype = int(count), tuple(int(s) for s in shape), dtype
        n = torch.Size(self.shape).numel()
        if n % BLOCKSIZE:
            raise ValueError(f"NF4 slices need a multiple of {BLOCKSIZE} elements, got {self.shape}")
        blocks = n // BLOCKSIZE
        nested = -(-blocks // NESTED_BLOCKSIZE)
        self.register_buffer("packed", torch.empty(count, n // 2, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("absmax", torch.empty(count, blocks, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("absmax2", torch.empty(count, nested, dtype=torch.float32, device=device),
                             persistent=False)
        self.register_buffer("offset", torch.empty(count, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("code", torch.empty(16, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("code2", torch.empty(256, dtype=torch.float32, device=device), persistent=False)

    def quantized_numel(self) -> int:
        return self.count * torch.Size(self.shape).numel()

    @classmethod
    def from_tensor(cls, weight: torch.Tensor, dtype: torch.dtype | None = None) -> NF4Stack:
        """Quantize a [E, *shape] tensor slice by slice on its own device (CUDA at full scale)."""
        stack = cls(weight.shape[0], weight.shape[1:], dtype or weight.dtype, device=weight.device)
        stack.fill_(weight)
        return stack

    @torch.no_grad()
    def fill_(self, weight: torch.Tensor, start: int = 0) -> None:
        """Quantize ``weight`` [e, *shape] into slices ``start .. start+e-1``."""
        import bitsandbytes.functional as bnbf

        for i, w in enumerate(weight):
            packed, state = bnbf.quantize_4bit(w.contiguous(), blocksize=BLOCKSIZE, compress_statistics=True,
                                               quant_type="nf4")
            self.packed[start + i] = packed.reshape(-1)
            self.absmax[start + i] = state.absmax
            self.absmax2[start + i] = state.state2.absmax
            self.offset[start + i] = state.offset
            if start + i == 0:
                self.code.copy_(state.code)
                self.code2.copy_(state.state2.code)

    def dequantize(self, index: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        state2 = bnbf.QuantState(absmax=self.absmax2[index], code=self.code2, blocksize=NESTED_BLOCKSIZE,
                                 dtype=torch.float32)
        state = bnbf.QuantState(absmax=self.absmax[index], shape=torch.Size(self.shape), code=self.code,
                                blocksize=BLOCKSIZE, quant_type="nf4", dtype=self.dtype,
                                offset=self.offset[index], state2=state2)
        w = bnbf.dequantize_4bit(self.packed[index].unsqueeze(-1), state)
        return w if dtype is None else w.to(dtype)


class _DequantizedMatmul(torch.autograd.Function):
    """``x @ W[index]`` with W frozen NF4: dequantized in forward and again in backward, never saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stack: NF4Stack, index: int) -> torch.Tensor:
        ctx.stack, ctx.index = stack, index
        return x @ stack.dequantize(index, x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return grad @ ctx.stack.dequantize(ctx.index, grad.dtype).t(), None, None


class NF4Experts(nn.Module):
    """``GptOssExperts`` with NF4 expert weights: same routing, gate and bias arithmetic, frozen weights.

    Biases stay in the model's dtype (as parameters, frozen: 0.03% of GPT-oss).
    """

    def __init__(self, experts: nn.Module, dtype: torch.dtype | None = None, empty: bool = False) -> None:
        super().__init__()
        self.num_experts = experts.gate_up_proj.shape[0]
        self.hidden_size = experts.gate_up_proj.shape[1]
        self.intermediate_size = experts.down_proj.shape[1]
        self.alpha, self.limit = experts.alpha, experts.limit
        dtype = dtype or experts.gate_up_proj.dtype
        device = experts.gate_up_proj.device
        if empty:  # placeholder for load_quantized (filled tensor by tensor)
            self.gate_up_proj = NF4Stack(self.num_experts, experts.gate_up_proj.shape[1:], dtype, device)
            self.down_proj = NF4Stack(self.num_experts, experts.down_proj.shape[1:], dtype, device)
        else:
            self.gate_up_proj = NF4Stack.from_tensor(experts.gate_up_proj.detach(), dtype)
            self.down_proj = NF4Stack.from_tensor(experts.down_proj.detach(), dtype)
        self.gate_up_proj_bias = nn.Parameter(experts.gate_up_proj_bias.detach(), requires_grad=False)
        self.down_proj_bias = nn.Parameter(experts.down_proj_bias.detach(), requires_grad=False)

    def quantized_numel(self) -> int:
        return self.gate_up_proj.quantized_numel() + self.down_proj.quantized_numel()

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:  # GptOssExperts._apply_gate
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        return (up + 1) * glu

    def forward(self, hidden_states: torch.Tensor, router_indices: torch.Tensor,
                routing_weights: torch.Tensor) -> torch.Tensor:
        next_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = nn.functional.one_hot(router_indices, num_classes=self.num_experts).permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit.flatten().tolist():  # only the experts this batch routes to
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate_up = _DequantizedMatmul.apply(current_state, self.gate_up_proj, expert_idx)
            gated_output = self._apply_gate(gate_up + self.gate_up_proj_bias[expert_idx])
            out = _DequantizedMatmul.apply(gated_output, self.down_proj, expert_idx) + self.down_proj_bias[expert_idx]
            weighted_output = out * routing_weights[token_idx, top_k_pos, None]
            next_states.index_add_(0, token_idx, weighted_output.to(hidden_states.dtype))
        return next_states


class NF4Embedding(nn.Module):
    """Frozen NF4 embedding: one ``quantize_4bit`` over the matrix (fp32 absmax per 64 values, so each row's
    blocks are its own), and a lookup dequantizes only the rows it gathers."""

    def __init__(self, embedding: nn.Embedding, dtype: torch.dtype | None = None, empty: bool = False) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.weight.shape
        self.padding_idx = getattr(embedding, "padding_idx", None)
        self.scale = getattr(embedding, "embed_scale", None)  # some models scale in the embedding module
        if self.embedding_dim % BLOCKSIZE:
            raise ValueError(f"NF4Embedding needs a hidden size divisible by {BLOCKSIZE}, got {self.embedding_dim}")
        self.dtype = dtype or embedding.weight.dtype
        device = embedding.weight.device
        rows, dim = self.num_embeddings, self.embedding_dim
        self.register_buffer("packed", torch.empty(rows, dim // 2, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("absmax", torch.empty(rows, dim // BLOCKSIZE, dtype=torch.float32, device=device),
                             persistent=False)
        self.register_buffer("code", torch.empty(16, dtype=torch.float32, device=device), persistent=False)
        if not empty:
            self.fill_(embedding.weight.detach())

    def quantized_numel(self) -> int:
        return self.num_embeddings * self.embedding_dim

    @torch.no_grad()
    def fill_(self, weight: torch.Tensor) -> None:
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(weight.contiguous(), blocksize=BLOCKSIZE, compress_statistics=False,
                                           quant_type="nf4")
        self.packed.copy_(packed.reshape(self.packed.shape))
        self.absmax.copy_(state.absmax.reshape(self.absmax.shape))
        self.code.copy_(state.code)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        flat = input_ids.reshape(-1)
        state = bnbf.QuantState(absmax=self.absmax[flat].reshape(-1),
                                shape=torch.Size((flat.numel(), self.embedding_dim)), code=self.code,
                                blocksize=BLOCKSIZE, quant_type="nf4", dtype=self.dtype)
        rows = bnbf.dequantize_4bit(self.packed[flat].reshape(-1, 1), state)
        out = rows.reshape(*input_ids.shape, self.embedding_dim)
        return out * self.scale.to(out.dtype) if isinstance(self.scale, torch.Tensor) else out


def _linear4bit(linear: nn.Linear, dtype: torch.dtype, weight: torch.Tensor | None = None,
                device: Any = None) -> nn.Module:
    """``bitsandbytes.nn.Linear4bit`` (NF4, double quant) holding ``weight`` (default: the layer's own),
    quantized when moved to ``device``; a meta placeholder when ``weight`` is on meta."""
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=dtype, quant_type="nf4", compress_statistics=True, device="meta")
    w = linear.weight.detach() if weight is None else weight
    q.weight = bnb.nn.Params4bit(w.to(dtype), requires_grad=False, quant_type="nf4", compress_statistics=True,
                                 blocksize=BLOCKSIZE, module=q)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    if w.device.type != "meta":
        device = device or w.device
        q.weight = q.weight.to(device)  # Params4bit quantizes on its first move to a real device
        if q.bias is not None and not q.bias.is_meta:
            q.bias = nn.Parameter(q.bias.to(device), requires_grad=False)
    return q


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quantize_model(model: nn.Module, targets: Sequence[str], dtype: torch.dtype | None = None,
                   empty: bool = False) -> QuantPlan:
    """Swap what ``targets`` names for NF4 modules, in place, on the weights' own device; returns the plan.

    ``empty``: placeholders (meta) for :func:`load_quantized` to fill. All weights end frozen.
    """
    plan = quantization_plan(model, targets)
    base = _base(model)
    for name, kind, module in _selected(model, targets):
        mdtype = dtype or next(module.parameters()).dtype
        if kind == "experts":
            new = NF4Experts(module, mdtype, empty=empty)
        elif kind == "embed":
            new = NF4Embedding(module, mdtype, empty=empty)
        else:
            new = _linear4bit(module, mdtype)
        _set_module(base, name, new)
    for p in model.parameters():
        p.requires_grad_(False)
    return plan


# -- full-scale loading: meta skeleton, checkpoint streamed into 4-bit storage ---------------------------

_MXFP4 = re.compile(r"^(.*\.experts\.(?:gate_up_proj|down_proj))_(blocks|scales)$")


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"'{folder}' holds no *.safetensors files (QLoRA loads safetensors only)")
    return files


def load_quantized(folder: str | Path, targets: Sequence[str], dtype: torch.dtype, device: Any,
                   attn_implementation: str | None = None) -> tuple[nn.Module, QuantPlan]:
    """Build the checkpoint's model on the meta device, swap in 4-bit placeholders, and stream every
    tensor of its safetensors files onto ``device``: 4-bit targets are quantized there one tensor at
    a time (MXFP4 experts are decoded to ``dtype`` one layer at a time first), the rest is copied in
    ``dtype``. Peak extra memory is one layer's experts in ``dtype``, not the bf16 model."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the published MXFP4 experts are decoded here, not by transformers
    if attn_implementation:
        config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plan = quantize_model(model, targets, dtype=dtype, empty=True)
    modules = dict(model.named_modules())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    done: set[str] = set()

    def put(name: str, tensor: torch.Tensor) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None:
            raise KeyError(f"checkpoint tensor '{name}' has no module '{owner_name}' in {type(model).__name__}")
        if isinstance(owner, NF4Experts) and leaf in ("gate_up_proj", "down_proj"):
            getattr(owner, leaf).to_empty(device=device).fill_(tensor.to(dtype))
        elif isinstance(owner, NF4Embedding) and leaf == "weight":
            owner.to_empty(device=device).fill_(tensor.to(dtype))
        elif leaf == "weight" and type(owner).__name__ == "Linear4bit":
            parent, _, child = owner_name.rpartition(".")
            stub = nn.Linear(owner.in_features, owner.out_features, bias=owner.bias is not None, device="meta")
            new = _linear4bit(stub, dtype, weight=tensor, device=device)
            new.bias = owner.bias  # may still be meta; filled by its own key
            setattr(modules[parent] if parent else model, child, new)
            modules[owner_name] = new
        else:
            current = getattr(owner, leaf)
            value = tensor.to(dtype if current.dtype.is_floating_point else current.dtype).to(device)
            if isinstance(current, nn.Parameter):
                setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
            else:
                owner.register_buffer(leaf, value)
        done.add(name)

    for file in _checkpoint_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                mx = _MXFP4.match(key)
                if mx:
                    pending.setdefault(mx.group(1), {})[mx.group(2)] = f.get_tensor(key)
                    if len(pending[mx.group(1)]) == 2:
                        from transformers.integrations.mxfp4 import (
                            convert_moe_packed_tensors,
                        )

                        parts = pending.pop(mx.group(1))
                        put(mx.group(1), convert_moe_packed_tensors(parts["blocks"], parts["scales"], dtype=dtype))
                    continue
                put(key, f.get_tensor(key))
    if pending:
        raise KeyError(f"MXFP4 experts with blocks but no scales (or the reverse): {sorted(pending)}")
    _rebuild_meta_buffers(model, device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise KeyError(f"'{folder}' lacks {len(left)} weights of {type(model).__name__}, e.g. {left[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model, plan


def _rebuild_meta_buffers(model: nn.Module, device: Any) -> None:
    """Non-persistent buffers computed at init (rotary inv_freq) were built on meta: rebuild those modules."""
    for name, module in list(model.named_modules()):
        own = list(module.named_buffers(recurse=False))
        meta = own and any(b.device.type == "meta" for _, b in own) and not list(module.parameters(recurse=False))
        if meta and "rotary" in type(module).__name__.lower():
            with torch.device(device):
                _set_module(model, name, type(module)(config=model.config))
