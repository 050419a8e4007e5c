"""Week 5's rank × placement ablation of QLoRA in numbers, per model, which the week 7 analysis reads too: the grid of
configurations (with each model's week 2 QLoRA headline as its r=8 attention cell), the placement's seed-paired
effect, the rank's spread, diverged runs, and the configuration the selection split chose."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, NamedTuple

import pandas as pd

from ..core.records import Run
from . import protocol
from .analysis import divergence_step, experiments_frame, models_by_size, seed_summary
from .headline import headline_frame


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


def combined_grid(families: list[Findings]) -> pd.DataFrame:
    """The grids of every ablated model in one table, the lead model first."""
    return pd.concat([f.grid for f in families], ignore_index=True) if families else pd.DataFrame()


def best_text(best: dict[str, Any] | None) -> str:
    """The configuration the selection split chose, in words."""
    return f"r = {best['rank']:.0f} on {best['placement']}" if best else \
        "not available (no ablation run of this profile scored the selection split)"
