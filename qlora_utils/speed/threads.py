"""Cores shared by the runs of a parallel grid: the runner writes each run's thread count to a small file, and the run
follows it between training steps and evaluation batches, so a run the others have left alone takes the freed cores
(and gives them back when another run starts).

The thread count can change the numbers: on some CPUs (seen on one with AMX, whose bf16 kernels split a product's
sum among the threads) one and two threads round differently. So every change is recorded with the call of `follow`
that made it, and a re-run given that record (`QLORA_THREADS_REPLAY`, set by `reproduce`) makes the same changes at
the same calls: the same seed gives the same numbers on the same kind of CPU, however the grid ran."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from ..locations import atomic_write_text

THREADS_FILE_ENV = "QLORA_THREADS_FILE"  # set by the parallel runner for each run it starts
REPLAY_ENV = "QLORA_THREADS_REPLAY"  # set by `reproduce`: a run's recorded changes (JSON), made again at the same calls
_seen: dict[str, int] = {}  # the file's modification time when last read
_changes: list[dict[str, float | int]] = []  # every change this process made, for its run record
_calls = 0  # calls of follow() so far: where each change happened, in a way a re-run can repeat
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


@functools.lru_cache(maxsize=4)
def _schedule(text: str) -> dict[int, int]:
    """The recorded changes as {call: threads}."""
    return {int(change["call"]): int(change["threads"]) for change in json.loads(text)}


def _change(wanted: int) -> None:
    import torch

    torch.set_num_threads(wanted)
    _changes.append({"after_seconds": round(time.time() - _START, 1), "call": _calls, "threads": wanted})


def follow() -> int:
    """Adopt the thread count the runner last assigned to this run (a stat call when nothing changed); the count in
    use. Outside a parallel grid ($QLORA_THREADS_FILE unset or unreadable) nothing changes; in a replay
    ($QLORA_THREADS_REPLAY), the recorded changes are made at the calls that made them."""
    import torch  # here, not at the top: the runner shares cores without loading torch

    global _calls
    _calls += 1
    replay = os.environ.get(REPLAY_ENV)
    if replay:
        wanted = _schedule(replay).get(_calls)
        if wanted and wanted != torch.get_num_threads():
            _change(wanted)
        return torch.get_num_threads()
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
        _change(wanted)
    return torch.get_num_threads()


def changes() -> list[dict[str, float | int]]:
    """The thread-count changes this process made (seconds after it imported this module), oldest first."""
    return list(_changes)
