"""The README's numbers come from the committed runs: its results table is `intro.results_table` of the cpu profile,
and every other figure it states is checked against the value the book computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qlora_utils.book.chapters import intro, week2, week8
from qlora_utils.core.records import profile_runs_dir, read_runs

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def runs() -> list:
    return read_runs(profile_runs_dir("cpu", REPO / "runs"))


def test_the_results_table_is_the_committed_runs(runs: list) -> None:
    assert intro.markdown(intro.results_table(runs, week2.page(runs))) in README


def test_every_other_figure_of_the_readme_is_computed(runs: list) -> None:
    t = week2.page(runs).text
    assert f"QLoRA trains {t['nf4_trainable_pct']} % of the parameters" in README
    assert f"at {t['pilot_size']} training items of {t['min_words']}+ words" in README
    assert f"{t['train_examples']} sentences, {t['steps']} steps" in README
    gpu = week8.page(runs).text["gpu_sentence"]
    peak = re.search(r"training peak ([\d.]+) GiB", gpu).group(1)
    assert f"QLoRA of Qwen3-8B's architecture peaked at {peak} GiB" in README


def test_the_readme_is_a_front_door() -> None:
    lines = README.splitlines()
    assert len(lines) <= 160, "details live in docs/operations.md"
    first_command = next(i for i, line in enumerate(lines) if line.startswith("make book"))
    assert first_command < 60, "the two commands come within the first screens"
