"""The week 2 chapter on synthetic runs: the headline over five seeds per mode, judged by the protocol; the sweep kept
apart from the seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from chapter_fixtures import sst2_run
from qlora_utils.book.chapters import week2
from qlora_utils.study import headline

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
    assert list(verdicts["paired seeds"]) == [5, 5]
    assert verdicts["gap, 95 % CI over seeds (points)"].iloc[0].startswith("+2.4 (")
    assert list(verdicts["95 % CI over seeds and sentences"]) == ["n/a", "n/a"], "these runs kept no sentences"
    assert list(verdicts["gap vs 0"]) == ["not significant", "not significant"]


def test_sweep_table_and_schedule_values(tmp_path: Path) -> None:
    page = week2.page(_runs(tmp_path))
    sweep = page.tables["sweep"]
    assert set(sweep["run"]) == {"week2-sweep-lr3e-3", "week2-sweep-constant", "week2-qlora-seed0"}
    assert page.text["sweep_constant"] == "80.0" and page.text["sweep_cosine"] == "86.0"
    assert page.text["more_n"] == "n/a" and page.text["schedule"] == "cosine"
    assert page.text["schedule_result"] == ("For M-135M on seed 0, the constant schedule reached 80.0 % with "
                                            f"{page.text['sweep_constant_positive']} % of the dev sentences predicted "
                                            "positive, the cosine decay to zero 86.0 % with "
                                            f"{page.text['sweep_cosine_positive']} % positive (the dev set is "
                                            f"{page.text['dev_positive']} % positive).")
    assert page.text["more_result"] == "This profile ran no sweep with more training data, so it has no figures on it."
    assert "no rate for full fine-tuning (this profile swept none" in page.text["selection_sentence"]
    assert len(page.tables["runs"]) == 17 and "dev accuracy (%)" in page.tables["runs"]


def test_no_runs_reads_not_available(tmp_path: Path) -> None:
    page = week2.page([])
    assert page.text["nf4_mean"] == "n/a" and page.text["full_verdict"] == "n/a"
    assert page.text["schedule_result"] == "This profile ran no schedule sweep, so it has no figures on it."
    assert page.tables["summary"].empty


def test_two_models_the_larger_leads_and_each_has_its_own_verdicts(tmp_path: Path) -> None:
    runs = _runs(tmp_path)  # M-135M, total 200,000 parameters
    big = dict(label="Q-0.5B", total=600_000, examples=500, lr=3e-4)
    for seed in range(5):
        runs += [sst2_run(tmp_path, f"q-full-{seed}", "full", seed, 0.90, zero_shot=0.8, lr=1e-5,
                          **{k: v for k, v in big.items() if k != "lr"}),
                 sst2_run(tmp_path, f"q-qlora-{seed}", "nf4", seed, 0.899 - seed / 1000, zero_shot=0.79, **big),
                 sst2_run(tmp_path, f"q-lora16-{seed}", "bf16", seed, 0.90, **big)]
    runs.append(sst2_run(tmp_path, "q-sweep-lr1e-4", "nf4", 0, 0.95, group="sweep", selection=0.70,
                         **{**big, "lr": 1e-4}))
    runs.append(sst2_run(tmp_path, "q-sweep-lr3e-4", "nf4", 0, 0.85, group="sweep", selection=0.80, **big))
    page = week2.page(runs)
    assert page.text["model"] == "Q-0.5B" and page.text["second_model"] == "M-135M"
    assert page.text["nf4_mean"] == "89.7" and page.text["second_nf4_mean"] == "84.4"
    assert page.text["full_verdict"] == "supported" and page.text["second_full_verdict"] == "inconclusive"
    assert page.text["lr"] == "0.0003" and page.text["full_lr"] == "1e-05" and page.text["second_lr"] == "0.001"
    assert page.text["selected_lr"] == "0.0003", "chosen on the selection split (80 % > 70 %), not the dev set"
    assert page.text["selection_sentence"].startswith("For Q-0.5B the selection split picks 0.0003 for QLoRA")
    summary = page.tables["summary"]
    assert list(summary["model"]) == ["Q-0.5B"] * 3 + ["M-135M"] * 3
    assert set(page.tables["verdicts"]["model"]) == {"Q-0.5B", "M-135M"}
    assert page.text["sweep_model"] == "M-135M", "the schedule sweep is the second family's"
    assert set(page.tables["sweep"]["model"]) == {"Q-0.5B", "M-135M"}
    assert page.text["families"].startswith("The lead model is Q-0.5B, the largest pretrained model of this build; "
                                            "M-135M runs the same comparison")
    assert page.text["second_summary"].startswith("The second family, M-135M, scores")
    one = week2.page(_runs(tmp_path))  # one model: no second-family prose at all, rather than "n/a" in sentences
    assert one.text["families"] == "The model is M-135M." and one.text["second_summary"] == ""
    assert one.text["second_verdicts"] == "" and one.text["second_setting"] == ""


def test_gain_over_zero_shot_is_judged_on_both_sides_of_zero() -> None:
    import pandas as pd

    def rows(quality: list[float], zero: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"mode": "nf4", "quality": quality, "zero-shot": zero})

    worse = week2.gain_sentence(rows([50.0, 51.0, 52.0], [60.0] * 3))  # gains -10, -9, -8
    assert worse.startswith("QLoRA (NF4) -9.0 points (95 % CI") and "interval excludes zero for QLoRA (NF4)" in worse
    # zero-shot scores that differ between runs (other hosts): gains from the higher one, as `by_mode` shows it
    assert week2.gain_sentence(rows([80.0, 82.0], [70.0, 60.0])).startswith("QLoRA (NF4) +11.0 points")
    assert week2.gain_sentence(rows([80.0, 82.0], [float("nan")] * 2)) is None


def test_pilot_section_reads_the_size_the_seeds_and_the_rates_from_the_runs(tmp_path: Path) -> None:
    from chapter_fixtures import pilot_run

    from qlora_utils.study import protocol

    runs = [pilot_run(tmp_path, 1000, 0, 70, 72, min_words=0)]  # the first pilot, on every item
    runs += [pilot_run(tmp_path, 1000, s, 70, right) for s, right in enumerate([90, 92, 94])]
    runs += [pilot_run(tmp_path, 1000, 0, 70, right, group="lr", lr=lr) for lr, right in [(1e-4, 85), (3e-3, 86)]]
    runs += [pilot_run(tmp_path, 1000, 0, 70, right, group="lr", mode="full", lr=lr)
             for lr, right in [(3e-6, 80), (1e-5, 88), (2e-5, 84)]]
    page = week2.page(runs)
    t = page.text
    assert (t["pilot_size"], t["pilot_zero"], t["pilot_tuned"], t["pilot_gain"]) == ("1,000", "70.0", "90.0", "+20.0")
    assert t["pilot_first_gain"] == "2.0" and t["pilot_sd"] == "2.00" and t["pilot_paired_sd"] == "2.83"
    assert t["pilot_seeds"] == str(protocol.power_seeds(2 * 2 ** 0.5, 0.03 * 92))
    assert (t["lr_qlora"], t["lr_qlora_state"]) == ("0.001", "chosen")  # the pilot's own run at its rate
    assert (t["lr_full"], t["lr_full_state"]) == ("1e-05", "too few rates")  # 3e-6 to 2e-5: under ten-fold
    assert t["lr_lora16"] == "n/a"
    assert list(page.tables["pilot"]["McNemar p"])[1] == "2e-06"  # 20 of 20 discordant gained: 2 × 2⁻²⁰ = 1.9e-6
    assert len(page.tables["rates_table"]) == 6
    keys = list(page.text) + list(page.tables) + list(page.figures)
    assert len(keys) == len(set(keys)), "a text value and a table or figure under one key glue one name twice"


def test_the_bases_are_tested_zero_shot_sentence_by_sentence(tmp_path: Path) -> None:
    import json

    runs = _runs(tmp_path)
    labels = [1, 0] * 50
    for run, wrong in ((next(r for r in runs if r.name == "week2-qlora-seed0"), range(10)),
                       (next(r for r in runs if r.name == "week2-lora16-seed0"), range(4, 12))):
        run.path.mkdir(parents=True, exist_ok=True)
        rows = [{"label": y, "zero_shot": 1 - y if i in wrong else y, "fine_tuned": y} for i, y in enumerate(labels)]
        (run.path / "generations.json").write_text(json.dumps(rows))
    page = week2.page(runs)
    # bf16 wrong on 4-11, NF4 wrong on 0-9: NF4 lost 0-3 (4 sentences) and gained 10-11 (2): p = 2 × P(X ≤ 2 | 6)
    assert page.text["zero_shot_test"] == "McNemar p = 0.69 over the 100 dev sentences: not significant"
    assert "(McNemar p = 0.69 over the 100 dev sentences: not significant)" in page.text["zero_shot_precision"]


def test_training_moved_reads_each_modes_gain_interval(tmp_path: Path) -> None:
    import pandas as pd

    def rows(gains: dict[str, list[float]]) -> pd.DataFrame:
        return pd.DataFrame([{"mode": mode, "quality": 80.0 + g, "zero-shot": 80.0}
                             for mode, values in gains.items() for g in values])

    assert headline.training_moved(rows({"nf4": [5, 6, 7], "full": [4, 5, 6]})) == "moved"
    assert headline.training_moved(rows({"nf4": [-1, 1, 0], "full": [2, -2, 1]})) == "did not measurably move"
    assert headline.training_moved(rows({"nf4": [5, 6, 7], "full": [2, -2, 1]})) == "moved only under QLoRA (NF4)"
    assert headline.training_moved(rows({})) is None


def test_a_verdict_is_preregistered_only_when_its_rule_precedes_every_run(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_utils.study import pilot

    runs = _runs(tmp_path)
    monkeypatch.setattr(pilot, "introducing_commit", lambda text, path="": "rule")
    monkeypatch.setattr(pilot, "first_recorded", lambda run: "seen" if run.name == "week2-full-seed3" else "later")
    monkeypatch.setattr(pilot, "precedes", lambda rule, commit: commit != "seen")
    table = week2.page(runs).tables["verdicts"].set_index("expectation")
    assert table.loc["QLoRA within 3 % of full fine-tuning", "rule before the runs"] == "no: results seen first"
    assert table.loc["QLoRA within 1.5 points of 16-bit LoRA", "rule before the runs"] == "yes"
