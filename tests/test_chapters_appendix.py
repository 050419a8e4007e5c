"""The appendix on synthetic runs: provenance problems are shown beside each run."""

from __future__ import annotations

from pathlib import Path

from chapter_fixtures import sst2_run
from qlora_utils.book.chapters import appendix
from qlora_utils.core.records import packing_floor_seconds


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
    assert appendix.budget_sentence(0.63, 0.75, 0.64) == "That is within the profile's budget of 0.75 hours."
    paused = appendix.budget_sentence(0.63, 0.75, 0.79)
    assert paused.startswith("That is within the profile's budget of 0.75 hours. From the first start to the last "
                             "finish 0.79 hours passed")
    assert paused.endswith("and by that longer measure the budget is not met.")
    assert appendix.budget_sentence(0.5, 0.75, 0.7).endswith("while a runner was stopped).")


def test_span_and_busy_time_differ_by_the_pauses(tmp_path: Path) -> None:
    from qlora_utils.core.records import busy_seconds, span_seconds

    first, second = sst2_run(tmp_path, "a", "nf4", 0, 0.8), sst2_run(tmp_path, "b", "nf4", 1, 0.8)
    second.status.update(started="2026-11-29T12:10:00+00:00", finished="2026-11-29T12:15:00+00:00")
    assert busy_seconds([first, second]) == 320 + 300  # 12:00:00-12:05:20 and 12:10-12:15
    assert span_seconds([first, second]) == 15 * 60
    assert span_seconds([]) == 0.0


def test_the_machines_speed_is_given_per_thread_from_the_runs_that_probed_it(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, name, "nf4", seed, 0.8) for seed, name in enumerate("abc")]
    assert appendix.speed_sentence(runs).startswith("No run recorded")
    runs[0].env["speed"] = {"gflops": 180.0, "threads": 1}
    runs[1].env["speed"] = {"gflops": 200.0, "threads": 2}
    assert appendix.speed_sentence(runs) == ("The machine's speed, probed at the start of 2 run(s) (bf16 matrix "
                                             "products), ranged 100 to 180 GFLOP/s per thread (median 140); 1 older "
                                             "run(s) did not record it.")


def test_a_run_records_the_machines_speed_when_it_starts(tmp_path: Path) -> None:
    from qlora_utils.core.records import mark_started, read_json

    mark_started(tmp_path / "r", "notebooks/week7_analysis.md", {}, "ptest")
    speed = read_json(tmp_path / "r" / "env.json")["speed"]
    assert speed["gflops"] > 1 and speed["threads"] >= 1


def test_the_hosts_are_named_with_their_runs_elapsed_time_and_dates(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, name, "nf4", seed, 0.8) for seed, name in enumerate("abc")]
    assert appendix.hosts_sentence(runs) == "Every run ran on the same host (one platform string)."
    for run, platform in zip(runs, ["Linux-fast", "Linux-slow", "Linux-slow"]):
        run.env["hardware"]["platform"] = platform
    runs[2].status.update(started="2026-12-02T10:00:00+00:00", finished="2026-12-02T10:30:00+00:00")
    runs[2].env["hardware"].update(cpu_model="AMD EPYC", cpu_capability="AVX2")  # the older runs did not record it
    assert appendix.hosts_sentence(runs) == (
        "The runs ran on 2 hosts, told apart by their platform string: 1 on Linux-fast (0.09 h elapsed, 2026-11-29); "
        "2 on Linux-slow (AMD EPYC, AVX2, 0.59 h elapsed, 2026-11-29 to 2026-12-02). Hosts differ in speed, so a "
        "grid spread over "
        "several is timed on none of them alone.")
    runs[0].env["hardware"].update(cpu_model="Xeon", cpu_flags=["avx2", "avx512f", "avx512_bf16", "amx_bf16"])
    assert "1 on Linux-fast (Xeon, AMX, 0.09 h" in appendix.hosts_sentence(runs), "the host kind from the CPU's flags"
    assert appendix.page(runs).text["hosts"].startswith("The runs ran on 2 hosts")


