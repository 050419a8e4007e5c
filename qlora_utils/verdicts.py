"""The plan's expectations, judged from the runs: each supported, not supported, or not testable, with evidence."""

from __future__ import annotations

from typing import Any

import pandas as pd

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable here"


def _pretrained(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["pretrained"].fillna(False).astype(bool)] if not frame.empty else frame


def qlora_vs_full(frame: pd.DataFrame, tolerance_pct: float = 3.0) -> dict[str, Any]:
    """QLoRA's best configuration against full fine-tuning, per task and pretrained model (relative gap, %)."""
    rows = []
    data = _pretrained(frame)
    if not data.empty:
        for (experiment, model), group in data.groupby(["experiment", "model"]):
            means = group.groupby(["mode", "placement", "rank"], dropna=False)["quality"].mean()
            if "nf4" not in means.index.get_level_values(0) or "full" not in means.index.get_level_values(0):
                continue
            best_qlora, full = means.loc["nf4"].max(), means.loc["full"].max()
            rows.append({"experiment": experiment, "model": model, "qlora": best_qlora, "full": full,
                         "gap %": 100 * (full - best_qlora) / full})
    if not rows:
        return {"expectation": f"QLoRA within {tolerance_pct:g} % of full fine-tuning", "verdict": NOT_TESTABLE,
                "evidence": "no pretrained model was fine-tuned both with QLoRA and fully in this profile"}
    worst = max(rows, key=lambda r: r["gap %"])
    verdict = SUPPORTED if worst["gap %"] <= tolerance_pct else NOT_SUPPORTED
    evidence = "; ".join(f"{r['experiment']} {r['model']}: QLoRA {r['qlora']:.1f} vs full {r['full']:.1f} "
                         f"(gap {r['gap %']:+.1f} %)" for r in rows)
    return {"expectation": f"QLoRA within {tolerance_pct:g} % of full fine-tuning", "verdict": verdict,
            "evidence": evidence}


def trainable_share(frame: pd.DataFrame, limit_pct: float = 1.0) -> dict[str, Any]:
    """The largest trainable share of any QLoRA run."""
    expectation = f"under {limit_pct:g} % of parameters trainable"
    qlora = frame[frame["mode"] == "nf4"] if not frame.empty else frame
    if qlora.empty:
        return {"expectation": expectation, "verdict": NOT_TESTABLE, "evidence": "no QLoRA run in this profile"}
    worst = qlora.loc[qlora["trainable %"].idxmax()]
    verdict = SUPPORTED if worst["trainable %"] < limit_pct else NOT_SUPPORTED
    return {"expectation": expectation, "verdict": verdict,
            "evidence": f"largest: {worst['trainable %']:.3f} % ({worst['trainable']:,} parameters, {worst['model']}, "
                        f"r={worst['rank']}, {worst['placement']}) over {len(qlora)} QLoRA runs"}


def fits_24gb(frame: pd.DataFrame) -> dict[str, Any]:
    """An 8B model trained with QLoRA within 24 GB: measured on a GPU run when there is one."""
    expectation = "an 8B model trains with QLoRA within a 24 GB GPU"
    big = frame[frame["model"].fillna("").str.contains("8B") & (frame["mode"] == "nf4")] if not frame.empty else frame
    if big.empty:
        return {"expectation": expectation, "verdict": NOT_TESTABLE,
                "evidence": "no 8B QLoRA run in this profile (no GPU here)"}
    peak = big["peak MiB"].max()
    return {"expectation": expectation, "verdict": SUPPORTED if peak < 24 * 1024 else NOT_SUPPORTED,
            "evidence": f"measured peak {peak / 1024:.1f} GiB"}


def expectation_verdicts(frame: pd.DataFrame, tolerance_pct: float = 3.0,
                         limit_pct: float = 1.0) -> list[dict[str, Any]]:
    """One row per expectation of the plan."""
    return [qlora_vs_full(frame, tolerance_pct), trainable_share(frame, limit_pct), fits_24gb(frame)]
