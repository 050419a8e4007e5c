"""Frozen weights prepared once per evaluation on a CPU, instead of again in every forward.

Two conversions repeat in every forward of an evaluation on some CPUs, and greedy generation (one short forward per
new token) spends most of its time in them:
- without bitsandbytes' fused 4-bit kernel (no AVX512-BF16), each `Linear4bit` expands its NF4 weight to bf16;
- without bf16 kernels, where `cpu_bf16` multiplies bf16 matrices in fp32, each product converts its bf16 weight
  (the 136M-parameter LM head of Qwen2.5 included; an fp32 weight is first cast to bf16 by autocast) to fp32.
`prepared_once` does each once on entry, with the very operations the forward runs (so the outputs are bit for bit
the same; `tests/test_dequant.py`), and drops the copies on exit. Training never uses it (QLoRA's memory saving is
the point there), nor does CUDA. The copies are capped at a quarter of the memory available on entry; layers past the
cap keep converting per forward."""
from __future__ import annotations

import contextlib
from typing import Iterator

import psutil
import torch

from . import cpu_bf16

SWITCH_ENV = "QLORA_DEQUANTIZE_ONCE"  # unset: where the CPU lacks the fused kernels; "0": never; "1": on any CPU
MEMORY_SHARE = 0.25  # of the memory available on entry, at most, for the prepared copies
BF16 = torch.bfloat16


def has_fused_kernel() -> bool:
    """Whether bitsandbytes multiplies 4-bit weights in inference with its own fused CPU kernel (AVX512-BF16)."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # pragma: no cover - bitsandbytes is pinned
        return False
    return bool(has_avx512bf16())


def switch() -> str:
    """QLORA_DEQUANTIZE_ONCE: "1", "0" or "" (unset); any other value is one clear error."""
    return cpu_bf16.read_switch(SWITCH_ENV, "on CPUs without bitsandbytes' fused 4-bit kernel or bf16 kernels")


def wanted(device: torch.device) -> bool:
    """Whether an evaluation on `device` expands its 4-bit weights once: QLORA_DEQUANTIZE_ONCE "1" on any CPU,
    "0" never, unset on a CPU without bitsandbytes' fused kernel."""
    value = switch()
    if device.type != "cpu" or value == "0":
        return False
    return value == "1" or not has_fused_kernel()


def dequantize(layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A `Linear4bit` layer's weight expanded to `dtype` exactly as its forward does (bitsandbytes' `gemm_4bit`: the
    double-quantized block scales first, then the 4-bit codes)."""
    state = layer.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize, torch.float32) + state.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(layer.weight.view(-1, 1), absmax, state.blocksize,
                                                        state.quant_type, state.shape, dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fp32: bool) -> torch.Tensor:
    """`F.linear` of bf16 `x` with a prepared weight: in fp32 with one rounding to bf16 (what `cpu_bf16` does to the
    same bf16 values), or as it is."""
    if not fp32 or x.dtype != BF16:  # the weight was expanded in x's dtype, the bias cast to it
        return torch.nn.functional.linear(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        return torch.nn.functional.linear(x.float(), weight, None if bias is None else bias.float()).to(BF16)


def _forward_4bit(layer: torch.nn.Module, cache: dict, fp32: bool, x: torch.Tensor) -> torch.Tensor:
    """`Linear4bit.forward` with the expanded weight taken from `cache` (filled on first use per compute dtype)."""
    if not layer.compute_type_is_set:
        layer.set_compute_type(x)
        layer.compute_type_is_set = True
    dtype = x.dtype
    if layer.compute_dtype is not None:
        x = x.to(layer.compute_dtype)
    bias = layer.bias
    if bias is not None:
        if bias.dtype != x.dtype:
            bias.data = bias.data.to(x.dtype)
        bias = bias.to(layer.compute_dtype)
    if x.dtype not in cache:
        weight = dequantize(layer, x.dtype)
        cache[x.dtype] = weight.float() if fp32 and x.dtype == BF16 else weight
    return _linear(x, cache[x.dtype], bias, fp32).to(dtype)


def _autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16


def _forward_linear(layer: torch.nn.Linear, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward` with the bf16 values of its weight (its own, or autocast's cast of an fp32 weight) kept in
    fp32; where neither bf16 nor autocast is involved, the layer's own forward."""
    if not _autocast_bf16() and not (x.dtype == BF16 and layer.weight.dtype == BF16):
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    return _linear(x.to(BF16), weight, None if layer.bias is None else layer.bias.to(BF16), True)


def _four_bit_class() -> type | None:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # pragma: no cover - bitsandbytes is pinned
        return None
    return Linear4bit


def four_bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every bitsandbytes `Linear4bit` layer of a model (a peft model's base layers included)."""
    cls = _four_bit_class()
    return [] if cls is None else [m for m in model.modules() if isinstance(m, cls)]


@contextlib.contextmanager
def prepared_once(model: torch.nn.Module, device: torch.device) -> Iterator[int]:
    """For a block of inference (no gradients), 4-bit layers multiply by a weight expanded once (where `wanted`) and,
    where bf16 products go through fp32, linear layers by an fp32 copy of their bf16 values made once; yields how
    many layers were prepared. The copies are dropped and the layers restored on exit."""
    four_bit = _four_bit_class()
    if device.type != "cpu" or switch() == "0":
        yield 0
        return
    fp32, expand = cpu_bf16.installed(), wanted(device)
    budget = MEMORY_SHARE * psutil.virtual_memory().available
    layers = []
    for module in model.modules():
        if "forward" in vars(module):  # already prepared by an enclosing block
            continue
        if four_bit is not None and isinstance(module, four_bit):
            if not expand or getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                continue
            size = module.weight.quant_state.shape.numel() * (4 if fp32 else 2)
        elif fp32 and type(module) is torch.nn.Linear and module.weight.dtype in (BF16, torch.float32):
            size = module.weight.numel() * 4
        else:
            continue
        if size > budget:
            break
        budget -= size
        if four_bit is not None and isinstance(module, four_bit):  # expanded on first use, per compute dtype
            module.forward = (lambda layer, cache: lambda x: _forward_4bit(layer, cache, fp32, x))(module, {})
        else:
            weight = module.weight.detach().to(BF16).float()
            module.forward = (lambda layer, weight: lambda x: _forward_linear(layer, weight, x))(module, weight)
        layers.append(module)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def route() -> str:
    """How this process's evaluations treat frozen weights, for a run's hardware record."""
    if torch.cuda.is_available():
        return "on the GPU: bitsandbytes' and PyTorch's CUDA kernels (nothing is prepared once)"
    if switch() == "0":
        return "converted in every forward"
    expand, copies = wanted(torch.device("cpu")), cpu_bf16.wanted()
    once = [what for what, yes in (("4-bit weights expanded", expand), ("fp32 copies of bf16 weights", copies)) if yes]
    parts = [" and ".join(once) + " once per evaluation"] if once else []
    if not expand:
        parts.append("bitsandbytes' fused 4-bit kernel" if has_fused_kernel() else "4-bit weights expanded per forward")
    return "; ".join(parts)
