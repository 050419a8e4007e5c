"""Speed-up of one run between two commits, measured on the same machine at the same time: the profile entry of the
same name runs with each commit's code (temporary worktrees, the same Python environment), both started together
with one thread each, so that both see the same host and the same load; the side that finishes first runs again
(untimed) until the other finishes, so that neither timed run ever has the machine to itself. The ratio is new wall
time / old."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ..core.records import read_json
from ..errors import QLoraError
from ..locations import atomic_write_json
from .reproduce import checkout_at, runner_in

SIDES = ("old", "new")


def resolve(commit: str) -> str:
    """The full hash of a commit of this repository, or one clear error."""
    from ..core.records import REPO

    done = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise QLoraError(f"commit {commit!r} not found in this repository (a shallow clone lacks older commits: "
                         "`git fetch --unshallow`)")
    return done.stdout.strip()


def check_entry(tree: Path, profile: str, name: str, commit: str) -> None:
    """One clear error unless the checkout's own profile file has an entry of that name."""
    import yaml

    path = tree / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        raise QLoraError(f"commit {commit[:12]} has no profiles/{profile}.yaml")
    names = [r.get("name") for r in (yaml.safe_load(path.read_text()) or {}).get("runs", [])]
    if name not in names:
        raise QLoraError(f"profile {profile!r} at commit {commit[:12]} has no run {name!r}; its runs: "
                         f"{', '.join(map(str, names))}")


def start(tree: Path, profile: str, name: str, runs: Path, log: Path, threads: int) -> subprocess.Popen:
    """The runner of the checkout in `tree` executing one entry of its own copy of the profile into `runs`, with
    `threads` threads (its own process group, so that it and its notebook kernel can be stopped together)."""
    command, env = runner_in(tree, f"profiles/{profile}.yaml", name, runs, threads)
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a runner and its kernel if still running (SIGTERM to its group, SIGKILL after 30 s)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def side_by_side(profile: str, name: str, old: str, new: str, scratch: Path, threads: int = 1) -> dict[str, Any]:
    """Run entry `name` of profile `profile` at commits `old` and `new` at once (each its own worktree, runs folder
    and log under scratch, `threads` threads each) and return both wall times (the runner's own `wall_seconds`),
    their ratio and the 1-minute load average before and after."""
    commits = {"old": resolve(old), "new": resolve(new)}
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        trees = {side: stack.enter_context(checkout_at(commits[side])) for side in SIDES}
        for side in SIDES:
            check_entry(trees[side], profile, name, commits[side])
        scratch.mkdir(parents=True, exist_ok=True)  # only once both sides can run: a refusal leaves no folder
        began = time.perf_counter()
        procs = {side: start(trees[side], profile, name, scratch / side, scratch / f"{side}.log", threads)
                 for side in SIDES}
        company: dict[str, subprocess.Popen] = {}  # the faster side again, untimed, beside the slower one
        ended: dict[str, float] = {}
        try:
            while len(ended) < len(SIDES):
                for side in SIDES:
                    if side in ended or procs[side].poll() is None:
                        continue
                    ended[side] = time.perf_counter() - began
                    if procs[side].returncode != 0:
                        raise QLoraError(f"the {side} side ({commits[side][:12]}) of {name!r} failed (exit "
                                         f"{procs[side].returncode}); its log: {scratch / f'{side}.log'}")
                for side in ended:  # a finished side runs again while the other is still going
                    if len(ended) < len(SIDES) and (side not in company or company[side].poll() is not None):
                        company[side] = start(trees[side], profile, name, scratch / f"{side}-company",
                                              scratch / f"{side}-company.log", threads)
                time.sleep(1)
        finally:
            for proc in [*procs.values(), *company.values()]:
                stop(proc)
    load_after = os.getloadavg()[0]
    sides: dict[str, Any] = {}
    for side in SIDES:
        status = read_json(scratch / side / profile / name / "status.json") or {}
        if status.get("state") != "done":
            raise QLoraError(f"the {side} side ({commits[side][:12]}) of {name!r} did not finish; its log: "
                             f"{scratch / f'{side}.log'}")
        sides[side] = {"commit": commits[side], "wall_seconds": status["wall_seconds"],
                       "process_seconds": round(ended[side], 1), "phases": phases(scratch / side / profile / name)}
    result = {"profile": profile, "run": name, "threads_each": threads, **sides,
              "company": "the side that finished first ran again, untimed, until the other finished: each timed run "
                         "had the other side beside it from start to end",
              "ratio": round(sides["new"]["wall_seconds"] / sides["old"]["wall_seconds"], 3),
              "load_before": round(load_before, 2), "load_after": round(load_after, 2)}
    from ..core.environment import environment

    result["environment"] = environment()
    atomic_write_json(scratch / "speedup.json", result)
    return result


PHASES = {"load": ("model", "load_seconds"), "zero-shot evaluation": ("zero_shot", "memory", "seconds"),
          "training": ("training", "seconds"), "evaluation": ("fine_tuned", "memory", "seconds"),
          "experiment": ("wall_seconds",)}


def phases(run_dir: Path) -> dict[str, float]:
    """Seconds per phase of a finished experiment run, as its metrics.json records them (absent phases left out)."""
    metrics, found = read_json(run_dir / "metrics.json") or {}, {}
    for phase, keys in PHASES.items():
        value: Any = metrics
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            found[phase] = round(float(value), 1)
    return found


def describe(result: dict[str, Any]) -> str:
    """One line: the run, both wall times with their commits, the ratio and the load."""
    old, new = result["old"], result["new"]
    split = "; ".join(f"{p} {old['phases'][p]:.0f} -> {new['phases'][p]:.0f} s" for p in PHASES
                      if p in old.get("phases", {}) and p in new.get("phases", {}))
    return (f"{result['run']}: old {old['commit'][:7]} {old['wall_seconds']:.1f} s, new {new['commit'][:7]} "
            f"{new['wall_seconds']:.1f} s, new/old {result['ratio']:.3f} ({result['threads_each']} thread each, "
            f"started together; load {result['load_before']:.2f} before, {result['load_after']:.2f} after)"
            + (f"\n  per phase, old -> new: {split}" if split else ""))


