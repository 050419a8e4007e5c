"""Efficiency measurements: peak memory per phase (CUDA allocator or sampled CPU RSS) and throughput."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import psutil
import torch

MiB = 1024 ** 2
_STATUS = "/proc/self/status"


def _status_kib(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (Linux); empty where /proc is not available."""
    found: dict[str, int] = {}
    try:
        with open(_STATUS, encoding="ascii") as handle:
            for line in handle:
                key = line.split(":", 1)[0]
                if key in keys:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        return {}
    return found


def anonymous_rss() -> int | None:
    """Resident anonymous memory (heap, tensors) in bytes from /proc (Linux), excluding file-backed pages such as
    memory-mapped safetensors checkpoints; None where /proc is not available."""
    return _status_kib("RssAnon").get("RssAnon")


def process_memory() -> int:
    """The CPU memory measure used throughout: anonymous RSS where available, else the whole RSS."""
    anon = anonymous_rss()
    return anon if anon is not None else psutil.Process().memory_info().rss


def total_rss() -> int:
    """The whole resident set in bytes, memory-mapped checkpoint pages included."""
    return _status_kib("VmRSS").get("VmRSS") or psutil.Process().memory_info().rss


class PeakMemory:
    """Context manager measuring one phase's peak memory and wall time.

    On CUDA: max allocated and reserved bytes, reset at the start of the phase, and the whole device's used memory
    sampled with the CPU measure (`cudaMemGetInfo`: also the CUDA context and what bypasses torch's allocator, such as
    bitsandbytes' paged optimizer states; other processes' memory too). On CPU: the process's resident
    anonymous memory (`process_memory`: tensors and heap, not memory-mapped checkpoint files) sampled every `interval`
    seconds; `cpu_peak_above_baseline_mib` subtracts the value at the start of the phase, or `baseline_rss` when given
    (for example the process before the model was loaded)."""

    def __init__(self, phase: str, interval: float = 0.02, baseline_rss: int | None = None,
                 baseline_total: int | None = None) -> None:
        self.phase, self.interval = phase, interval
        self.cuda = torch.cuda.is_available()
        self.baseline = baseline_rss
        self.peak_rss = self.peak_total = 0
        self.baseline_total = baseline_total
        self.samples = 0
        self.device_used = self.device_used_peak = 0
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one CPU sample now (the background thread calls this every `interval`); returns the current value."""
        fields = _status_kib("RssAnon", "VmRSS")
        rss = fields.get("RssAnon") or process_memory()
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_total = max(self.peak_total, fields.get("VmRSS") or total_rss())
        if self.cuda:
            self.device_used_peak = max(self.device_used_peak, device_used())
        self.samples += 1
        return rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        gc.collect()  # garbage from earlier phases freed mid-phase would hide this phase's growth
        rss, total = process_memory(), total_rss()
        self.baseline = rss if self.baseline is None else self.baseline
        self.baseline_total = total if self.baseline_total is None else self.baseline_total
        self.peak_rss, self.peak_total = rss, total
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.device_used = self.device_used_peak = device_used()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.sample()
        self.result = {"phase": self.phase, "seconds": round(seconds, 3), "device": "cuda" if self.cuda else "cpu",
                       "cpu_measure": "anonymous RSS" if anonymous_rss() is not None else "RSS",
                       "cpu_peak_rss_mib": round(self.peak_rss / MiB, 1),
                       "cpu_baseline_rss_mib": round(self.baseline / MiB, 1),
                       "cpu_peak_above_baseline_mib": round((self.peak_rss - self.baseline) / MiB, 1),
                       "cpu_total_rss_above_baseline_mib": round((self.peak_total - self.baseline_total) / MiB, 1),
                       "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
        if self.cuda:
            self.result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
            self.result["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MiB, 1)
            self.result["cuda_device_used_at_start_mib"] = round(self.device_used / MiB, 1)
            self.result["cuda_device_used_peak_mib"] = round(self.device_used_peak / MiB, 1)  # sampled

    @property
    def peak_mib(self) -> float:
        """The headline peak: CUDA max allocated on a GPU, else CPU memory above the baseline."""
        return float(headline_peak_mib(self.result))


def device_used() -> int:
    """Bytes in use on GPU 0 as the driver counts them (total minus free), whoever allocated them."""
    free, total = torch.cuda.mem_get_info(0)
    return total - free


def headline_peak_mib(memory: dict[str, Any]) -> float | None:
    """The headline peak of a recorded phase: CUDA max allocated on a GPU, else the whole resident set above the
    process before loading (memory-mapped weights count, as in the planner), else anonymous memory (older runs)."""
    return memory.get("cuda_max_allocated_mib", memory.get("cpu_total_rss_above_baseline_mib",
                                                           memory.get("cpu_peak_above_baseline_mib")))


def tokens_per_second(tokens: int, seconds: float) -> float:
    """Throughput, guarding against a zero-length phase."""
    return tokens / seconds if seconds > 0 else float("nan")
