"""The committed runs of the default profile: every run made by the seeded code (commit 5620627 and later) records a
clean commit, the same one in every file, and no machine path. Runs older than that commit are listed by the book's
appendix with their problems until the grid has re-run them."""

from __future__ import annotations

import subprocess

import pytest

from qlora_utils.runs import profile_runs_dir, provenance_problems, read_runs
from qlora_utils.runner import REPO

SEEDED = "5620627"  # the first commit whose runs seed Python, NumPy and torch and scrub machine paths


def _descends(commit: str) -> bool:
    done = subprocess.run(["git", "merge-base", "--is-ancestor", SEEDED, commit.removesuffix("+dirty")], cwd=REPO,
                          capture_output=True)
    return done.returncode == 0


def test_runs_of_the_seeded_code_have_clean_provenance() -> None:
    runs = read_runs(profile_runs_dir("cpu", REPO / "runs"), done_only=False)
    if subprocess.run(["git", "cat-file", "-e", SEEDED], cwd=REPO).returncode != 0:
        pytest.skip("a shallow clone without the seeding commit")
    checked = [r for r in runs if r.commit and _descends(r.commit)]
    problems = {r.name: provenance_problems(r) for r in checked}
    assert not {name: p for name, p in problems.items() if p}