def test_the_least_time_any_schedule_needs_is_set_against_the_budget(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, name, "nf4", seed, 0.8) for seed, name in enumerate("abcd")]  # 320 s each
    runs[3].status["wall_seconds"] = 1000.0
    assert packing_floor_seconds(runs, exclusive={"a"}, jobs=2) == 320 + 1000, "the longest shared run bounds it"
    runs[0].status["wall_seconds"], runs[3].status["wall_seconds"] = 1000.0, 320.0
    assert packing_floor_seconds(runs, exclusive={"a"}, jobs=2) == 1000 + 3 * 320 / 2, \
        "a long run alone bounds nothing of the shared streams"
    runs[0].status["wall_seconds"] = 320.0
    runs[3].status["wall_seconds"] = 320.0
    assert packing_floor_seconds(runs, exclusive={"a"}, jobs=2) == 320 + 3 * 320 / 2
    assert packing_floor_seconds(runs, exclusive=(), jobs=1) == 4 * 320
    text = appendix.floor_sentence(runs, {"a"}, budget_hours=0.2)  # floor 800 s = 0.22 h
    assert text == ("However they are scheduled, 2 at a time, these runs need at least 0.22 hours at their recorded "
                    "wall times (the 1 marked to run alone one after another, the other 3 in 2 parallel streams): "
                    "0.2 hours needs faster or fewer runs, not a better schedule. Leaving out the runs of "
                    "week2_sst2_baseline would bring it within the budget (0.00 h).")
    runs[3] = sst2_run(tmp_path, "d", "nf4", 3, 0.8, notebook="week5_ablations")
    # without week 2: d alone, 320 s (0.09 h); without week 5: a alone, then b and c side by side, 640 s (0.18 h)
    assert appendix.floor_sentence(runs, {"a"}, budget_hours=0.2).endswith(
        "Leaving out the runs of week2_sst2_baseline or week5_ablations would bring it within the budget (0.09 h, "
        "0.18 h).")
    assert appendix.floor_sentence(runs, {"a"}, budget_hours=0.05).endswith(
        "Leaving out one week's runs would not be enough either: the least is 0.09 hours, without "
        "week2_sst2_baseline's.")
    assert appendix.floor_sentence(runs, {"a"}, budget_hours=1).endswith(", within the 1-hour budget.")
    assert appendix.page(runs, budget_hours=1, exclusive={"a"}).text["floor"].startswith("However they are")


def test_speed_median_of_three(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, name, "nf4", seed, 0.8) for seed, name in enumerate("abc")]
    for run, gflops in zip(runs, (100.0, 120.0, 200.0)):
        run.env["speed"] = {"gflops": gflops, "threads": 1}
    assert appendix.speed_sentence(runs).endswith("ranged 100 to 200 GFLOP/s per thread (median 120).")


def test_hosts_in_order_of_their_first_run(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, name, "nf4", seed, 0.8) for seed, name in enumerate("abc")]
    for run, platform, day in zip(runs, ["Linux-a", "Linux-b", "Linux-a"], ["29", "30", "31"]):
        run.env["hardware"]["platform"] = platform
        run.status.update(started=f"2026-12-{day}T10:00:00+00:00", finished=f"2026-12-{day}T10:30:00+00:00")
    # Linux-a first ran on the 29th, Linux-b on the 30th (Linux-a's last run, the 31st, comes after)
    assert appendix.hosts_sentence(runs).startswith("The runs ran on 2 hosts, told apart by their platform string: "
                                                    "2 on Linux-a (")


def test_a_span_equal_to_the_budget_meets_it() -> None:
    assert appendix.budget_sentence(0.5, 0.75, 0.75).endswith("while a runner was stopped).")


def test_provenance_shows_twelve_characters_of_the_commit(tmp_path: Path) -> None:
    page = appendix.page([sst2_run(tmp_path, "a", "nf4", 0, 0.8)])
    assert list(page.markdown["provenance"]["commit"]) == ["a" * 12]


def test_wall_time_table_keeps_one_decimal(tmp_path: Path) -> None:
    run = sst2_run(tmp_path, "a", "nf4", 0, 0.8)
    run.status.update(wall_seconds=90.0, finished="2026-11-29T12:01:30+00:00")
    table = appendix.page([run]).markdown["wall_time"]
    assert table["sum of wall times (min)"].tolist() == [1.5, 1.5] and table["elapsed (min)"].tolist() == [1.5, 1.5]
