"""LoRA adapters: settings and placements, k-bit preparation with gradient checkpointing, parameter counts (measured
through peft and analytic from a model configuration)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import QLoraError
from .design import PLACEMENTS, PLAN_ADAPTERS
from .models import LoadedModel

@dataclass(frozen=True)
class LoraSettings:
    """Rank, alpha, dropout and placement of the LoRA adapters; the defaults are the plan's (`design.PLAN_ADAPTERS`:
    alpha 16 and dropout 0.1 as in the QLoRA paper)."""

    rank: int = PLAN_ADAPTERS["rank"]
    alpha: int = PLAN_ADAPTERS["alpha"]
    dropout: float = PLAN_ADAPTERS["dropout"]
    placement: str = PLAN_ADAPTERS["placement"]

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise QLoraError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha <= 0:
            raise QLoraError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise QLoraError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.placement not in PLACEMENTS:
            raise QLoraError(f"unknown LoRA placement {self.placement!r}; choose one of: {', '.join(PLACEMENTS)}")

    @property
    def target_modules(self) -> tuple[str, ...]:
        """The projection names that receive adapters."""
        return PLACEMENTS[self.placement]

    def peft_config(self) -> LoraConfig:
        """The peft LoraConfig for a causal language model."""
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM")

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, for run records."""
        return asdict(self)


def prepare_for_training(loaded: LoadedModel, lora: LoraSettings | None, *, gradient_checkpointing: bool = True,
                         adapter_dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel | PeftModel:
    """Make a loaded model trainable: full fine-tuning when lora is None, else frozen base plus LoRA adapters.

    Gradient checkpointing is switched on before peft wraps the model (k-bit models through `prepare_kbit`, peft's
    k-bit preparation without its fp32 copies); adapters are cast to adapter_dtype, norms kept in fp32 and
    embeddings in bf16 as the QLoRA reference code does."""
    model = loaded.model
    ckpt_kwargs = {"use_reentrant": False}
    if lora is None:
        if loaded.mode != "full":
            raise QLoraError(f"full fine-tuning needs load mode 'full', not {loaded.mode!r} (or pass LoRA settings)")
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.config.use_cache = not gradient_checkpointing
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if loaded.mode == "full":
        raise QLoraError("LoRA on a 'full' (fp32) load is not a baseline of this study; load with mode 'bf16' or 'nf4'")
    if loaded.mode in ("nf4", "fp4"):
        model = prepare_kbit(model, gradient_checkpointing, ckpt_kwargs)
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
            model.enable_input_require_grads()
    model.config.use_cache = not gradient_checkpointing
    peft_model = get_peft_model(model, lora.peft_config(), autocast_adapter_dtype=False)
    for name, module in peft_model.named_modules():
        if "lora_" in name:
            module.to(adapter_dtype)
        elif "norm" in name.rsplit(".", 1)[-1]:
            module.to(torch.float32)
        elif name.endswith(("embed_tokens", "lm_head")) and getattr(module, "weight", None) is not None:
            if module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)
    return peft_model


def prepare_kbit(model: PreTrainedModel, gradient_checkpointing: bool, ckpt_kwargs: dict[str, Any]
                 ) -> PreTrainedModel:
    """What peft's `prepare_model_for_kbit_training` does to a 4-bit model here (freeze every weight; non-reentrant
    gradient checkpointing when asked), without its cast of every 16-bit weight that is not 4-bit to fp32. That cast
    copied the embeddings and the head, until then pages of the memory-mapped checkpoint, into allocated fp32 (4 bytes
    a weight; 1,039 MiB for Qwen2.5-Coder-0.5B's untied pair), which `prepare_for_training` then cast back to bf16
    copies (2 bytes a weight, allocated). The values are the same either way: the norms are cast to fp32 below as before,
    bf16 -> fp32 -> bf16 is exact, and bitsandbytes casts a 4-bit layer's bias to its compute dtype (bf16) in its
    first forward (`tests/test_memory.py` compares losses and gradients with peft's preparation)."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:  # use_reentrant=False: peft enables input gradients only for reentrant checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    return model


def save_adapter(model: PeftModel, folder: str | os.PathLike[str], base: str) -> Path:
    """Save the adapters (safetensors) naming their base model by `base` (a preset name or Hub id) instead of the
    local cache folder it was loaded from; the model card is path-scrubbed, so the folder holds no machine path."""
    from ..scrub import scrub_file

    for config in model.peft_config.values():
        config.base_model_name_or_path = base
    model.save_pretrained(folder, safe_serialization=True)
    scrub_file(Path(folder) / "README.md")  # peft's model card tags the base by its local folder
    return Path(folder)


def adapted_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    return sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A)


@dataclass(frozen=True)
class ParameterReport:
    """Trainable and total parameters (4-bit weights counted as parameters, not packed bytes)."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total

    def to_dict(self) -> dict[str, Any]:
        """Plain fields plus the percentage, for run records."""
        return {"trainable": self.trainable, "total": self.total, "percent": self.percent}


def parameter_report(model: torch.nn.Module) -> ParameterReport:
    """Count parameters of a (peft) model; peft's counter corrects bitsandbytes' packed 4-bit numel."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return ParameterReport(int(trainable), int(total))
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":
            count *= 2  # two 4-bit values per stored byte
        total += count
        trainable += count if param.requires_grad else 0
    return ParameterReport(trainable, total)


def analytic_parameter_count(config: PretrainedConfig, lora: LoraSettings | None = None) -> ParameterReport:
    """Parameter counts of a Llama/Qwen2/Qwen3 decoder from its configuration alone (no weights needed)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv, vocab = config.num_attention_heads, config.num_key_value_heads, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // heads
    qkv_bias = config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
    o_bias = config.model_type != "qwen2" and bool(getattr(config, "attention_bias", False))
    mlp_bias = int(bool(getattr(config, "mlp_bias", False)))
    shapes = {  # (in_features, out_features, has_bias)
        "q_proj": (h, heads * hd, qkv_bias), "k_proj": (h, kv * hd, qkv_bias), "v_proj": (h, kv * hd, qkv_bias),
        "o_proj": (heads * hd, h, o_bias), "gate_proj": (h, inter, mlp_bias), "up_proj": (h, inter, mlp_bias),
        "down_proj": (inter, h, mlp_bias),
    }
    per_layer = sum(i * o + (o if b else 0) for i, o, b in shapes.values()) + 2 * h
    if config.model_type == "qwen3":
        per_layer += 2 * hd  # q_norm and k_norm
    tied = bool(getattr(config, "tie_word_embeddings", False))
    base = vocab * h + layers * per_layer + h + (0 if tied else vocab * h)
    if lora is None:
        return ParameterReport(base, base)
    adapters = layers * sum(lora.rank * (shapes[m][0] + shapes[m][1]) for m in lora.target_modules)
    return ParameterReport(adapters, base + adapters)
