"""The week 2 chapter on synthetic runs: the headline over five seeds per mode, judged by the protocol; the sweep kept
apart from the seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from chapter_fixtures import sst2_run
from qlora_utils.chapters import week2

FULL = [0.86, 0.87, 0.88, 0.86, 0.87]
QLORA_GAP = [0.00, 0.05, 0.01, 0.04, 0.02]


def _runs(tmp_path: Path) -> list:
    runs = []
    for seed in range(5):
        runs.append(sst2_run(tmp_path, f"week2-full-seed{seed}", "full", seed, FULL[seed], zero_shot=0.6))
        runs.append(sst2_run(tmp_path, f"week2-qlora-seed{seed}", "nf4", seed, FULL[seed] - QLORA_GAP[seed],
                             selection=0.8, zero_shot=0.55))
        runs.append(sst2_run(tmp_path, f"week2-lora16-seed{seed}", "bf16", seed, FULL[seed] - 0.005))
    runs.append(sst2_run(tmp_path, "week2-sweep-lr3e-3", "nf4", 0, 0.99, group="sweep", lr=3e-3))
    runs.append(sst2_run(tmp_path, "week2-sweep-constant", "nf4", 0, 0.80, group="sweep", schedule="constant_with_warmup"))
    return runs


def test_headline_summary_and_verdicts(tmp_path: Path) -> None:
    page = week2.page(_runs(tmp_path))
    summary = page.tables["summary"].set_index("system")
    assert list(summary["seeds"]) == [5, 5, 5], "the sweep's seed-0 runs are not seeds of the headline"
    assert summary.loc["QLoRA (NF4)", "dev accuracy (%)"] == pytest.approx(100 * (sum(FULL) - sum(QLORA_GAP)) / 5)
    assert page.text["nf4_seeds"] == "5" and page.text["full_verdict"] == "inconclusive"
    assert page.text["full_sentence"].startswith("full fine-tuning − QLoRA = +2.4 points (95 % CI")
    assert page.text["lora_verdict"] == "inconclusive"
    verdicts = page.tables["verdicts"]
    assert list(verdicts["paired seeds"]) == [5, 5] and (verdicts["CI width (points)"] > 0).all()


def test_sweep_table_and_schedule_values(tmp_path: Path) -> None:
    page = week2.page(_runs(tmp_path))
    sweep = page.tables["sweep"]
    assert set(sweep["run"]) == {"week2-sweep-lr3e-3", "week2-sweep-constant", "week2-qlora-seed0"}
    assert page.text["sweep_constant"] == "80.0" and page.text["sweep_cosine"] == "86.0"
    assert page.text["more_n"] == "n/a" and page.text["schedule"] == "cosine"
    assert len(page.tables["runs"]) == 17 and "dev accuracy (%)" in page.tables["runs"]


def test_no_runs_reads_not_available(tmp_path: Path) -> None:
    page = week2.page([])
    assert page.text["nf4_mean"] == "n/a" and page.text["full_verdict"] == "n/a"
    assert page.tables["summary"].empty
