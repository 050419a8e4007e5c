"""A memory planner: predicted peak training memory from a model configuration, broken down into quantized weights
and their constants, unquantized parts, adapters, gradients, optimizer states and activations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig

from ..core.adapters import LoraSettings, analytic_parameter_count
from ..core.design import MODES, PLAN_ADAPTERS
from ..core.models import check_mode
from ..errors import QLoraError

GiB = 1024 ** 3
BLOCK, BLOCK2 = 64, 256  # NF4 block size and the block size of the double-quantized constants
LOGIT_BYTES = 14.0  # bf16 logits, fp32 copy for the loss, log-softmax, gradient
WORKSPACE = 64 * 1024 ** 2  # framework buffers and allocator slack, measured on the smallest runs here
OPTIMIZER_BYTES = {"adamw_32bit": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes per component; `total` is the predicted peak."""

    quantized_weights: float
    quantization_constants: float
    unquantized_weights: float
    adapters: float
    gradients: float
    optimizer_states: float
    activations: float
    logits: float
    autocast_copies: float = 0.0

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def table(self) -> list[dict[str, Any]]:
        """Component rows in GiB, for display."""
        rows = [{"component": k.replace("_", " "), "GiB": v / GiB} for k, v in asdict(self).items()]
        return rows + [{"component": "total", "GiB": self.total / GiB}]


def _linear_params(config: PretrainedConfig) -> int:
    """Parameters in the seven projection matrices of all blocks (the weights bitsandbytes quantizes)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    return layers * (h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter)


def plan_memory(config: PretrainedConfig, mode: str, lora: LoraSettings | None = None, batch_size: int = 1,
                seq_len: int = 512, gradient_checkpointing: bool = True, optimizer: str = "paged_adamw_32bit",
                ) -> MemoryPlan:
    """Predict peak training memory of one configuration (the same accounting on CPU and GPU).

    nf4/fp4: projections in 4 bits (0.5 byte per weight) plus one 8-bit absmax per 64 weights and one fp32 constant
    per 256 absmax (double quantization: 0.127 bits per weight); embeddings and head in bf16, norms in fp32; adapters,
    their gradients in bf16. bf16: every weight in 2 bytes. full: fp32 weights and gradients (bf16 autocast).
    Activations: with checkpointing one bf16 hidden state per layer plus one layer recomputed in the backward pass;
    with a 4-bit base also the inputs that bitsandbytes' 4-bit matmul keeps for its backward pass outside the
    checkpointing hooks (the q/k/v, o and gate/up inputs in fp32, the down-projection input in bf16, every layer).
    Logits: bf16 logits, their fp32 copy for the loss, the log-softmax and the gradient (14 bytes per logit).
    Plus a fixed workspace for the framework's buffers (WORKSPACE). Full fine-tuning under bf16 autocast also holds
    bf16 copies of the fp32 projection weights (autocast's weight cache) for the forward pass."""
    if not (isinstance(batch_size, int) and batch_size >= 1 and isinstance(seq_len, int) and seq_len >= 1):
        raise QLoraError(f"batch_size and seq_len must be whole numbers of at least 1, got {batch_size!r}, {seq_len!r}")
    if mode not in MODES:
        raise QLoraError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    check_mode(mode)
    if optimizer not in OPTIMIZER_BYTES:
        raise QLoraError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZER_BYTES)}")
    if mode == "full" and lora is not None:
        raise QLoraError("full fine-tuning has no adapters; pass lora=None")
    if mode != "full" and lora is None:
        raise QLoraError(f"mode {mode!r} trains LoRA adapters; pass LoRA settings")
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    heads = config.num_attention_heads
    total = analytic_parameter_count(config).total
    linear = _linear_params(config)
    rest = total - linear  # embeddings, head, norms, biases
    tokens = batch_size * seq_len
    trainable = analytic_parameter_count(config, lora).trainable if lora else total
    if mode in ("nf4", "fp4"):
        quantized, constants = 0.5 * linear, linear / BLOCK + 4 * linear / (BLOCK * BLOCK2)
        unquantized = 2.0 * rest
        adapters, grad_bytes = 2.0 * trainable, 2.0
    elif mode == "bf16":
        quantized = constants = 0.0
        unquantized, adapters, grad_bytes = 2.0 * total, 2.0 * trainable, 2.0
    else:
        quantized = constants = adapters = 0.0
        unquantized, grad_bytes = 4.0 * total, 4.0
    gradients = grad_bytes * trainable
    optimizer_states = OPTIMIZER_BYTES[optimizer] * trainable
    per_layer = tokens * (10 * h + 4 * inter) * 2.0 + batch_size * heads * seq_len ** 2 * 2.0  # one block, bf16
    if gradient_checkpointing:
        activations = layers * tokens * h * 2.0 + per_layer
    else:
        activations = layers * per_layer
    if mode in ("nf4", "fp4"):
        activations += 2.0 * max(h * inter, h * h)  # one projection dequantized to bf16 at a time
        if gradient_checkpointing:
            activations += kbit_inputs(config, tokens)
    activations += WORKSPACE
    logits = tokens * vocab * LOGIT_BYTES
    copies = 2.0 * linear if mode == "full" else 0.0
    return MemoryPlan(quantized, constants, unquantized, adapters, gradients, optimizer_states, activations, logits,
                      copies)


