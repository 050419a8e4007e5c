"""Week 2, the SST-2 baseline: the headline comparison of QLoRA, 16-bit LoRA and full fine-tuning at the plan's
configuration (judged by the protocol), the sweep around it, and every run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import figures, protocol
from ..analysis import MODE_NAMES, by_mode, experiments_frame
from ..report import history_frame, placeholder_chart
from ..runs import Run
from . import Page

NOTEBOOK = "week2_sst2_baseline"
SUMMARY_COLUMNS = {"system": "system", "seeds": "seeds", "mean": "dev accuracy (%)", "std": "std over seeds (points)",
                   "zero_shot": "zero-shot (%)", "trainable": "trainable parameters",
                   "trainable_pct": "trainable (%)", "peak_mib": "peak memory (MiB)", "tokens_per_s": "tokens/s",
                   "train_s": "training time (s)"}
SWEEP_COLUMNS = {"run": "run", "seed": "seed", "learning rate": "learning rate", "train examples": "training sentences",
                 "schedule": "schedule", "quality": "dev accuracy (%)", "selection": "selection-split accuracy (%)",
                 "predicted positive %": "predicted positive (%)", "train s": "training time (s)"}
VERDICT_COLUMNS = {"expectation": "expectation", "seeds": "paired seeds", "effect": "gap (points)",
                   "low": "95 % CI low", "high": "95 % CI high", "interval width": "CI width (points)",
                   "margin": "margin (points)", "verdict": "verdict", "seeds to settle": "seeds to settle"}
RUN_COLUMNS = {"run": "run", "mode": "mode", "seed": "seed", "quality": "dev accuracy (%)",
               "selection": "selection-split accuracy (%)", "zero-shot": "zero-shot (%)",
               "predicted positive %": "predicted positive (%)", "trainable %": "trainable (%)",
               "peak MiB": "peak memory (MiB)", "tokens/s": "tokens/s", "threads": "threads", "train s": "training time (s)",
               "commit": "commit"}


def headline_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The week 2 runs of the headline comparison: the plan's configuration, no sweep."""
    if frame.empty:
        return frame
    keep = pd.concat([protocol.primary_runs(frame, mode) for mode in ("nf4", "bf16", "full")])
    return keep[keep["notebook"] == NOTEBOOK]


