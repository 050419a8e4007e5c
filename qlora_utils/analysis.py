"""Cross-experiment analysis: one table over every run of a profile, comparisons by mode, and the verdicts on the
plan's expectations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .efficiency import headline_peak_mib
from .runs import Run, read_runs

MODE_NAMES = {"nf4": "QLoRA (NF4)", "fp4": "QLoRA (FP4)", "bf16": "16-bit LoRA", "full": "full fine-tuning"}


def quality(record: dict[str, Any]) -> tuple[str | None, float | None]:
    """The headline quality metric of a record: SST-2 accuracy (%) or SQuAD F1."""
    tuned = record.get("fine_tuned") or {}
    if record.get("experiment") == "sst2":
        return "SST-2 accuracy %", 100 * tuned["accuracy"] if "accuracy" in tuned else None
    if record.get("experiment") == "squad":
        return "SQuAD F1", tuned.get("f1")
    return None, None


def experiments_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per training run (any notebook) with its task, configuration, quality and efficiency."""
    rows = []
    for run in runs:
        m = run.metrics
        if "training" not in m:
            continue
        metric, value = quality(m)
        lora = m.get("lora") or {}
        memory = m["training"].get("memory", {})
        rows.append({
            "run": run.name, "notebook": Path(run.notebook).stem, "experiment": m.get("experiment"),
            "model": m.get("model", {}).get("label"), "pretrained": m.get("model", {}).get("pretrained"),
            "mode": m.get("model", {}).get("mode"), "placement": lora.get("placement", "all weights"),
            "rank": lora.get("rank"), "seed": run.parameters.get("seed"),
            "learning rate": m["training"].get("settings", {}).get("learning_rate"),
            "train examples": m.get("data", {}).get("train", {}).get("records_used"),
            "metric": metric, "quality": value,
            "zero-shot": (100 * m["zero_shot"]["accuracy"] if m.get("experiment") == "sst2" else
                          m["zero_shot"].get("f1")) if m.get("zero_shot") else None,
            "trainable %": m.get("parameters", {}).get("percent"),
            "trainable": m.get("parameters", {}).get("trainable"),
            "peak MiB": headline_peak_mib(memory),
            "tokens/s": m["training"].get("tokens_per_second"), "train s": m["training"].get("seconds"),
            "wall s": run.status.get("wall_seconds"),
        })
    return pd.DataFrame(rows)


def profile_frame(runs_dir: str | Path) -> pd.DataFrame:
    """experiments_frame over every finished run of a profile directory."""
    return experiments_frame(read_runs(Path(runs_dir)))


def mode_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Quality, memory, throughput and trainable share per experiment, model and mode (means over seeds)."""
    if frame.empty:
        return frame
    keys = ["experiment", "model", "mode", "placement", "rank"]
    agg = frame.groupby(keys, dropna=False).agg(
        quality=("quality", "mean"), quality_std=("quality", "std"), seeds=("quality", "count"),
        peak_mib=("peak MiB", "mean"), tokens_per_s=("tokens/s", "mean"), trainable_pct=("trainable %", "mean"),
    ).reset_index()
    agg["mode name"] = agg["mode"].map(MODE_NAMES)
    return agg


def by_mode(frame: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuning mode: mean and std of quality over seeds, zero-shot, trainable share, memory, throughput."""
    if frame.empty:
        return pd.DataFrame()
    table = frame.groupby("mode").agg(
        seeds=("quality", "count"), mean=("quality", "mean"), std=("quality", "std"),
        zero_shot=("zero-shot", "max"), trainable=("trainable", "first"), trainable_pct=("trainable %", "first"),
        peak_mib=("peak MiB", "mean"), tokens_per_s=("tokens/s", "mean"), train_s=("train s", "mean"),
    ).reset_index()
    table.insert(0, "system", table["mode"].map(MODE_NAMES))
    order = {mode: i for i, mode in enumerate(MODE_NAMES)}
    return table.sort_values("mode", key=lambda s: s.map(order)).reset_index(drop=True)


def gap(reference: float, other: float) -> tuple[float, float]:
    """How far `other` falls below `reference`: in points and in percent of the reference."""
    return reference - other, 100 * (reference - other) / reference
