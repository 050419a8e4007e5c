"""The README's numbers come from the committed runs: its results table is `results_table` of the cpu profile,
and every other figure it states is checked against the value the book computes."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from qlora_utils.book.chapters import Page, week2, week8
from qlora_utils.core.design import MODE_NAMES
from qlora_utils.core.records import Run, profile_runs_dir, read_runs
from qlora_utils.study.analysis import NA, experiments_frame
from qlora_utils.study.headline import NOTEBOOK, gains, headline_frame

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def results_table(runs: list[Run], baseline: Page) -> pd.DataFrame:
    """The README's results table: the lead model's three modes in the design run so far (zero-shot, after
    fine-tuning, the gain with its 95 % interval, peak memory, the verdict against full fine-tuning), then the pilot
    of protocol v2, from the runs and their week 2 page (`baseline`). A test holds the README to it."""
    t = baseline.text
    frame = experiments_frame([r for r in runs if Path(r.notebook).stem == NOTEBOOK])
    main = headline_frame(frame) if len(frame) else frame
    found = gains(main[main["model"] == t["model"]]) if len(main) else {}
    rows = []
    for mode, name in MODE_NAMES.items():
        if name not in found:
            continue
        mean, low, high, seeds = found[name]
        verdict = {"nf4": "—", "bf16": f"{t['lora_verdict']}, {t['lora_significance']}",
                   "full": f"{t['full_verdict']}, {t['full_significance']}"}[mode]
        rows.append({"arm": f"{name}, {t['train_examples']} sentences × {seeds} seeds",
                     "zero-shot %": t[f"{mode}_zero_shot"], "tuned %": f"{t[f'{mode}_mean']} ± {t[f'{mode}_std']}",
                     "gain (95 % CI)": f"{mean:+.1f} ({low:+.1f} to {high:+.1f})",
                     "peak MiB": t[f"{mode}_peak_mib"], "QLoRA's gap to it": verdict})
    if t["pilot_size"] != NA:
        rows.append({"arm": f"pilot: QLoRA, {t['pilot_size']} items of {t['min_words']}+ words (selection split)",
                     "zero-shot %": t["pilot_zero"], "tuned %": t["pilot_tuned"],
                     "gain (95 % CI)": f"{t['pilot_gain']} (McNemar p = {t['pilot_p']})", "peak MiB": "—",
                     "QLoRA's gap to it": "—"})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """A table as GitHub Markdown, every cell as it is."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def runs() -> list:
    return read_runs(profile_runs_dir("cpu", REPO / "runs"))


def test_the_results_table_is_the_committed_runs(runs: list) -> None:
    assert markdown(results_table(runs, week2.page(runs))) in README


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