def _short_commit(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(commit=frame["commit"].fillna("—").str[:10]) if "commit" in frame else frame


def page(runs: list[Run]) -> Page:
    """Everything the week 2 page shows, from every finished run of the profile (week 1's dev-set statistics too)."""
    out = Page("week2")
    week2 = [r for r in runs if Path(r.notebook).stem == NOTEBOOK]
    frame = experiments_frame(week2)
    main = headline_frame(frame)
    modes = by_mode(main)
    out.tables["summary"] = modes.drop(columns=["mode"]).rename(columns=SUMMARY_COLUMNS) if len(modes) else modes
    stats = modes.set_index("mode") if len(modes) else pd.DataFrame()
    for mode in ("nf4", "bf16", "full"):
        for column, fmt in (("mean", "{:.1f}"), ("std", "{:.1f}"), ("zero_shot", "{:.1f}"), ("seeds", "{:.0f}"),
                            ("trainable_pct", "{:.2f}"), ("peak_mib", "{:,.0f}"), ("tokens_per_s", "{:.0f}")):
            ok = mode in stats.index and pd.notna(stats.loc[mode, column])
            out.value(f"{mode}_{column}", stats.loc[mode, column] if ok else None, fmt)

    verdicts = protocol.verdict_table(main) if len(main) else pd.DataFrame()
    quality = verdicts[verdicts["expectation"].isin([r.expectation for r in protocol.RULES])] if len(verdicts) \
        else verdicts
    out.tables["verdicts"] = quality[[c for c in VERDICT_COLUMNS if c in quality]].rename(
        columns=VERDICT_COLUMNS) if len(quality) else quality
    for key, words in (("full", "QLoRA within 3 %"), ("lora", "QLoRA within 1.5")):
        row = protocol.verdict_for(verdicts, words) if len(verdicts) else None
        out.value(f"{key}_sentence", protocol.sentence(row) if row else None, "{}")
        out.value(f"{key}_verdict", row["verdict"] if row else None, "{}")
        out.value(f"{key}_margin", row.get("margin") if row else None, "{:.1f}")
    out.value("min_seeds", protocol.MIN_SEEDS, "{:d}")

    out.figures["accuracy"] = figures.accuracy_by_mode(main) if len(main) else \
        placeholder_chart("no SST-2 runs in this profile")
    curves = pd.concat([history_frame(r.history(), run=r.name, system=MODE_NAMES[r.metrics["model"]["mode"]])
                        for r in week2 if r.name in set(main["run"])]) if len(main) else pd.DataFrame()
    out.figures["loss"] = figures.training_loss(curves) if len(curves) else \
        placeholder_chart("no SST-2 runs in this profile")

    _dev_and_setting(out, runs, main)
    _sweep(out, frame, main)
    runs_table = frame[[c for c in RUN_COLUMNS if c in frame]] if len(frame) else frame
    out.tables["runs"] = _short_commit(runs_table).rename(columns=RUN_COLUMNS) if len(frame) else frame
    return out


def _dev_and_setting(out: Page, runs: list[Run], main: pd.DataFrame) -> None:
    """The dev set's positive share (from week 1) and the headline's training setting."""
    setup = [r for r in runs if Path(r.notebook).stem == "week1_setup"]
    dev = [d for d in (setup[-1].metrics.get("datasets", []) if setup else [])
           if d["task"] == "sst2" and d["split"] == "validation"]
    out.value("dev_positive", 100 * dev[0]["positive share"] if dev else None, "{:.0f}")
    qlora = main[main["mode"] == "nf4"] if len(main) else main
    first = qlora.iloc[0] if len(qlora) else None
    out.value("train_examples", first["train examples"] if first is not None else None, "{:,.0f}")
    out.value("lr", first["learning rate"] if first is not None else None, "{:g}")
    out.value("schedule", first["schedule"] if first is not None else None, "{}")
    run = next((r for r in runs if first is not None and r.name == first["run"]), None)
    out.value("steps", run.metrics["training"]["steps"] if run else None, "{:d}")
    checkpointing = run.metrics["training"].get("gradient_checkpointing", True) if run else True
    out.value("checkpointing", "with" if checkpointing else "without", "{}")


def _sweep(out: Page, frame: pd.DataFrame, main: pd.DataFrame) -> None:
    """The sweep (profile group "sweep") beside the headline QLoRA seed 0, and what it says about the schedule and
    about more data."""
    sweep = frame[(frame["group"] == "sweep") | frame["run"].isin(main.loc[(main["mode"] == "nf4")
                                                                           & (main["seed"] == 0), "run"])] \
        if len(frame) else frame
    sweep = sweep.sort_values(["train examples", "learning rate", "schedule", "seed"]) if len(sweep) else sweep
    out.tables["sweep"] = sweep[[c for c in SWEEP_COLUMNS if c in sweep]].rename(columns=SWEEP_COLUMNS) \
        if len(sweep) else sweep
    qlora = main[main["mode"] == "nf4"] if len(main) else main
    setting = qlora.iloc[0] if len(qlora) else None
    same = sweep[(sweep["learning rate"] == setting["learning rate"]) & (sweep["seed"] == 0)
                 & (sweep["train examples"] == setting["train examples"])] if setting is not None else sweep
    for schedule, key in (("constant_with_warmup", "constant"), ("cosine", "cosine")):
        row = same[same["schedule"] == schedule] if len(same) else same
        out.value(f"sweep_{key}", row["quality"].iloc[0] if len(row) else None)
        out.value(f"sweep_{key}_positive", row["predicted positive %"].iloc[0] if len(row) else None, "{:.0f}")
    more = sweep[(sweep["learning rate"] == setting["learning rate"]) & (sweep["schedule"] == setting["schedule"])
                 & (sweep["train examples"] > setting["train examples"])] if setting is not None else sweep
    more_n = more["train examples"].max() if len(more) else None
    more = more[more["train examples"] == more_n] if len(more) else more
    out.value("more_n", more_n, "{:,.0f}")
    out.value("more_seeds", len(more), "{:d}")
    out.value("more_mean", more["quality"].mean() if len(more) else None)
    out.value("more_std", more["quality"].std() if len(more) > 1 else None)
