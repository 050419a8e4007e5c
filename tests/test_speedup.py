"""speedup: one run of a profile at two commits, started together, each in its own worktree and runs folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_utils.errors import QLoraError
from qlora_utils.grid.speedup import describe, side_by_side


@pytest.mark.slow
def test_both_sides_run_the_same_entry_and_the_ratio_is_their_wall_times(tmp_path: Path, data_dir: Path) -> None:
    result = side_by_side("smoke", "week2-qlora-seed0", "HEAD", "HEAD", tmp_path)
    for side in ("old", "new"):
        status = json.loads((tmp_path / side / "smoke" / "week2-qlora-seed0" / "status.json").read_text())
        assert status["state"] == "done" and result[side]["wall_seconds"] == status["wall_seconds"] > 0
        assert (tmp_path / side / "smoke" / "week2-qlora-seed0" / "metrics.json").is_file()
    assert result["ratio"] == round(result["new"]["wall_seconds"] / result["old"]["wall_seconds"], 3)
    assert result["old"]["commit"] == result["new"]["commit"] and len(result["new"]["commit"]) == 40
    assert json.loads((tmp_path / "speedup.json").read_text())["ratio"] == result["ratio"]
    same = [json.loads((tmp_path / s / "smoke" / "week2-qlora-seed0" / "metrics.json").read_text())["fine_tuned"]
            for s in ("old", "new")]
    assert same[0]["accuracy"] == same[1]["accuracy"]  # the same commit twice: the same work, the same numbers
    assert result["new"]["phases"]["training"] > 0 and "experiment" in result["old"]["phases"]
    assert "new/old" in describe(result) and "training" in describe(result).split("per phase")[1]


def test_an_entry_missing_from_a_commits_profile_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QLoraError, match="has no run 'no-such-run'; its runs: week1-setup"):
        side_by_side("smoke", "no-such-run", "HEAD", "HEAD", tmp_path / "out")
    with pytest.raises(QLoraError, match="commit 'not-a-commit' not found"):
        side_by_side("smoke", "week2-qlora-seed0", "not-a-commit", "HEAD", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a refused speedup left its output folder behind"
