"""The pilot and learning-rate tables from synthetic run folders: McNemar from the stored per-sentence predictions,
the study's size by the protocol, seeds by power, the rates per arm and the grid's estimate by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from chapter_fixtures import pilot_run as _pilot_run
from qlora_utils.study import pilot, protocol

def test_pilot_rows_test_each_size_against_its_own_zero_shot_sentences(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, 0, 80, 82), _pilot_run(tmp_path, 2000, 0, 80, 92)]
    rows = pilot.pilot_rows(runs)
    first, second = rows.iloc[0], rows.iloc[1]
    assert (first["gained"], first["lost"], first["gain points"]) == (2, 0, pytest.approx(2.0))
    assert first["p"] == pytest.approx(0.5)  # 2 of 2 discordant one way: 2 × (1/2)²
    assert second["gain points"] == pytest.approx(12.0) and second["p"] == pytest.approx(2 / 2 ** 12)
    assert (second["zero-shot %"], second["fine-tuned %"], second["host"]) == (80.0, 92.0, "Xeon, AMX")
    result = pilot.pilot_result(rows)
    assert result["size"] == 2000 and result["seeds"] is None and "3 seeds" in result["reason"]


def test_pilot_power_uses_the_spread_over_three_seeds_at_the_chosen_size(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, s, 80, right) for s, right in enumerate([90, 92, 94])]
    result = pilot.pilot_result(pilot.pilot_rows(runs))
    assert result["sd"] == pytest.approx(2.0) and result["paired sd"] == pytest.approx(2 * math.sqrt(2))
    assert result["margin"] == pytest.approx(0.03 * 92)
    assert result["seeds"] == protocol.power_seeds(2 * math.sqrt(2), 0.03 * 92)


def test_the_study_size_comes_from_the_amended_items_only(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, 0, 80, 95, min_words=0), _pilot_run(tmp_path, 1000, 0, 80, 81),
            _pilot_run(tmp_path, 2000, 0, 80, 95)]
    assert pilot.pilot_result(pilot.pilot_rows(runs))["size"] == 2000  # the every-item run does not count
    assert pilot.pilot_result(pilot.pilot_rows(runs), min_words=0)["size"] == 1000


def test_no_size_passes_and_the_report_plans_no_grid(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, 0, 80, 82), _pilot_run(tmp_path, 2000, 0, 80, 81)]
    assert pilot.pilot_result(pilot.pilot_rows(runs))["size"] is None
    assert "No grid is planned" in pilot.report(runs)


def test_rates_per_arm_and_an_edge_winner(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, 0, 80, right, group="lr", lr=lr)
            for lr, right in [(1e-4, 85), (3e-4, 90), (1e-3, 88)]]
    runs += [_pilot_run(tmp_path, 1000, 0, 80, right, group="lr", mode="full", lr=lr)
             for lr, right in [(1e-6, 80), (3e-6, 84), (1e-5, 89)]]
    choices = pilot.lr_choices(pilot.lr_rows(runs))
    assert choices["QLoRA q,k,v"]["rate"] == 3e-4 and choices["QLoRA q,k,v"]["complete"]
    assert choices["full fine-tuning"]["rate"] == 1e-5 and choices["full fine-tuning"]["at edge"]


def test_estimate_scales_the_pilot_by_arm_and_host_kind_by_hand() -> None:
    here = pd.DataFrame([{"train examples": 1000, "seed": 0, "train s": 200.0, "wall s": 300.0, "tokens/s": 200.0,
                          "threads": 1, "host": "EPYC, AVX-512 BF16"}])
    reference = pd.DataFrame([
        {"arm": "QLoRA q,k,v", "wall s": 400.0, "tokens/s": 100.0, "threads": 1, "host": "Xeon, AMX"},
        {"arm": "16-bit LoRA q,k,v", "wall s": 200.0, "tokens/s": 150.0, "threads": 1, "host": "Xeon, AMX"},
        {"arm": "full fine-tuning", "wall s": 800.0, "tokens/s": 50.0, "threads": 2, "host": "Xeon, AMX"}])
    table = pilot.estimate(here, reference, 1000, seeds=6).set_index("host")
    per_run = 200 + 100 * 1372 / 1000  # training + scoring rescaled to selection and dev
    assert table.loc["EPYC, AVX-512 BF16", "QLoRA q,k,v h"] == pytest.approx(per_run * 6 / 3600)
    assert table.loc["Xeon, AMX", "16-bit LoRA q,k,v h"] == pytest.approx(per_run * 0.5 * 2 * 6 / 3600)
    assert table.loc["Xeon, AMX", "full fine-tuning h"] == pytest.approx(per_run * 2 * 2 * 6 / 3600)
    assert math.isnan(table.loc["Xeon, AMX", "QLoRA all linear h"])  # no committed run of that arm: no guess
    elapsed = (table.loc["Xeon, AMX", "QLoRA q,k,v h"] + table.loc["Xeon, AMX", "16-bit LoRA q,k,v h"]) / 2 \
        + table.loc["Xeon, AMX", "full fine-tuning h"]
    assert table.loc["Xeon, AMX", "elapsed h, --jobs 2"] == pytest.approx(elapsed)


def test_the_pilot_run_at_the_study_size_is_the_qlora_grids_point_at_its_rate(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, 0, 80, 88)]
    runs += [_pilot_run(tmp_path, 1000, 0, 80, right, group="lr", lr=lr) for lr, right in [(1e-4, 85), (3e-3, 86)]]
    rows = pilot.lr_rows(runs, 1000)
    assert list(rows["learning rate"]) == [1e-4, 1e-3, 3e-3] and list(rows["fine-tuned %"]) == [85.0, 88.0, 86.0]
    assert pilot.lr_choices(rows)["QLoRA q,k,v"]["rate"] == 1e-3
    assert len(pilot.lr_rows(runs)) == 2  # without the size, the grid's own runs only


def test_the_report_prints_the_size_the_seeds_the_rates_and_the_estimate(tmp_path: Path) -> None:
    runs = [_pilot_run(tmp_path, 1000, s, 70, right) for s, right in enumerate([90, 92, 94])]
    text = pilot.report(runs)
    assert "Study size: 1,000 training sentences (gain +20.0 points" in text
    assert f"seeds per arm by power: {protocol.power_seeds(2 * math.sqrt(2), 0.03 * 92)}" in text
    assert "QLoRA q,k,v: 0.001 (90.0 %; 1 rate over 1×; at the edge: extend)" in text
    assert "no rate tried yet" in text  # the other arms
    assert "Estimated machine time" in text and "AVX-512 BF16" not in text  # the synthetic host is an AMX Xeon
