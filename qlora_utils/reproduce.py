"""Reproduction: re-run one finished run of a profile with the code of the commit it records (a temporary git
worktree when that is not the checked-out one) and list how its outcome differs from the recorded one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .environment import git_commit
from .errors import QLoraError
from .profiles import Profile
from .runner import check_committed, execute_entry, kernel_environment, one_entry_command
from .runs import REPO, RUNS_ENV, read_json, read_run, run_state


TIMING = ("peak MiB", "tokens/s", "train s")  # measurements of the machine, not results of the seed


def outcome(run_dir: Path) -> dict[str, Any]:
    """What a seed determines in a finished run: the headline numbers (without time and memory), the per-step
    losses and every per-example output."""
    from .analysis import headline

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


def runner_in(tree: Path, spec: str, name: str, runs: Path, force: bool = False,
              base: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment (`base`, default this process's, plus the runs folder and the checkout's
    code first on the path) that run one profile entry with the runner of the checkout in `tree`, into `runs`."""
    env = {**(os.environ if base is None else base), RUNS_ENV: str(runs), "PYTHONPATH": str(tree)}
    return one_entry_command(spec, name, *(["--force"] if force else [])), env


def rerun_at(commit: str, profile: Profile, name: str, scratch: Path) -> None:
    """Run one entry with the runner and notebooks of another commit (a temporary worktree, its own code first on
    the path), into scratch."""
    with checkout_at(commit) as tree:
        inside = profile.path.resolve().is_relative_to(REPO)
        spec = str(tree / profile.path.resolve().relative_to(REPO)) if inside else str(profile.path)
        command, env = runner_in(tree, spec, name, scratch)
        print(f"re-running {name} with the code of its commit {commit[:12]} (a temporary checkout)")
        done = subprocess.run(command, cwd=tree, env=env)
        if done.returncode != 0:
            raise QLoraError(f"the re-run of {name!r} at commit {commit[:12]} failed (exit {done.returncode})")


def reproduce(profile: Profile, name: str, scratch: Path, root: Path | None = None,
              allow_dirty: bool = False) -> list[str]:
    """Re-run one finished entry of a profile into scratch, with the code of the commit it records (a temporary
    checkout when that is not this one), and list how its outcome differs from the recorded one (an empty list:
    reproduced exactly)."""
    entry = next((e for e in profile.entries if e.name == name), None)
    if entry is None:
        raise QLoraError(f"profile {profile.name!r} has no run {name!r}")
    recorded = profile.runs_dir(root) / name
    if run_state(recorded, entry.config_hash) != "done":
        raise QLoraError(f"{recorded} is not a finished, current run; run it first")
    commit = (read_json(recorded / "env.json") or {}).get("git_commit") or ""
    if commit and not commit.endswith("+dirty") and commit != (git_commit(REPO) or "").removesuffix("+dirty"):
        rerun_at(commit, profile, name, scratch)  # the code that made the run, not today's
    else:
        check_committed(allow_dirty)
        kernel_environment()
        execute_entry(entry, profile, scratch, force=True)
    before, after = outcome(recorded), outcome(profile.runs_dir(scratch) / name)
    differences = [f"{k}: recorded {before['headline'][k]!r}, re-run {after['headline'].get(k)!r}"
                   for k in before["headline"] if before["headline"][k] != after["headline"].get(k)]
    if before["losses"] != after["losses"]:
        steps = sum(a != b for a, b in zip(before["losses"], after["losses"]))
        differences.append(f"training loss differs at {steps} of {len(before['losses'])} steps")
    if before["generations"] != after["generations"]:
        rows = sum(a != b for a, b in zip(before["generations"], after["generations"]))
        differences.append(f"{rows} of {len(before['generations'])} per-example outputs differ")
    return differences
