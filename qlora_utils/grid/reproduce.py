"""Reproduction: re-run one finished run of a profile with the code of the commit it records (a temporary git
worktree when that is not the checked-out one) and list how its outcome differs from the recorded one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.environment import git_commit
from ..core.records import REPO, RUNS_ENV, read_run, run_state
from ..errors import QLoraError
from ..speed.threads import REPLAY_ENV, THREADS_FILE_ENV
from .profiles import Profile
from .runner import check_committed, one_entry_command, thread_environment


TIMING = ("peak MiB", "tokens/s", "train s")  # measurements of the machine, not results of the seed


def outcome(run_dir: Path) -> dict[str, Any]:
    """What a seed determines in a finished run: the headline numbers (without time and memory), the per-step
    losses and every per-example output."""
    from ..study.analysis import headline

    run = read_run(run_dir)
    numbers = {k: v for k, v in headline(run.metrics).items() if k not in TIMING}
    return {"headline": numbers, "losses": [h.get("loss") for h in run.history()], "generations": run.generations()}


@contextlib.contextmanager
def checkout_at(commit: str) -> Any:
    """A temporary git worktree of this repository at a commit, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="qlora-at-"))
    tree = folder / "tree"
    done = subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise QLoraError(f"cannot check out commit {commit[:12]}: {done.stderr.strip()} (a shallow clone lacks older "
                         "commits: `git fetch --unshallow`)")
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def runner_in(tree: Path, spec: str, name: str, runs: Path, threads: int | None = None,
              flags: tuple[str, ...] = ("--force",), replay: list[dict[str, Any]] | None = None,
              ) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run one profile entry with the runner of the checkout in `tree` (its
    code first on the path) into `runs`, starting at a fixed thread count (None: torch's default): not a parallel
    grid's child, so the count changes only where `replay` (a run's recorded changes) says."""
    base = thread_environment(threads) if threads else dict(os.environ)
    base.pop(THREADS_FILE_ENV, None)
    base.pop(REPLAY_ENV, None)
    if replay:
        base[REPLAY_ENV] = json.dumps(replay)
    return one_entry_command(spec, name, *flags), {**base, RUNS_ENV: str(runs), "PYTHONPATH": str(tree)}


def rerun(tree: Path, profile: Profile, name: str, scratch: Path, hardware: dict[str, Any],
          flags: tuple[str, ...] = ()) -> None:
    """Run one entry of a profile with the runner and notebooks of the checkout in `tree` into scratch, at the
    recorded thread count, making the recorded changes of it at the same points."""
    inside = profile.path.resolve().is_relative_to(REPO)
    spec = str(tree / profile.path.resolve().relative_to(REPO)) if inside else str(profile.path)
    command, env = runner_in(tree, spec, name, scratch, hardware.get("torch_threads"), ("--force", *flags),
                             hardware.get("thread_changes"))
    if (platform := platform_fix(tree)) is not None:
        print(f"the run's commit predates cpu_bf16 and this CPU has no bf16 kernels: its processes get today's "
              f"bf16 products through fp32 ({platform.name}/sitecustomize.py), the study's code is the commit's")
        env["PYTHONPATH"] = os.pathsep.join([str(platform), env["PYTHONPATH"]])
    done = subprocess.run(command, cwd=tree, env=env)
    if done.returncode != 0:
        raise QLoraError(f"the re-run of {name!r} failed (exit {done.returncode})")


def platform_fix(tree: Path) -> Path | None:
    """For a checkout older than `cpu_bf16`, on a CPU where it would route bf16 products through fp32 (without it
    a re-run there takes PyTorch's bf16 reference loop, 30x slower): a folder whose sitecustomize.py installs today's
    `cpu_bf16` in every Python process of the re-run (runner, kernel), to be put first on PYTHONPATH. None otherwise."""
    from ..speed import cpu_bf16

    if any((tree / "qlora_utils" / where / "cpu_bf16.py").exists() for where in (".", "speed")) or not cpu_bf16.wanted():
        return None
    folder = tree / "_platform"  # untracked: the checkout's commit stays clean
    folder.mkdir(exist_ok=True)
    shutil.copyfile(cpu_bf16.__file__, folder / "_qlora_cpu_bf16.py")
    (folder / "sitecustomize.py").write_text("import _qlora_cpu_bf16\n\n_qlora_cpu_bf16.install()\n")
    return folder


CPU_KEYS = ("cpu_model", "cpu_capability", "bf16_products")  # what rounds a run's products (`environment.hardware`)


def machine_note(recorded: dict[str, Any], here: dict[str, Any]) -> str:
    """Where the run was recorded and where it was re-run (host, CPU, vector instructions, threads), and whether
    bit-identical numbers are to be expected: only on the same kind of CPU at the same thread count, since bf16
    products round differently with other kernels or another split of the work."""
    def describe(h: dict[str, Any]) -> str:
        cpu = ", ".join(str(h[k]) for k in CPU_KEYS if h.get(k)) or "CPU not recorded"
        return f"{h.get('platform', '?')} ({cpu}), {h.get('torch_threads', '?')} thread(s)"

    keys = ("platform", *CPU_KEYS, "torch_threads")
    same = all(recorded.get(k) == here.get(k) for k in keys if recorded.get(k) is not None)
    changes = recorded.get("thread_changes") or []
    if any("call" not in c for c in changes):  # recorded before changes were numbered: they cannot be repeated
        verdict = "the run changed its thread count at points that cannot be repeated: expect rounding differences"
    elif same:
        verdict = "the same machine as recorded: the numbers should agree exactly"
    else:
        verdict = "another machine: expect rounding differences, within the seed-to-seed spread, not identical numbers"
    moved = f", {len(changes)} thread-count change(s) replayed" if changes else ""
    return f"recorded on {describe(recorded)}; re-run on {describe(here)}{moved}: {verdict}"


@dataclass
class Reproduction:
    """What a re-run found: how its outcome differs from the recorded one (empty: identical) and where each ran."""

    differences: list[str]
    machines: str  # machine_note: the recorded and the re-run machine, and whether identical numbers are expected


def reproduce(profile: Profile, name: str, scratch: Path, root: Path | None = None,
              allow_dirty: bool = False) -> Reproduction:
    """Re-run one finished entry of a profile into scratch, with the code of the commit it records (a temporary
    checkout when that is not this one) and its recorded thread count, and list how its outcome differs from the
    recorded one."""
    entry = next((e for e in profile.entries if e.name == name), None)
    if entry is None:
        raise QLoraError(f"profile {profile.name!r} has no run {name!r}")
    recorded = profile.runs_dir(root) / name
    if run_state(recorded, entry.config_hash) != "done":
        raise QLoraError(f"{recorded} is not a finished, current run; run it first")
    run = read_run(recorded)
    commit, machine = run.commit or "", run.hardware
    if commit and not commit.endswith("+dirty") and commit != (git_commit(REPO) or "").removesuffix("+dirty"):
        with checkout_at(commit) as tree:  # the code that made the run, not today's
            print(f"re-running {name} with the code of its commit {commit[:12]} (a temporary checkout), "
                  f"{machine.get('torch_threads') or 'default'} thread(s)")
            rerun(tree, profile, name, scratch, machine)
    else:
        check_committed(allow_dirty)
        rerun(REPO, profile, name, scratch, machine, ("--allow-dirty",) if allow_dirty else ())
    before, after = outcome(recorded), outcome(profile.runs_dir(scratch) / name)
    differences = [f"{k}: recorded {before['headline'][k]!r}, re-run {after['headline'].get(k)!r}"
                   for k in before["headline"] if before["headline"][k] != after["headline"].get(k)]
    if before["losses"] != after["losses"]:
        steps = sum(a != b for a, b in zip(before["losses"], after["losses"]))
        differences.append(f"training loss differs at {steps} of {len(before['losses'])} steps")
    if before["generations"] != after["generations"]:
        rows = sum(a != b for a, b in zip(before["generations"], after["generations"]))
        differences.append(f"{rows} of {len(before['generations'])} per-example outputs differ")
    return Reproduction(differences, machine_note(machine, read_run(profile.runs_dir(scratch) / name).hardware))
