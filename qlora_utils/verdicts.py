"""The plan's expectations, judged from the runs: each supported, not supported, or not testable, with evidence."""

from __future__ import annotations

from typing import Any

import pandas as pd

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable here"


def _pretrained(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["pretrained"].fillna(False).astype(bool)] if not frame.empty else frame


def qlora_vs_full(frame: pd.DataFrame, tolerance_pct: float = 3.0, min_seeds: int = 2) -> dict[str, Any]:
    """QLoRA's best configuration (mean over seeds; configurations run with fewer than min_seeds seeds, such as
    one-seed sweeps, or on another amount of training data than full fine-tuning are left out) against the best of
    full fine-tuning, per task and pretrained model."""
    rows = []
    data = _pretrained(frame)
    data = data.dropna(subset=["quality"]) if not data.empty else data  # tasks without a quality metric (Alpaca)
    if not data.empty:
        for (experiment, model), group in data.groupby(["experiment", "model"]):
            keys = ["mode", "placement", "rank", "learning rate", "train examples", "schedule"]
            full_sizes = set(group.loc[group["mode"] == "full", "train examples"])
            group = group[group["train examples"].isin(full_sizes)]  # same data as full fine-tuning: a fair gap
            stats = group.groupby(keys, dropna=False)["quality"].agg(["mean", "count"])
            repeated = stats[stats["count"] >= min(min_seeds, stats["count"].max())]  # single-seed sweeps excluded
            modes = repeated.index.get_level_values(0)
            if "nf4" not in modes or "full" not in modes:
                continue
            best_qlora, full = repeated.loc["nf4"]["mean"].max(), repeated.loc["full"]["mean"].max()
            seeds = int(repeated.loc["nf4"]["count"][repeated.loc["nf4"]["mean"].idxmax()])
            rows.append({"experiment": experiment, "model": model, "qlora": best_qlora, "full": full,
                         "gap %": 100 * (full - best_qlora) / full, "seeds": seeds})
    if not rows:
        return {"expectation": f"QLoRA within {tolerance_pct:g} % of full fine-tuning", "verdict": NOT_TESTABLE,
                "evidence": "no pretrained model was fine-tuned both with QLoRA and fully in this profile"}
    worst = max(rows, key=lambda r: r["gap %"])
    verdict = SUPPORTED if worst["gap %"] <= tolerance_pct else NOT_SUPPORTED
    evidence = "; ".join(f"{r['experiment']} {r['model']}: best QLoRA configuration {r['qlora']:.1f} (mean of "
                         f"{r['seeds']} seeds) vs full fine-tuning {r['full']:.1f} (gap {r['gap %']:+.1f} %)"
                         for r in rows)
    return {"expectation": f"QLoRA within {tolerance_pct:g} % of full fine-tuning", "verdict": verdict,
            "evidence": evidence}


def trainable_share(frame: pd.DataFrame, limit_pct: float = 1.0, rank: int = 8,
                    placement: str = "attention") -> dict[str, Any]:
    """The trainable share of QLoRA at the plan's configuration (r=8 on q, k, v), with the largest share of any
    QLoRA run as the caveat (small models with adapters on every linear layer can exceed the limit)."""
    expectation = f"under {limit_pct:g} % of parameters trainable"
    qlora = frame[frame["mode"] == "nf4"] if not frame.empty else frame
    if qlora.empty:
        return {"expectation": expectation, "verdict": NOT_TESTABLE, "evidence": "no QLoRA run in this profile"}
    plan = qlora[(qlora["rank"] == rank) & (qlora["placement"] == placement)]
    worst = qlora.loc[qlora["trainable %"].idxmax()]
    largest = (f"largest in the grid {worst['trainable %']:.2f} % ({worst['trainable']:,} parameters, "
               f"r={worst['rank']:.0f} on {worst['placement']}, {worst['model']})")
    if plan.empty:
        verdict = SUPPORTED if worst["trainable %"] < limit_pct else NOT_SUPPORTED
        return {"expectation": expectation, "verdict": verdict, "evidence": largest}
    share = plan["trainable %"].max()
    return {"expectation": expectation, "verdict": SUPPORTED if share < limit_pct else NOT_SUPPORTED,
            "evidence": f"plan's configuration (r={rank} on {placement}): {share:.2f} % "
                        f"({plan['trainable'].iloc[0]:,.0f} of the {plan['model'].iloc[0]} parameters); {largest}"}


def fits_24gb(frame: pd.DataFrame, validation: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An 8B model trained with QLoRA within 24 GB: measured on a GPU run when there is one, else predicted by the
    memory planner at the plan's settings (with how well the planner predicted this profile's measured runs)."""
    expectation = "an 8B model trains with QLoRA within a 24 GB GPU"
    big = frame[frame["model"].fillna("").str.contains("8B") & (frame["mode"] == "nf4")] if not frame.empty else frame
    if not big.empty:
        peak = big["peak MiB"].max()
        return {"expectation": expectation, "verdict": SUPPORTED if peak < 24 * 1024 else NOT_SUPPORTED,
                "evidence": f"measured peak {peak / 1024:.1f} GiB"}
    from .planner import gpu_verdicts

    row = gpu_verdicts(presets=("qwen3-8b",), modes=("nf4",))[0]
    checked = ""
    if validation:
        within = sum(abs(v["error %"]) <= 15 for v in validation)
        worst = max(abs(v["error %"]) for v in validation)
        checked = f"; the planner predicted {within} of {len(validation)} measured runs here within ±15 % " \
                  f"(largest error {worst:.0f} %)"
    return {"expectation": expectation, "verdict": SUPPORTED if row["fits"] else NOT_SUPPORTED,
            "evidence": f"predicted, not measured (no GPU here): Qwen3-8B QLoRA needs {row['predicted GiB']:.1f} GiB "
                        f"at the plan's settings, a margin of {row['margin GiB']:.1f} GiB{checked}"}


def expectation_verdicts(frame: pd.DataFrame, tolerance_pct: float = 3.0, limit_pct: float = 1.0,
                         validation: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per expectation of the plan."""
    return [qlora_vs_full(frame, tolerance_pct), trainable_share(frame, limit_pct), fits_24gb(frame, validation)]