def kbit_inputs(config: PretrainedConfig, tokens: int) -> float:
    """The term a 4-bit base adds under gradient checkpointing: the q/k/v, o and gate/up inputs in fp32 and the
    down-projection input in bf16, every layer, as if bitsandbytes' 4-bit matmul kept its input outside the
    checkpointing hooks. Set from the CPU measurements here; bitsandbytes 0.50's MatMul4Bit keeps only the packed
    weight for its backward, and on an H200 the 4-bit rows came in below the plan by about this much (week 6)."""
    return config.num_hidden_layers * tokens * (3 * config.hidden_size * 4.0 + config.intermediate_size * 2.0)


RESERVE_GIB = 1.0  # GPU memory kept for the CUDA context in every fit verdict


def verdict(plan: MemoryPlan, gpu_gib: float = 24.0, reserve_gib: float = RESERVE_GIB) -> dict[str, Any]:
    """Does the plan fit a GPU of gpu_gib (keeping reserve_gib for the CUDA context), and with what margin?"""
    need = plan.total / GiB
    margin = gpu_gib - reserve_gib - need
    return {"predicted GiB": need, "GPU GiB": gpu_gib, "margin GiB": margin, "fits": margin >= 0}


MiB = 1024 ** 2
PLAN_GPU_SETTINGS = {"batch_size": 4, "seq_len": 512, "gradient_checkpointing": True,
                     "optimizer": "paged_adamw_32bit"}  # the gpu-24gb profile's efficiency shape
PLAN_LORA = LoraSettings(**PLAN_ADAPTERS)  # the plan's adapters
VERDICT_PRESETS = ("qwen3-4b", "qwen2.5-7b", "qwen3-8b")


def plan_for_record(record: dict[str, Any]) -> MemoryPlan:
    """The plan of a finished efficiency run, from what its metrics.json recorded (model, mode, LoRA, shape)."""
    from .inventory import config_of

    lora = record.get("lora")
    shape = record["shape"]
    settings = LoraSettings(lora["rank"], lora["alpha"], lora.get("dropout", PLAN_ADAPTERS["dropout"]), lora["placement"]) if lora else None
    return plan_memory(config_of(record["model"]["preset"]), record["model"]["mode"], settings, shape["batch_size"],
                       shape["seq_len"], shape.get("gradient_checkpointing", True),
                       record["training"].get("settings", {}).get("optim", "paged_adamw_32bit"))


