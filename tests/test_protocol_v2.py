"""Protocol v2 by hand: McNemar's exact p, the pilot's choice of size, equal learning-rate grids, seeds by power
(checked against a Monte Carlo of the interval rule), the two-level bootstrap and the weight of a diverged run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pandas as pd
from scipy import stats

from qlora_utils.study import protocol
from qlora_utils.study.protocol import NOT_SIGNIFICANT, SIGNIFICANT


@pytest.mark.parametrize("low,high,word", [(0.1, 2.0, SIGNIFICANT), (-3.0, -0.2, SIGNIFICANT),
                                           (-0.1, 2.0, NOT_SIGNIFICANT), (0.0, 2.0, NOT_SIGNIFICANT),
                                           (float("nan"), float("nan"), NOT_SIGNIFICANT)])
def test_significance_is_an_interval_that_excludes_zero(low: float, high: float, word: str) -> None:
    assert protocol.significance(low, high) == word


def test_mcnemar_counts_discordant_sentences_and_gives_the_exact_binomial_p() -> None:
    before = [True] * 10 + [False] * 10 + [True] * 2 + [False] * 8
    after = [True] * 10 + [False] * 10 + [False] * 2 + [True] * 8
    result = protocol.mcnemar(before, after)
    assert (result["gained"], result["lost"], result["n"]) == (8, 2, 30)
    # P(X <= 2) for X ~ Binomial(10, 1/2), doubled: (1 + 10 + 45) / 1024 × 2
    assert result["p"] == pytest.approx(2 * 56 / 1024)
    assert result["gain points"] == pytest.approx(100 * 6 / 30)
    assert protocol.mcnemar([True, False], [True, False])["p"] == 1.0  # nothing changed: no evidence
    with pytest.raises(ValueError, match="same sentences"):
        protocol.mcnemar([True], [True, False])


def _pilot(size: int, gain: float, p: float) -> dict:
    return {"train examples": size, "gain points": gain, "p": p}


def test_pilot_takes_the_smallest_size_that_clears_both_the_gain_and_the_test() -> None:
    rows = [_pilot(1000, 3.4, 0.02), _pilot(2000, 2.9, 0.001), _pilot(4000, 3.0, 0.009), _pilot(8000, 6.0, 1e-9)]
    assert protocol.pilot_choice(rows)["train examples"] == 4000  # 1000: p too high; 2000: gain too small
    assert protocol.pilot_choice([_pilot(1000, 2.99, 1e-6), _pilot(2000, 5.0, 0.01)]) is None  # p must be below


def test_learning_rate_grid_needs_three_rates_over_ten_times_and_an_interior_winner() -> None:
    chosen = protocol.lr_choice({1e-4: 80.0, 3e-4: 86.0, 1e-3: 84.0})
    assert chosen["rate"] == 3e-4 and chosen["complete"] and not chosen["at edge"]
    edge = protocol.lr_choice({1e-4: 80.0, 3e-4: 84.0, 1e-3: 86.0})
    assert edge["rate"] == 1e-3 and edge["at edge"] and not edge["complete"]
    narrow = protocol.lr_choice({1e-4: 80.0, 2e-4: 86.0, 5e-4: 84.0})
    assert narrow["span"] == pytest.approx(5.0) and not narrow["complete"]
    assert protocol.lr_choice({1e-4: 85.0, 3e-4: 85.0, 1e-3: 84.0})["rate"] == 1e-4  # a tie goes to the lower rate


def test_power_matches_a_monte_carlo_of_the_interval_rule() -> None:
    sd, margin = 2.0, 2.5
    n = protocol.seeds_for_power(margin, sd)
    rng = np.random.default_rng(0)

    def decided(seeds: int) -> float:
        draws = rng.normal(0.0, sd, size=(20_000, seeds))
        upper = draws.mean(1) + stats.t.ppf(0.975, seeds - 1) * draws.std(1, ddof=1) / math.sqrt(seeds)
        return float((upper < margin).mean())

    assert decided(n) >= 0.78 and decided(n - 1) < 0.80  # the fewest with 80 % power, within Monte Carlo error
    assert protocol.power_seeds(sd, margin) == max(6, n)
    assert protocol.power_seeds(0.5, 2.5) == 6  # never fewer than six
    assert protocol.seeds_for_power(0.0, 1.0) is None and protocol.seeds_for_power(1.0, float("nan")) is None


def test_seeds_to_settle_by_power_is_more_than_the_coin_flip_count_of_v1() -> None:
    mean, sd, margin = 1.0, 2.77, 2.6
    old = protocol.seeds_to_settle(mean, sd, margin)  # the interval would just clear the margin: ~50 % power
    new = protocol.seeds_to_settle_power(mean, sd, margin)
    assert new > old and protocol._power(new, 1.6, sd, 0.95) >= 0.8 > protocol._power(new - 1, 1.6, sd, 0.95)


def test_two_level_bootstrap_is_wider_than_the_seed_interval_when_sentences_vary() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random(872) < 0.85
    reference = np.tile(truth * 100.0, (6, 1))
    treatment = reference.copy()
    flip = rng.random((6, 872)) < 0.05  # each seed of the treatment gets 5 % of sentences wrong the other way
    treatment[flip] = 100.0 - treatment[flip]
    mean, low, high = protocol.two_level_bootstrap(treatment, reference)
    seed_mean, seed_low, seed_high = protocol.interval((reference - treatment).mean(1))
    assert mean == pytest.approx(seed_mean) and low < mean < high
    assert high - low > seed_high - seed_low
    assert protocol.two_level_bootstrap(treatment, reference) == (mean, low, high)  # fixed seed: same interval
    with pytest.raises(ValueError, match="seeds × items"):
        protocol.two_level_bootstrap(np.zeros(3), np.zeros(3))


def test_spread_weight_shows_the_sd_with_and_without_a_diverged_run() -> None:
    weight = protocol.spread_weight([82.0, 84.0, 83.0, 51.8], [False, False, False, True])
    assert weight["diverged"] == 1
    assert weight["sd without diverged"] == pytest.approx(1.0)
    assert weight["sd"] == pytest.approx(float(np.std([82.0, 84.0, 83.0, 51.8], ddof=1)))


def test_two_level_bootstrap_reduces_to_the_seed_t_interval_when_sentences_agree() -> None:
    per_seed = np.array([1.0, 3.0, 0.0, 2.0, 4.0, 2.5])
    reference, treatment = np.tile(per_seed[:, None], (1, 300)), np.zeros((6, 300))
    mean, low, high = protocol.two_level_bootstrap(treatment, reference)
    seed_mean, seed_low, seed_high = protocol.interval(per_seed)
    assert mean == pytest.approx(seed_mean)
    assert high - low == pytest.approx(seed_high - seed_low, rel=0.03), "t's tails kept, not a percentile's"
    assert math.isnan(protocol.two_level_bootstrap(np.zeros((1, 5)), np.ones((1, 5)))[1])  # one seed: no interval


def test_the_study_design_supersedes_the_first_and_all_linear_qlora_gets_its_own_verdicts() -> None:
    """Runs on items of SST2_MIN_WORDS+ words replace a model's first-design runs in the headline; QLoRA on every
    linear layer is judged against full fine-tuning by its own rule, and has no row where it never ran."""
    def row(mode: str, seed: int, quality: float, words: int, n: int, placement: str = "attention") -> dict:
        return {"run": f"{mode}-{placement}-{words}-{seed}", "experiment": "sst2", "model": "m", "mode": mode,
                "group": None, "rank": None if mode == "full" else 8, "alpha": None if mode == "full" else 16,
                "placement": "all weights" if mode == "full" else placement, "train examples": n,
                "learning rate": 1e-3, "schedule": "cosine", "seed": seed, "quality": quality, "min words": words,
                "trainable %": 0.5, "trainable": 100, "parameters": 20000, "peak MiB": 1000.0, "device": "cpu"}
    first = [row(m, s, 80.0, 0, 500) for m in ("nf4", "full") for s in range(8)]  # more seeds: still superseded
    study = [row("nf4", s, 88.0 - 0.1 * s, 9, 1000) for s in range(6)] + \
            [row("full", s, 88.5 + 0.1 * s, 9, 1000) for s in range(6)]
    frame = pd.DataFrame(first + study)
    assert set(protocol.primary_runs(frame, "nf4")["train examples"]) == {1000}
    table = protocol.verdict_table(frame)
    assert not table["expectation"].str.contains("every linear layer").any(), "no runs, no row"
    every = [row("nf4", s, 87.0, 9, 1000, "attention_mlp") for s in range(6)]
    table = protocol.verdict_table(pd.DataFrame(first + study + every))
    linear = table[table["expectation"] == "QLoRA on every linear layer within 3 % of full fine-tuning"].iloc[0]
    assert linear["seeds"] == 6 and linear["effect"] == pytest.approx(88.75 - 87.0)
    assert "every linear layer" in linear["comparison"]
    only_qlora = pd.DataFrame(first + study[:6])
    assert protocol.primary_runs(only_qlora, "full").empty, "a model's headline never mixes the two designs"


def test_a_study_verdict_before_its_planned_seeds_says_so() -> None:
    def row(mode: str, seed: int, quality: float) -> dict:
        return {"run": f"{mode}-{seed}", "experiment": "sst2", "model": "m", "mode": mode, "group": None,
                "rank": None if mode == "full" else 8, "alpha": None if mode == "full" else 16,
                "placement": "all weights" if mode == "full" else "attention", "train examples": 1000,
                "learning rate": 1e-3, "schedule": "cosine", "seed": seed, "quality": quality,
                "min words": protocol.SST2_MIN_WORDS, "trainable %": 0.5, "trainable": 100, "parameters": 20000,
                "peak MiB": 1000.0, "device": "cpu"}
    def verdict(seeds: int) -> str:
        rows = [row(m, s, 88.0 + 0.1 * ((s * 7) % 3) - (0.2 if m == "nf4" else 0)) for m in ("nf4", "full")
                for s in range(seeds)]
        return protocol.verdict_for(protocol.verdict_table(pd.DataFrame(rows)), "QLoRA within 3 %")["verdict"]
    assert verdict(4) == f"{protocol.SUPPORTED} so far (4 of {protocol.MIN_SEEDS_V2} planned seeds)"
    assert verdict(protocol.MIN_SEEDS_V2) == protocol.SUPPORTED
