"""The committed runs of the default and quick profiles (both complete): every run records a clean commit, the same
one in every file, and no machine path in any text file of its directory (subfolders included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_utils.core.records import profile_runs_dir, provenance_problems, read_runs
from qlora_utils.grid.profiles import load_profile
from qlora_utils.grid.runner import REPO


@pytest.mark.parametrize("profile", ["cpu", "quick"])
def test_every_committed_run_has_clean_provenance(profile: str) -> None:
    runs = read_runs(profile_runs_dir(profile, REPO / "runs"), done_only=False)
    assert {r.name for r in runs} >= {e.name for e in load_profile(profile).entries if not e.planned}, \
        f"{profile} is complete (planned entries are committed before they run)"
    problems = {r.name: provenance_problems(r) for r in runs}
    assert not {name: p for name, p in problems.items() if p}


def test_a_machine_path_in_a_subfolder_or_a_dirty_commit_is_found(tmp_path: Path) -> None:
    run = tmp_path / "r"
    (run / "judge").mkdir(parents=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    (run / "env.json").write_text(json.dumps({"git_commit": commit}))
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    (run / "config.json").write_text(json.dumps({"run": "r"}))
    (run / "metrics.json").write_text(json.dumps({"environment": {"git_commit": commit}}))
    (run / "judge" / "configs.yaml").write_text("prompt_template: /home/someone/venv/lib/judge.txt\n")
    (found,) = read_runs(tmp_path, done_only=False)
    assert provenance_problems(found) == ["judge/configs.yaml holds a machine path (/home/someone/venv/lib/judge.txt)"]
    (run / "judge" / "configs.yaml").unlink()
    (run / "env.json").write_text(json.dumps({"git_commit": commit + "+dirty"}))
    assert provenance_problems(read_runs(tmp_path, done_only=False)[0])[0].startswith("ran with uncommitted code")