def validation_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted against measured peak training memory for every efficiency run that trained, with the relative
    error (the measure: `measured_peak_mib`)."""
    rows = []
    for record in records:
        if record.get("experiment") != "efficiency" or "training" not in record:
            continue
        memory = record["training"]["memory"]
        measured = measured_peak_mib(record)
        predicted = plan_for_record(record).total / MiB
        rows.append({"model": record["model"]["label"], "mode": record["model"]["mode"],
                     "batch × seq": f"{record['shape']['batch_size']} × {record['shape']['seq_len']}",
                     "tokens": record["shape"]["batch_size"] * record["shape"]["seq_len"],
                     "device": memory.get("device", "cpu"),
                     "predicted MiB": predicted, "measured MiB": measured,
                     "error %": 100 * (predicted - measured) / measured if measured else float("nan")})
    return rows


def measured_peak_mib(record: dict[str, Any]) -> float:
    """The measured peak training memory of a run record, as the planner predicts it: on a GPU, CUDA max allocated
    plus the optimizer states bitsandbytes paged (they live outside PyTorch's allocator); on a CPU the whole resident
    set above the process before loading (memory-mapped checkpoint pages that the weights stay in count too), or
    anonymous RSS for older records."""
    from ..speed.efficiency import headline_peak_mib

    training = record["training"]
    memory = training["memory"]
    if "cuda_max_allocated_mib" in memory:
        return memory["cuda_max_allocated_mib"] + training.get("optimizer_states", {}).get("paged_mib", 0.0)
    return memory.get("cpu_total_rss_above_baseline_mib", headline_peak_mib(memory))


def gpu_verdicts(presets: tuple[str, ...] = VERDICT_PRESETS, modes: tuple[str, ...] = ("nf4", "bf16", "full"),
                 gpu_gib: float = 24.0, lora: LoraSettings = PLAN_LORA, **settings: Any) -> list[dict[str, Any]]:
    """Does each model fit a GPU of gpu_gib in each mode at the plan's settings, with the breakdown and margin."""
    from .inventory import config_of

    shape = {**PLAN_GPU_SETTINGS, **settings}
    rows = []
    for preset in presets:
        for mode in modes:
            plan = plan_memory(config_of(preset), mode, None if mode == "full" else lora, **shape)
            rows.append({"model": preset, "mode": mode,
                         **{row["component"]: row["GiB"] for row in plan.table()}, **verdict(plan, gpu_gib)})
    return rows


def llama_7b_config() -> PretrainedConfig:
    """LLaMA-7B's architecture (the QLoRA paper's memory breakdown is for it)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)


STATIC_COMPONENTS = ("quantized_weights", "quantization_constants", "unquantized_weights", "adapters",
                     "optimizer_states")


def component_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted against measured memory component by component for one efficiency run that recorded
    `memory_components` (memory.component_totals, MiB): the weights, quantization constants, adapters, gradients
    and optimizer states one to one; the plan's activations, logits and autocast copies against what autograd saved
    for backward; the plan's total against the static components plus the allocation peak of one forward/backward
    above its start (which holds the saved tensors, the gradients and the transient buffers)."""
    components = record.get("memory_components")
    if not components or "totals" not in components:
        raise QLoraError("this record has no memory_components; re-run it with a version that records them")
    measured = components["totals"]
    plan = plan_for_record(record)
    rows = [{"component": name.replace("_", " "), "predicted MiB": getattr(plan, name) / MiB,
             "measured MiB": measured[name]} for name in (*STATIC_COMPONENTS[:4], "gradients", "optimizer_states")]
    rows.append({"component": "activations + logits (+ autocast copies) / saved for backward",
                 "predicted MiB": (plan.activations + plan.logits + plan.autocast_copies) / MiB,
                 "measured MiB": measured["saved_for_backward"]})
    rows.append({"component": "total / static + step peak", "predicted MiB": plan.total / MiB,
                 "measured MiB": sum(measured[name] for name in STATIC_COMPONENTS) + measured["step_peak"]})
    for row in rows:
        m = row["measured MiB"]
        row["error %"] = 100 * (row["predicted MiB"] - m) / m if m else float("nan")
    return rows
