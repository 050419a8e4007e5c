"""The protocol's rules on synthetic run tables: intervals checked by hand, each verdict reached, sweeps never pooled
with seeds, ties broken by the stated rule."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qlora_utils.study import protocol
from qlora_utils.study.protocol import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED


def _row(mode: str, seed: int, quality: float, **extra: object) -> dict:
    lora = mode != "full"
    return {"run": f"{mode}-{seed}-{extra.get('group') or ''}{extra.get('rank', '')}", "experiment": "sst2",
            "model": "M", "mode": mode, "rank": 8 if lora else None, "alpha": 16 if lora else None,
            "placement": "attention" if lora else "all weights", "train examples": 1000, "learning rate": 1e-3,
            "schedule": "cosine", "group": None, "seed": seed, "quality": quality, "selection": None,
            "trainable %": 0.5 if lora else 100.0, "trainable": 1000 if lora else 200_000, "peak MiB": 1.0,
            "device": "cpu", **extra}


def _frame(full: list[float], qlora: list[float], extra: list[dict] | None = None) -> pd.DataFrame:
    rows = [_row("full", s, q) for s, q in enumerate(full)] + [_row("nf4", s, q) for s, q in enumerate(qlora)]
    return pd.DataFrame(rows + (extra or []))


def test_interval_matches_a_hand_computed_t_interval() -> None:
    mean, low, high = protocol.interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) × sd 1 / √3
    assert mean == 2.0 and low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert all(math.isnan(x) for x in protocol.interval([1.0])[1:])


@pytest.mark.parametrize("low,high,verdict", [(-1.0, 2.0, SUPPORTED), (3.5, 6.0, NOT_SUPPORTED),
                                              (1.0, 4.0, INCONCLUSIVE), (float("nan"), float("nan"), INCONCLUSIVE),
                                              # wholly below / above the margin is strict: touching it settles nothing
                                              (-1.0, 3.0, INCONCLUSIVE), (3.0, 5.0, INCONCLUSIVE)])
def test_decide(low: float, high: float, verdict: str) -> None:
    assert protocol.decide(low, high, 3.0) == verdict


def test_quality_verdicts_reach_each_outcome() -> None:
    rule = protocol.RULES[0]  # within 3 % of full fine-tuning
    full = [86.0, 87.0, 88.0, 86.0, 87.0]
    supported = protocol.quality_verdict(_frame(full, [f - 1 + 0.1 * i for i, f in enumerate(full)]), rule)[0]
    assert supported["verdict"] == SUPPORTED and supported["seeds"] == 5
    assert supported["margin"] == pytest.approx(0.03 * 86.8)
    assert protocol.PairedRule("x", "nf4", "bf16", 1.5, relative=False).margin_points(86.8) == 1.5, "points stay points"
    against = protocol.quality_verdict(_frame(full, [f - 6 - 0.1 * i for i, f in enumerate(full)]), rule)[0]
    assert against["verdict"] == NOT_SUPPORTED
    unsure = protocol.quality_verdict(_frame(full, [f - d for f, d in zip(full, [0, 5, 1, 4, 2])]), rule)[0]
    assert unsure["verdict"] == INCONCLUSIVE and unsure["seeds to settle"] and unsure["seeds to settle"] > 5
    assert unsure["effect"] == pytest.approx(2.4) and unsure["low"] < unsure["margin"] < unsure["high"]


def test_sweep_and_other_configurations_never_pool_with_the_plans_seeds() -> None:
    extra = [_row("nf4", 0, 99.0, group="sweep", **{"learning rate": 3e-3}), _row("nf4", 1, 10.0, rank=16)]
    row = protocol.quality_verdict(_frame([86.0, 87.0, 88.0], [85.0, 86.0, 87.0], extra), protocol.RULES[0])[0]
    assert row["seeds"] == 3 and row["treatment mean"] == pytest.approx(86.0)


def test_only_seeds_that_both_modes_ran_are_paired() -> None:
    row = protocol.quality_verdict(_frame([86.0, 87.0], [85.0, 86.0, 70.0]), protocol.RULES[0])[0]
    assert row["seeds"] == 2 and row["effect"] == pytest.approx(1.0)


def test_no_pairs_is_not_testable() -> None:
    assert protocol.quality_verdict(_frame([], [85.0]), protocol.RULES[0])[0]["verdict"] == NOT_TESTABLE


def test_trainable_share_at_the_plans_configuration() -> None:
    rows = protocol.trainable_verdict(_frame([86.0], [85.0]))
    assert rows[0]["verdict"] == SUPPORTED and rows[0]["effect"] == 0.5
    at_limit = _frame([86.0], [85.0]).assign(**{"trainable %": 1.0})
    assert protocol.trainable_verdict(at_limit)[0]["verdict"] == NOT_SUPPORTED, "the rule is below 1 %, not at it"


def test_seeds_to_settle_is_the_first_n_whose_half_width_is_below_the_distance() -> None:
    # sd 1, distance 1: n = 6 gives t(0.975, 5) / sqrt 6 = 2.5706 / 2.4495 = 1.049 (not below 1);
    # n = 7 gives t(0.975, 6) / sqrt 7 = 2.4469 / 2.6458 = 0.925
    assert protocol.seeds_to_settle(0.0, 1.0, 1.0) == 7
    assert protocol.seeds_to_settle(1.0, 1.0, 1.0) is None, "a mean on the margin is never settled"


def test_memory_on_a_gpu_is_judged_on_the_highest_peak() -> None:
    runs = pd.DataFrame([{"run": f"8b-{i}", "model": "Qwen3-8B", "mode": "nf4", "device": "cuda",
                          "peak MiB": gib * 1024} for i, gib in enumerate((12.0, 25.0))])
    row = protocol.memory_verdict(runs)
    assert row["effect"] == pytest.approx(25.0) and row["verdict"] == NOT_SUPPORTED


def test_memory_without_a_gpu_is_not_testable_and_shows_the_planners_band() -> None:
    validation = [{"mode": "nf4", "error %": -44.0}, {"mode": "nf4", "error %": 10.0}, {"mode": "full", "error %": 90.0}]
    row = protocol.memory_verdict(_frame([86.0], [85.0]), validation)
    assert row["verdict"] == NOT_TESTABLE
    assert row["low"] == pytest.approx(row["effect"] / 1.10) and row["high"] == pytest.approx(row["effect"] / 0.56)


def test_best_configuration_is_chosen_on_the_selection_split_with_ties_to_fewer_parameters() -> None:
    rows = [_row("nf4", s, 80.0 + s, rank=r, trainable=t, selection=90.0, **{"run": f"r{r}-{s}"})
            for r, t in ((16, 4000), (8, 1000)) for s in range(2)]
    rows += [_row("nf4", s, 99.0, rank=4, trainable=500, selection=85.0, **{"run": f"r4-{s}"}) for s in range(2)]
    best = protocol.best_configuration(pd.DataFrame(rows))
    assert best["rank"] == 8 and best["tied"] == 2, "tie on the selection split: fewer trainable parameters wins"
    assert best["dev"] == pytest.approx(80.5), "the dev score is reported, the best dev score (r=4) is not chosen"


def test_verdict_table_and_its_sentences() -> None:
    full = [86.0, 87.0, 88.0, 86.0, 87.0]
    table = protocol.verdict_table(_frame(full, [f - d for f, d in zip(full, [0, 5, 1, 4, 2])]))
    assert list(table["verdict"]) == [INCONCLUSIVE, NOT_TESTABLE, NOT_TESTABLE, NOT_TESTABLE, SUPPORTED, NOT_TESTABLE]
    assert list(table["task"])[:3] == ["sst2", "squad", "alpaca"], "the plan's 3 % names three tasks: a row each"
    assert table["comparison"].iloc[1] == ("SQuAD v1.1 F1: runs per mode in this build: QLoRA 0, 16-bit LoRA 0, "
                                           "full fine-tuning 0; the verdict needs QLoRA and full fine-tuning on the "
                                           "same seeds")
    row = protocol.verdict_for(table, "QLoRA within 3 %")
    text = protocol.sentence(row)
    assert text.startswith("full fine-tuning − QLoRA = +2.4 points (95 % CI") and "5 paired seeds" in text
    assert row["seeds to settle"] > 100 and "inconclusive" in text  # +2.4 against a margin of 2.6
    assert text.endswith("(the mean sits 0.2 points from the margin: more than 100 seeds would be needed at this "
                         "spread)"), "no advice to run hundreds of seeds"
    assert protocol.sentence({**row, "seeds to settle": 12}).endswith(
        "(about 12 seeds would settle it with 80 % power at this spread)")
    assert "inconclusive; the gap is not significant (its interval includes 0)" in text  # low −0.2
    assert protocol.sentence(protocol.verdict_for(table, "QLoRA within 1.5")).startswith("not testable here")


def test_one_off_runs_without_a_group_never_join_the_seeds() -> None:
    extra = [_row("nf4", 0, 99.0, **{"learning rate": 3e-3}), _row("nf4", 0, 50.0, schedule="constant")]
    row = protocol.quality_verdict(_frame([86.0, 87.0, 88.0], [85.0, 86.0, 87.0], extra), protocol.RULES[0])[0]
    assert row["seeds"] == 3 and row["effect"] == pytest.approx(1.0)


def test_runs_without_a_training_setting_do_not_break_the_primary_comparison() -> None:
    efficiency = [_row("full", 0, None, experiment="efficiency", **{"train examples": None, "learning rate": None,
                                                                     "schedule": None})]
    rows = protocol.primary_runs(_frame([86.0], [85.0], efficiency), "full")
    assert len(rows) == 2 and set(rows["experiment"]) == {"sst2", "efficiency"}


def test_the_8b_verdict_names_what_was_trained_and_both_peaks() -> None:
    checks = pd.DataFrame([{"run": "gpu-check plan-qwen3-8b-nf4", "model": "Qwen3-8B (random weights)", "mode": "nf4",
                            "device": "cuda", "gpu": "NVIDIA H200", "peak MiB": 12390.4, "load peak MiB": 16384.0,
                            "pretrained": False, "shape": "8 steps at batch 4 × 512 tokens"}])
    row = protocol.memory_verdict(pd.DataFrame(columns=["model", "mode", "device", "peak MiB"]), gpu_checks=checks)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(12.1)
    assert row["comparison"] == ("measured on a GPU (NVIDIA H200): Qwen3-8B (random weights), 8 steps at batch 4 × "
                                 "512 tokens with gradient checkpointing; training peak 12.1 GiB, loading peak 16.0 GiB")
