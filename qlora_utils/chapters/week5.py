"""Week 5, the rank × placement ablation of QLoRA on SST-2, with the week 2 QLoRA headline as the r=8 attention
cell; the best configuration is chosen on the selection split, never on the dev set that reports it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import figures, protocol
from ..analysis import experiments_frame, seed_summary
from ..report import placeholder_chart
from ..runs import Run
from . import Page
from .week2 import headline_frame

GRID_COLUMNS = {"model": "model", "placement": "adapters on", "rank": "rank r", "seeds": "seeds", "mean": "dev accuracy (%)",
                "std": "std (points)", "selection": "selection-split accuracy (%)", "trainable": "trainable parameters",
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


def page(runs: list[Run]) -> Page:
    """Everything the week 5 page shows, from every finished run of the profile."""
    out = Page("week5")
    frame = grid_frame(runs)
    keys = [k for k in protocol.CONFIG_KEYS if k in frame]
    grid = seed_summary(frame, keys) if len(frame) else frame
    if len(grid):
        grid = grid.merge(frame.groupby(keys, dropna=False).agg(selection=("selection", "mean"),
                                                                trainable=("trainable", "first")).reset_index(),
                          on=keys)
    out.value("model", ", ".join(sorted(set(frame["model"]))) if len(frame) else None, "{}")
    everything = experiments_frame(runs)
    headline = headline_frame(everything) if len(everything) else everything
    missing = sorted(set(headline["model"]) - set(frame["model"])) if len(headline) else []
    out.value("not_ablated", f"Not ablated in this profile: {', '.join(missing)} (week 2's models without ablation "
              "runs; the default profile's time budget goes to their seeds, scaling, SQuAD and instruction tuning "
              "instead)." if missing else "", "{}")
    out.tables["grid"] = grid[[c for c in GRID_COLUMNS if c in grid]].rename(columns=GRID_COLUMNS) if len(grid) \
        else grid
    out.figures["rank"] = figures.rank_tradeoff(grid) if len(grid) else placeholder_chart("no ablation runs")
    by_place = grid.groupby("placement")["mean"].mean() if len(grid) else pd.Series(dtype=float)
    spread = grid.groupby("placement")["mean"].agg(lambda a: a.max() - a.min()) if len(grid) else pd.Series(dtype=float)
    out.value("mlp_gain", by_place.get("attention_mlp", float("nan")) - by_place.get("attention", float("nan")),
              "{:+.1f}")
    out.value("rank_spread_att", spread.get("attention"))
    out.value("rank_spread_mlp", spread.get("attention_mlp"))
    out.value("seed_sd", grid["std"].mean() if len(grid) else None)

    best = protocol.best_configuration(frame)
    out.value("best", f"r = {best['rank']:.0f} on {best['placement']}" if best else
              "not available (no run of this profile scored the selection split)", "{}")
    out.value("best_selection", best["selection"] if best else None)
    out.value("best_dev", best["dev"] if best else None)
    out.value("best_seeds", best["seeds"] if best else None, "{:.0f}")
    out.value("best_tied", best["tied"] if best else None, "{:d}")
    secondary = protocol.secondary_vs_full(everything, best) if len(everything) else None
    out.value("secondary", protocol.sentence({**secondary, "expectation": protocol.RULES[0].expectation})
              if secondary else "not available", "{}")
    return out
