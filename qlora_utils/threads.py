"""Cores shared by the runs of a parallel grid: the runner writes each run's thread count to a small file, and the run
follows it between training steps and evaluation batches, so a run the others have left alone takes the freed cores
(and gives them back when another run starts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .io import atomic_write_text

THREADS_FILE_ENV = "QLORA_THREADS_FILE"  # set by the parallel runner for each run it starts
_seen: dict[str, int] = {}  # the file's modification time when last read
_changes: list[dict[str, float | int]] = []  # every change this process made, for its run record
_START = time.time()


def shares(names: list[str], cores: int) -> dict[str, int]:
    """The cores split among running runs: equal shares, the remainder to the earliest started, at least one each."""
    if not names:
        return {}
    base, extra = divmod(max(cores, len(names)), len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def assign(path: str | os.PathLike[str], threads: int) -> None:
    """Tell the run that follows `path` to use `threads` threads (written atomically: never read half-written)."""
    atomic_write_text(path, f"{threads}\n")


def follow() -> int:
    """Adopt the thread count the runner last assigned to this run (a stat call when nothing changed); the count in
    use. Outside a parallel grid ($QLORA_THREADS_FILE unset or unreadable) nothing changes."""
    path = os.environ.get(THREADS_FILE_ENV)
    if not path:
        return torch.get_num_threads()
    try:
        stamp = os.stat(path).st_mtime_ns
        if _seen.get(path) == stamp:
            return torch.get_num_threads()
        text = Path(path).read_text(encoding="utf-8").strip()
        _seen[path] = stamp
        wanted = int(text)
    except (OSError, ValueError):
        return torch.get_num_threads()
    if wanted >= 1 and wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
        _changes.append({"after_seconds": round(time.time() - _START, 1), "threads": wanted})
    return torch.get_num_threads()


def changes() -> list[dict[str, float | int]]:
    """The thread-count changes this process made (seconds after it imported this module), oldest first."""
    return list(_changes)
