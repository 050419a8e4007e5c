"""The landing page on synthetic runs: the same numbers and verdicts as weeks 2 and 8, each verdict word said once."""

from __future__ import annotations

from pathlib import Path

from chapter_fixtures import sst2_run
from qlora_utils.book.chapters import intro, week2, week8


def test_intro_repeats_week2_and_names_each_verdict_once(tmp_path: Path) -> None:
    runs = []
    for seed in range(3):
        for mode, accuracy, zero in (("full", 0.87, 0.60), ("nf4", 0.84, 0.55), ("bf16", 0.85, 0.58)):
            runs.append(sst2_run(tmp_path, f"m-{mode}-{seed}", mode, seed, accuracy + seed / 100, zero_shot=zero))
            runs.append(sst2_run(tmp_path, f"q-{mode}-{seed}", mode, seed, accuracy + 0.05, zero_shot=zero + 0.2,
                                 label="Q-0.5B", total=600_000, preset="q"))
    page, baseline = intro.page(runs, "cpu", week2.page(runs), week8.page(runs)), week2.page(runs)
    text = page.text
    assert text["model"] == "Q-0.5B" and text["nf4_mean"] == baseline.text["nf4_mean"]
    assert (text["nf4_zero_shot"], text["bf16_zero_shot"]) == ("75.0", "78.0"), "both starting points are given"
    assert text["second"].startswith("It repeats the comparisons on M-135M as a second model family, which goes from "
                                     "55.0 % zero-shot in NF4 (58.0 % in 16 bits) to")
    verdict, evidence = text["verdict_full"], text["verdict_full_sentence"]
    assert verdict == baseline.text["full_verdict"] and verdict != "n/a"
    assert verdict not in evidence, f"the prose says '— {verdict} (evidence)': the evidence must not repeat it"
    assert evidence.startswith("full fine-tuning − QLoRA = +3.0 points")
    assert text["runs"] == str(len(runs)) and text["profile"] == "cpu"


def test_intro_hours_and_models(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, f"{label}-{mode}", mode, 0, 0.8, label=label)
            for label in ("M-135M", "Q-0.5B") for mode in ("nf4", "bf16", "full")]
    text = intro.page(runs, "cpu", week2.page(runs), week8.page(runs)).text
    assert text["hours"] == "0.09" and text["run_hours"] == "0.53"  # 6 runs side by side, 320 s each
    assert text["models"] == "M-135M, Q-0.5B"


def test_planned_runs_are_named_as_not_in_the_numbers(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, f"Q-0.5B-{mode}", mode, 0, 0.8, label="Q-0.5B") for mode in ("nf4", "bf16", "full")]
    planned = intro.planned_runs("cpu")
    text = intro.page(runs, "cpu", week2.page(runs), week8.page(runs)).text["completeness"]
    assert (f"{len(planned)} more are planned" in text) == bool(planned)
    assert "planned" not in intro.page(runs, "smoke", week2.page(runs), week8.page(runs)).text["completeness"]
