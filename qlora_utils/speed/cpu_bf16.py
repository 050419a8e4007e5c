"""bf16 matrix products on CPUs without bf16 instructions. Where oneDNN has no bf16 kernel (no AVX512 or AMX: an AVX2
EPYC of this shared machine, for one), PyTorch multiplies bf16 matrices in a reference loop: measured there 0.9-1.9
GFLOP/s against 34-143 for fp32, so every bf16 run of this project was 50-100x slower. `install` routes the CPU's bf16
mm, addmm, bmm and baddbmm through fp32: the same bf16 inputs, multiplied and summed in fp32, rounded once to bf16,
which is what the bf16 kernels compute too (they accumulate in fp32), up to the order of the sums."""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

SWITCH_ENV = "QLORA_BF16_VIA_FP32"  # unset: where the CPU lacks bf16 kernels; "0": never (PyTorch's own); "1": always
BF16 = torch.bfloat16


def has_bf16_kernels() -> bool:
    """Whether this CPU has oneDNN's bf16 kernels (AVX512-BF16, AVX512 or AMX), which PyTorch then uses itself."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: treat as without bf16 kernels
        return False


def _out(dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == BF16 and b.dtype == BF16:
        return torch.mm(a.float(), b.float(), out=_out(torch.float32, a.shape[0], b.shape[1])).to(BF16)
    return torch.mm(a, b, out=_out(a.dtype, a.shape[0], b.shape[1]))  # the .out overload: PyTorch's own kernel


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == BF16 and b.dtype == BF16:
        out = _out(torch.float32, a.shape[0], a.shape[1], b.shape[2])
        return torch.bmm(a.float(), b.float(), out=out).to(BF16)
    return torch.bmm(a, b, out=_out(a.dtype, a.shape[0], a.shape[1], b.shape[2]))


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: Any = 1, alpha: Any = 1) -> torch.Tensor:
    if a.dtype == BF16 and b.dtype == BF16 and bias.dtype == BF16:
        out = _out(torch.float32, a.shape[0], b.shape[1])
        return torch.addmm(bias.float(), a.float(), b.float(), beta=beta, alpha=alpha, out=out).to(BF16)
    return torch.addmm(bias, a, b, beta=beta, alpha=alpha, out=_out(a.dtype, a.shape[0], b.shape[1]))


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: Any = 1, alpha: Any = 1
             ) -> torch.Tensor:
    shape = (a.shape[0], a.shape[1], b.shape[2])
    if a.dtype == BF16 and b.dtype == BF16 and bias.dtype == BF16:
        return torch.baddbmm(bias.float(), a.float(), b.float(), beta=beta, alpha=alpha,
                             out=_out(torch.float32, *shape)).to(BF16)
    return torch.baddbmm(bias, a, b, beta=beta, alpha=alpha, out=_out(a.dtype, *shape))


KERNELS = {"mm": _mm, "bmm": _bmm, "addmm": _addmm, "baddbmm": _baddbmm}
_library: list[torch.library.Library] = []  # kept alive: dropping the Library object would unregister the kernels


def read_switch(name: str, unset: str) -> str:
    """A three-way switch from the environment: "1", "0" or "" (unset, meaning `unset`); anything else is one clear
    error. Here, not in `io`, because this file also runs alone in re-runs of older commits (`reproduce`)."""
    switch = os.environ.get(name, "")
    if switch not in ("", "0", "1"):
        from ..errors import QLoraError

        raise QLoraError(f"{name}={switch!r}: use 1 (always), 0 (never) or leave it unset ({unset})")
    return switch


def wanted() -> bool:
    """Whether `install` routes bf16 products through fp32 here: QLORA_BF16_VIA_FP32 "1" always, "0" never, unset
    where the CPU has no bf16 kernels."""
    switch = read_switch(SWITCH_ENV, "where the CPU has no bf16 kernels")
    return switch == "1" or (switch == "" and not has_bf16_kernels())


@functools.cache
def install() -> bool:
    """Route this process's CPU bf16 products through fp32 where `wanted`; True if it did. Once per process; CUDA is
    untouched."""
    if not wanted():
        return False
    import warnings

    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore", UserWarning)
        for name, kernel in KERNELS.items():
            library.impl(name, kernel, "CPU")
    _library.append(library)
    return True


def installed() -> bool:
    """Whether this process's CPU bf16 products go through fp32 now (`install` called, and it routed them)."""
    return install.cache_info().currsize > 0 and install()


def products() -> str:
    """How this process multiplies bf16 matrices on the CPU once `install` has been called (as loading a model and
    the speed probe do), for a run's hardware record: the same answer before and after the call."""
    if wanted():
        return "fp32 products of bf16 inputs" + ("" if has_bf16_kernels() else " (no bf16 kernels for this CPU)")
    return "bf16 kernels" if has_bf16_kernels() else "PyTorch's bf16 reference loop (no bf16 kernels for this CPU)"
