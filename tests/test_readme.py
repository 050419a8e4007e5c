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
from qlora_utils.study.protocol import SST2_MIN_WORDS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def results_table(runs: list[Run], baseline: Page) -> pd.DataFrame:
    """The README's results table: the lead model's modes in the first design, then the pilot of protocol v2, then
    the study so far (zero-shot, after fine-tuning, the gain with its 95 % interval, peak memory and, for the design
    the verdicts judge, QLoRA's verdict against the mode), from the runs and their week 2 page (`baseline`)."""
    t = baseline.text
    frame = experiments_frame([r for r in runs if Path(r.notebook).stem == NOTEBOOK])
    if frame.empty:
        return pd.DataFrame()
    lead = frame[frame["model"] == t["model"]]
    first = headline_frame(lead[lead["min words"] == 0])
    study = headline_frame(lead)
    study = study[study["min words"] == SST2_MIN_WORDS]
    verdicts = {"nf4": "—", "bf16": f"{t['lora_verdict']}, {t['lora_significance']}",
                "full": f"{t['full_verdict']}, {t['full_significance']}"}
    rows = _design_rows(first, "first design", "sentences", {} if len(study) else verdicts)
    if t["pilot_size"] != NA:
        rows.append({"arm": f"pilot: QLoRA, {t['pilot_size']} items of {t['min_words']}+ words (selection split)",
                     "zero-shot %": t["pilot_zero"], "tuned %": t["pilot_tuned"],
                     "gain (95 % CI)": f"{t['pilot_gain']} (McNemar p = {t['pilot_p']})", "peak MiB": "—",
                     "QLoRA's gap to it": "—"})
    rows += _design_rows(study, "study", f"items of {SST2_MIN_WORDS}+ words", verdicts)
    return pd.DataFrame(rows)


def _design_rows(rows: pd.DataFrame, design: str, items: str, verdicts: dict[str, str]) -> list[dict]:
    """One row per mode of one design: zero-shot, mean ± sd after fine-tuning, the gain over zero-shot with its
    interval (one seed: none), mean peak memory and the verdict where this design is the one judged."""
    found = gains(rows) if len(rows) else {}
    out = []
    for mode, name in MODE_NAMES.items():
        if name not in found:
            continue
        mine = rows[rows["mode"] == mode]
        mean, low, high, seeds = found[name]
        tuned = f"{mine['quality'].mean():.1f}" + (f" ± {mine['quality'].std():.1f}" if seeds > 1 else "")
        out.append({"arm": f"{design}: {name}, {int(mine['train examples'].iloc[0]):,} {items} × {seeds} "
                           f"seed{'s' * (seeds > 1)}",
                    "zero-shot %": f"{mine['zero-shot'].max():.1f}", "tuned %": tuned,
                    "gain (95 % CI)": f"{mean:+.1f} ({low:+.1f} to {high:+.1f})" if seeds > 1 else
                    f"{mean:+.1f} (one seed)",
                    "peak MiB": f"{mine['peak MiB'].mean():,.0f}", "QLoRA's gap to it": verdicts.get(mode, "—")})
    return out


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
    assert f"{t['first_train_examples']} sentences, {t['first_steps']} steps" in README
    gpu = week8.page(runs).text["gpu_sentence"]
    peak = re.search(r"training peak ([\d.]+) GiB", gpu).group(1)
    assert f"QLoRA of Qwen3-8B's architecture peaked at {peak} GiB" in README


def test_the_readme_is_a_front_door() -> None:
    lines = README.splitlines()
    assert len(lines) <= 160, "details live in docs/operations.md"
    first_command = next(i for i, line in enumerate(lines) if line.startswith("make book"))
    assert first_command < 60, "the two commands come within the first screens"
