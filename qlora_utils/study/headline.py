"""Week 2's headline comparison, which several pages repeat: its runs (QLoRA, 16-bit LoRA and full fine-tuning at the
plan's configuration), its models, largest first, and what fine-tuning added in each mode."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.design import MODE_NAMES
from ..core.records import Run
from . import protocol
from .analysis import experiments_frame, join_words, models_by_size


NOTEBOOK = "week2_sst2_baseline"

def headline_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The week 2 runs of the headline comparison: the plan's configuration, no sweep."""
    if frame.empty:
        return frame
    keep = pd.concat([protocol.primary_runs(frame, mode) for mode in ("nf4", "bf16", "full")])
    return keep[keep["notebook"] == NOTEBOOK]


def study_models(runs: list[Run]) -> list[str]:
    """The models of the week 2 headline, largest first: the first leads the book, the second is the second family."""
    return models_by_size(headline_frame(experiments_frame([r for r in runs if Path(r.notebook).stem == NOTEBOOK])))


FAMILIES = ("", "second_")  # text values of the lead model (largest first), then of the second family

def gains(rows: pd.DataFrame) -> dict[str, tuple[float, float, float, int]]:
    """Per mode: each seed's dev accuracy minus the zero-shot accuracy of the same base in the same precision, as
    (mean, low, high, seeds) with the 95 % t interval over the seeds."""
    found: dict[str, tuple[float, float, float, int]] = {}
    for mode, name in MODE_NAMES.items() if len(rows) else ():
        mine = rows[rows["mode"] == mode]
        start = mine["zero-shot"].dropna() if "zero-shot" in mine else pd.Series(dtype=float)
        if mine.empty or start.empty:
            continue
        found[name] = (*protocol.interval((mine["quality"] - start.max()).to_list()), len(mine))
    return found


def training_moved(rows: pd.DataFrame) -> str | None:
    """Whether fine-tuning moved dev accuracy, in a few words: "moved" when every mode's gain interval lies above 0,
    "did not measurably move" when none does, else which modes it moved."""
    found = {name: g for name, g in gains(rows).items() if g[3] > 1}  # one seed gives no interval
    if not found:
        return "has too few seeds so far to say whether it moved" if len(gains(rows)) else None
    up = [name for name, (_, low, _, _) in found.items() if pd.notna(low) and low > 0]
    if len(up) == len(found):
        return "moved"
    return "did not measurably move" if not up else f"moved only under {join_words(up)}"
