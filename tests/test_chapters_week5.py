"""The week 5 chapter on synthetic runs: the grid by full configuration, the best configuration chosen on the
selection split (not the dev set), ties to fewer parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from chapter_fixtures import sst2_run
from qlora_utils.chapters import week5


def _runs(tmp_path: Path) -> list:
    runs = []
    for seed in range(3):
        runs.append(sst2_run(tmp_path, f"week2-full-seed{seed}", "full", seed, 0.87))
        runs.append(sst2_run(tmp_path, f"week2-qlora-seed{seed}", "nf4", seed, 0.82, selection=0.80))
        runs.append(sst2_run(tmp_path, f"week5-r4-attention_mlp-seed{seed}", "nf4", seed, 0.90, rank=4,
                             placement="attention_mlp", notebook="week5_ablations", selection=0.70, trainable=1500))
        runs.append(sst2_run(tmp_path, f"week5-r16-attention_mlp-seed{seed}", "nf4", seed, 0.84 + 0.01 * seed,
                             rank=16, placement="attention_mlp", notebook="week5_ablations", selection=0.85,
                             trainable=6000))
        runs.append(sst2_run(tmp_path, f"week5-r8-attention_mlp-seed{seed}", "nf4", seed, 0.85 + 0.01 * seed,
                             placement="attention_mlp", notebook="week5_ablations", selection=0.85, trainable=3000))
    runs.append(sst2_run(tmp_path, "week2-sweep-lr3e-3", "nf4", 0, 0.99, group="sweep", lr=3e-3, selection=0.99))
    return runs


def test_grid_and_best_configuration(tmp_path: Path) -> None:
    page = week5.page(_runs(tmp_path))
    grid = page.tables["grid"]
    assert len(grid) == 4 and set(grid["seeds"]) == {3}, "the sweep never joins the grid"
    assert page.text["best"] == "r = 8 on attention_mlp", "tie on the selection split goes to fewer parameters"
    assert page.text["best_dev"] == "86.0" and page.text["best_tied"] == "2"
    assert page.text["secondary"].startswith("full fine-tuning − QLoRA = +1.0 points")
    assert page.text["mlp_gain"] == "+5.0"  # mean(r4 90, r8 86, r16 85) − r8 attention 82


def test_runs_without_a_selection_split_say_so(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, "week2-qlora-seed0", "nf4", 0, 0.82)]
    page = week5.page(runs)
    assert page.text["best"].startswith("not available") and page.text["best_dev"] == "n/a"


def test_a_week2_model_without_ablation_runs_is_named(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    assert week5.page(runs).text["not_ablated"] == ""
    runs.append(sst2_run(tmp_path, "week2-qwen-qlora-seed0", "nf4", 0, 0.83, label="Q-500M", preset="q",
                         total=500_000))
    page = week5.page(runs)
    assert page.text["not_ablated"].startswith("Not ablated in this profile: Q-500M (")
    assert page.text["model"] == "M-135M" and len(page.tables["grid"]) == 4
