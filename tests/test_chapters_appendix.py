"""The appendix on synthetic runs: provenance problems are shown beside each run."""

from __future__ import annotations

from pathlib import Path

from chapter_fixtures import sst2_run
from qlora_utils.chapters import appendix


def test_dirty_runs_are_shown_as_such(tmp_path: Path) -> None:
    clean = sst2_run(tmp_path, "a", "nf4", 0, 0.8)
    dirty = sst2_run(tmp_path, "b", "nf4", 1, 0.8)
    dirty.env["git_commit"] = "b" * 40 + "+dirty"
    page = appendix.page([clean, dirty])
    table = page.markdown["provenance"].set_index("notebook")
    assert list(page.markdown["provenance"]["provenance"]) == ["clean commit", "ran with uncommitted code (no diff)"]
    assert page.text["dirty"].startswith("1 of the 2 runs ran with uncommitted code")
    assert len(table) == 2 and page.markdown["wall_time"]["runs"].iloc[-1] == 2


def test_the_grid_time_is_set_against_the_profiles_budget(tmp_path: Path) -> None:
    assert appendix.budget_sentence(3.5, 4.0) == "That is within the profile's budget of 4 hours."
    assert appendix.budget_sentence(4.6, 4.0) == ("That is over the profile's budget of 4 hours by 0.60 hours: the "
                                                  "budget is not met.")
    assert appendix.budget_sentence(1.0, None) == "This profile states no time budget."
    assert appendix.page([sst2_run(tmp_path, "a", "nf4", 0, 0.8)], budget_hours=0.75).text["budget"].startswith(
        "That is within")
