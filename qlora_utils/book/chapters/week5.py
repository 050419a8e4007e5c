"""Week 5, the rank × placement ablation of QLoRA on SST-2, per model, with each model's week 2 QLoRA headline as
its r=8 attention cell; the best configuration is chosen on the selection split, never on the dev set that reports
it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, NamedTuple

import pandas as pd

from ...core.records import Run
from ...study import protocol
from ...study.analysis import divergence_step, experiments_frame, models_by_size, seed_summary
from .. import figures
from ..report import placeholder_chart
from . import NA, Page, join_words
from .week2 import FAMILIES, headline_frame

GRID_COLUMNS = {"model": "model", "placement": "adapters on", "rank": "rank r", "seeds": "seeds",
                "mean": "dev accuracy (%)", "std": "std (points)", "selection": "selection-split accuracy (%)", "trainable": "trainable parameters",
                "trainable_pct": "trainable (%)", "peak_mib": "peak memory (MiB)", "tokens_per_s": "tokens/s"}


def grid_frame(runs: list[Run]) -> pd.DataFrame:
    """The ablation's runs (QLoRA, outside any group) and week 2's QLoRA headline runs of the models the ablation
    ran on, one row per run."""
    frame = experiments_frame([r for r in runs if Path(r.notebook).stem in ("week5_ablations", "week2_sst2_baseline")])
    if frame.empty:
        return frame
    ablation = frame[(frame["notebook"] == "week5_ablations") & frame["group"].isna() & (frame["mode"] == "nf4")]
    headline = headline_frame(frame).query("mode == 'nf4'")
    return pd.concat([ablation, headline[headline["model"].isin(ablation["model"])]])


@dataclass
class Findings:
    """One model's ablation in numbers: the grid (one row per configuration: seeds, dev mean and spread, selection
    split, trainable parameters), what adapting the MLP too gains averaged over the ranks, how far the rank moves
    the mean within each placement, the mean seed-to-seed sd, and the configuration chosen on the selection split."""

    model: str
    grid: pd.DataFrame
    mlp_gain: float
    rank_spread: dict[str, float]
    rank_spread_kept: dict[str, float]  # the same without the diverged runs (protocol v2: their weight is shown)
    diverged: int
    seed_sd: float
    best: dict[str, Any] | None
    placement: Placement  # attention + MLP − attention, paired by seed

    @property
    def widest_rank_spread(self) -> float:
        return max(self.rank_spread.values(), default=float("nan"))

    def hosts_note(self) -> str:
        """Which cells ran on another host than most (their tokens/s compare with the others' only roughly)."""
        hosts = self.grid["hosts"]
        usual = hosts.mode().iloc[0] if len(hosts) else ""
        odd = self.grid[hosts != usual]
        if odd.empty:
            return ""
        cells = ", ".join(f"r = {r.rank:.0f} on {r.placement}" for r in odd.itertuples())
        return (f"For {self.model} the cell(s) {cells} ran on another host than the other {len(hosts) - len(odd)}, "
                "so their tokens/s compare with the rest only roughly, and their accuracies, and the seed pairs "
                "they enter, carry that host's rounding: another kind of CPU moves a run about as much as another "
                "seed would (the methods chapter; the appendix names the hosts).")

    def reading(self) -> str:
        """Which moved the mean more here, the placement or the rank (the means, described), and whether the
        placement's seed-paired interval excludes zero (`placement_effect`)."""
        gain, spread = self.mlp_gain, self.widest_rank_spread
        if pd.isna(gain) or pd.isna(spread):
            return "needs both placements and more than one rank"
        placement, rank = round(abs(gain), 1), round(spread, 1)  # compared as the prose shows them
        words = "more than" if placement > rank else "less than" if placement < rank else "as much as"
        kept = round(max(self.rank_spread_kept.values(), default=float("nan")), 1)
        if self.diverged and not pd.isna(kept) and kept != rank:
            other = "more than" if placement > kept else "less than" if placement < kept else "as much as"
            runs = "the diverged run" if self.diverged == 1 else f"the {self.diverged} diverged runs"
            spread_text = (f"{spread:.1f}, or {kept:.1f} without {runs}"
                           + (f", which would read '{other}'" if other != words else ""))
        else:
            spread_text = f"{spread:.1f}"
        mean, low, high, seeds, ranks = self.placement
        over = "r = " + ", ".join(map(str, ranks))
        if seeds < 2:
            settled = f"one seed pairs the placements, too few for an interval ({mean:+.1f} points, {over})"
        else:
            side = "helped" if low > 0 else "hurt" if high < 0 else None
            settled = (f"paired by seed over {over}, attention + MLP − attention = {mean:+.1f} points (95 % CI "
                       f"{low:+.1f} to {high:+.1f}, {seeds} seeds): " + (f"adapting every linear layer {side}" if side
                                                                        else "inconclusive, the interval holds zero"))
        return (f"the placement moved the mean {words} the rank did ({gain:+.1f} points against at most "
                f"{spread_text}, with a seed-to-seed sd of {self.seed_sd:.1f}); {settled}")


class Placement(NamedTuple):
    """Attention + MLP − attention, paired by seed: the mean over seeds, its 95 % t interval, the seeds and the
    ranks each seed's difference averages over."""

    mean: float
    low: float
    high: float
    seeds: int
    ranks: tuple[int, ...]


def placement_effect(frame: pd.DataFrame) -> Placement:
    """Attention + MLP − attention, paired by seed, every seed's difference over the same ranks (one estimand): the
    seeds are those that ran the most-run rank in both placements, the ranks those that every one of these seeds ran
    in both; per seed the mean difference over these ranks, then the mean over seeds with its 95 % t interval."""
    cells = frame.groupby(["placement", "rank", "seed"])["quality"].mean().unstack("placement")
    if not {"attention", "attention_mlp"} <= set(cells.columns):
        return Placement(float("nan"), float("nan"), float("nan"), 0, ())
    paired = (cells["attention_mlp"] - cells["attention"]).dropna()
    if paired.empty:
        return Placement(float("nan"), float("nan"), float("nan"), 0, ())
    by_rank = paired.reset_index().groupby("rank")["seed"].apply(frozenset)
    seeds = max(by_rank, key=len)  # the most seeds; among equals, the smallest rank's (sorted index)
    ranks = sorted(r for r, have in by_rank.items() if seeds <= have)
    per_seed = paired[paired.index.get_level_values("rank").isin(ranks)].groupby(level="seed").mean()
    return Placement(*protocol.interval(per_seed.to_list()), len(per_seed), tuple(int(r) for r in ranks))


def _rank_spread(frame: pd.DataFrame) -> dict[str, float]:
    """Per placement, the range of the mean accuracy over ranks."""
    means = frame.groupby(["placement", "rank"])["quality"].mean()
    return {place: float(m.max() - m.min()) for place, m in means.groupby(level="placement") if len(m) > 1}


def findings(frame: pd.DataFrame, diverged: Collection[str] = ()) -> Findings:
    """The ablation of the one model in `frame` (rows of grid_frame); `diverged`: runs whose training diverged, kept
    in every figure, whose weight on the rank spread is shown beside it."""
    keys = [k for k in protocol.CONFIG_KEYS if k in frame]
    grid = seed_summary(frame, keys).merge(
        frame.groupby(keys, dropna=False).agg(
            selection=("selection", "mean"), trainable=("trainable", "first"),
            hosts=("host", lambda h: " + ".join(sorted(set(h.dropna()))))).reset_index(), on=keys)
    by_place = grid.groupby("placement")["mean"]
    spread = {place: float(means.max() - means.min()) for place, means in by_place if len(means) > 1}  # ranks
    mean = by_place.mean()
    return Findings(model=str(frame["model"].iloc[0]), grid=grid,
                    mlp_gain=mean.get("attention_mlp", float("nan")) - mean.get("attention", float("nan")),
                    rank_spread=spread, rank_spread_kept=_rank_spread(frame[~frame["run"].isin(set(diverged))]),
                    diverged=int(frame["run"].isin(set(diverged)).sum()),
                    seed_sd=float(grid["std"].mean()), best=protocol.best_configuration(frame),
                    placement=placement_effect(frame))


def diverged_runs(runs: list[Run]) -> set[str]:
    """The runs whose training diverged (`analysis.divergence_step`)."""
    return {r.name for r in runs if divergence_step(r.history())}


def ablated_models(frame: pd.DataFrame, diverged: Collection[str] = ()) -> list[Findings]:
    """Every model of a grid_frame, largest first (the first leads the book, as in week 2)."""
    return [findings(frame[frame["model"] == model], diverged) for model in models_by_size(frame)] \
        if len(frame) else []


def divergence_note(runs: list[Run], frame: pd.DataFrame) -> str:
    """The grid's runs whose training diverged (`analysis.divergence_step`), with their dev accuracy; they stay in
    the means, as the protocol drops no run."""
    quality = dict(zip(frame["run"], frame["quality"])) if len(frame) else {}
    diverged = {r.name: step for r in runs if r.name in quality and (step := divergence_step(r.history()))}
    if not diverged:
        return ""
    config = frame[[k for k in protocol.CONFIG_KEYS if k in frame]].fillna("")

    def others(name: str) -> str:  # a reading of how much the one run moves its cell, not a rule
        mine = (frame["run"] == name).to_numpy()
        rest = frame.loc[(config == config[mine].iloc[0]).all(axis=1).to_numpy() & ~mine, "quality"]
        return f"; its cell's mean without it: {rest.mean():.1f} %" if len(rest) else ""

    named = ", ".join(f"{name} at step {step} ({quality[name]:.1f} % on the dev set{others(name)})"
                      for name, step in sorted(diverged.items()))
    return (f"Training diverged in {len(diverged)} of the grid's {len(quality)} runs (a training loss back above the "
            f"first step's, the loss before any update, after training had halved it): {named}. Every cell trains at "
            "its model's week 2 learning rate, chosen for adapters on attention only and not re-tuned per cell; such "
            "runs stay in the means and the intervals (no run is dropped after the fact).")


def combined_grid(families: list[Findings]) -> pd.DataFrame:
    """The grids of every ablated model in one table, the lead model first."""
    return pd.concat([f.grid for f in families], ignore_index=True) if families else pd.DataFrame()


TARGET_ACCURACY, TARGET_SEEDS = 87.0, 3  # the study's accuracy target: the best QLoRA configuration at 87 % or
# more on the dev set, as a mean of three seeds


def target_text(found: Findings) -> str:
    """One model's best configuration (chosen on the selection split) against the study's accuracy target."""
    best = found.best
    if not best:
        return f"{found.model}: no configuration chosen (no run scored the selection split)"
    dev, seeds = best["dev"], int(best["seeds"])
    if seeds < TARGET_SEEDS:
        side = "at or above" if dev >= TARGET_ACCURACY else "below"
        status = f"{side} the target on {seeds} seed{'s' * (seeds > 1)}, fewer than the {TARGET_SEEDS} it asks"
    else:
        status = "met" if dev >= TARGET_ACCURACY else "not met"
    over = f"mean of {seeds} seeds" if seeds > 1 else "one seed"
    return f"{found.model}: {best_text(best)} at {dev:.1f} % ({over}), {status}"


def best_text(best: dict[str, Any] | None) -> str:
    """The configuration the selection split chose, in words."""
    return f"r = {best['rank']:.0f} on {best['placement']}" if best else \
        "not available (no ablation run of this profile scored the selection split)"


def page(runs: list[Run]) -> Page:
    """Everything the week 5 page shows, from every finished run of the profile: the grid and figure over every
    ablated model, the prose's values for the lead model and for a second family."""
    out = Page("week5")
    frame = grid_frame(runs)
    families = ablated_models(frame, diverged_runs(runs))
    everything = experiments_frame(runs)
    for i, prefix in enumerate(FAMILIES):
        _family_values(out, prefix, families[i] if i < len(families) else None, everything)
    names = [f.model for f in families]
    out.value("models", join_words(names) or None, "{}")
    headline = headline_frame(everything) if len(everything) else everything
    missing = sorted(set(headline["model"]) - {f.model for f in families}) if len(headline) else []
    out.value("not_ablated", f"Not ablated in this profile: {', '.join(missing)} (week 2's models without ablation "
              "runs; the default profile's time budget goes to their seeds, scaling, SQuAD and instruction tuning "
              "instead)." if missing else "", "{}")
    t = out.text
    out.value("hosts", " ".join(filter(None, (f.hosts_note() for f in families))), "{}")
    out.value("target_accuracy", TARGET_ACCURACY, "{:.0f}")
    out.value("target", "; ".join(target_text(f) for f in families) or None, "{}")
    out.value("diverged", divergence_note(runs, frame), "{}")
    out.value("second_findings", f"For the second family, {t['second_model']}, {t['second_reading']}; the selection "
              f"split chose {t['second_best']} ({t['second_best_selection']} % there, {t['second_best_dev']} % on the "
              f"dev set, mean of {t['second_best_seeds']} seeds), and against full fine-tuning: "
              f"{t['second_secondary']}." if t["second_model"] != NA else "", "{}")
    grid = combined_grid(families)
    out.tables["grid"] = grid[[c for c in GRID_COLUMNS if c in grid]].rename(columns=GRID_COLUMNS) if len(grid) \
        else grid
    out.figures["rank"] = figures.rank_tradeoff(grid) if len(grid) else placeholder_chart("no ablation runs")
    return out


def _family_values(out: Page, prefix: str, found: Findings | None, everything: pd.DataFrame) -> None:
    """One model's ablation values for the prose, under `prefix` ("n/a" where the model did not run)."""
    best = found.best if found else None
    out.value(f"{prefix}model", found.model if found else None, "{}")
    out.value(f"{prefix}mlp_gain", found.mlp_gain if found else None, "{:+.1f}")
    for place, key in (("attention", "att"), ("attention_mlp", "mlp")):
        out.value(f"{prefix}rank_spread_{key}", found.rank_spread.get(place) if found else None)
    out.value(f"{prefix}seed_sd", found.seed_sd if found else None)
    out.value(f"{prefix}reading", found.reading() if found else None, "{}")
    out.value(f"{prefix}best", best_text(best), "{}")
    out.value(f"{prefix}best_selection", best["selection"] if best else None)
    out.value(f"{prefix}best_dev", best["dev"] if best else None)
    out.value(f"{prefix}best_seeds", best["seeds"] if best else None, "{:.0f}")
    out.value(f"{prefix}best_tied", best["tied"] if best else None, "{:d}")
    secondary = protocol.secondary_vs_full(everything, best) if best and len(everything) else None
    out.value(f"{prefix}secondary", protocol.sentence({**secondary, "expectation": protocol.RULES[0].expectation})
              if secondary else "not available", "{}")
