"""The cross-experiment figures of the analysis and report chapters (Altair charts over tables from `analysis`)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .analysis import MODE_NAMES

MODE_ORDER = list(MODE_NAMES.values())


def rank_tradeoff(summary: pd.DataFrame, metric: str = "SST-2 dev accuracy (%)") -> alt.TopLevelMixin:
    """Accuracy against LoRA rank per placement: the mean over seeds, with a bar from the lowest to the highest seed."""
    base = alt.Chart(summary).encode(
        x=alt.X("rank:O", title="LoRA rank r"), color=alt.Color("placement:N", title="adapters on"))
    line = base.mark_line(point=alt.OverlayMarkDef(size=60, filled=True)).encode(
        y=alt.Y("mean:Q", title=metric, scale=alt.Scale(zero=False)),
        tooltip=["placement", "rank", "seeds", alt.Tooltip("mean:Q", format=".1f"), alt.Tooltip("std:Q", format=".1f")])
    spread = base.mark_rule(strokeWidth=2, opacity=0.5).encode(y="low:Q", y2="high:Q")
    return (spread + line).properties(width=360, height=240)


def quality_memory(comparison: pd.DataFrame) -> alt.TopLevelMixin:
    """Quality against peak training memory, by fine-tuning mode (colour) and task (shape)."""
    return alt.Chart(comparison).mark_point(filled=True, size=90).encode(
        x=alt.X("peak_mib:Q", title="peak training memory above the pre-load process (MiB)"),
        y=alt.Y("quality:Q", title="quality (SST-2 accuracy % or SQuAD F1)", scale=alt.Scale(zero=False)),
        color=alt.Color("mode name:N", title="mode", sort=MODE_ORDER), shape=alt.Shape("experiment:N", title="task"),
        tooltip=["experiment", "model", "mode name", "placement", "rank", "seeds",
                 alt.Tooltip("quality:Q", format=".1f"), alt.Tooltip("peak_mib:Q", format=",.0f")],
    ).properties(width=420, height=260)


def loss_curves(curves: pd.DataFrame) -> alt.TopLevelMixin:
    """Training and evaluation loss per step, one colour per fine-tuning mode, on shared axes."""
    return alt.Chart(curves).mark_line(opacity=0.85).encode(
        x=alt.X("step:Q", title="optimizer step"), y=alt.Y("loss:Q", title="cross-entropy loss (answer tokens)"),
        color=alt.Color("system:N", title="mode", sort=MODE_ORDER), strokeDash=alt.StrokeDash("kind:N", title="loss"),
        detail="run:N",
    ).properties(width=420, height=240)


def throughput(frame: pd.DataFrame, label: str = "system") -> alt.TopLevelMixin:
    """Training tokens per second per fine-tuning mode: one point per run, a bar at the mean."""
    base = alt.Chart(frame).encode(y=alt.Y(f"{label}:N", title=None, sort=MODE_ORDER))
    bars = base.mark_bar(opacity=0.35).encode(x=alt.X("mean(tokens/s):Q", title="training tokens per second"),
                                              color=alt.Color(f"{label}:N", legend=None, sort=MODE_ORDER))
    points = base.mark_point(filled=True, size=40).encode(x="tokens/s:Q", color=alt.Color(f"{label}:N", legend=None),
                                                          tooltip=["run", alt.Tooltip("tokens/s:Q", format=".0f")])
    return (bars + points).properties(width=380, height=110)


def accuracy_by_mode(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """SST-2 accuracy per run by fine-tuning mode, with the zero-shot base model as a dashed rule."""
    data = frame.assign(system=frame["mode"].map(MODE_NAMES))
    points = alt.Chart(data).mark_point(filled=True, size=80).encode(
        x=alt.X("quality:Q", title="SST-2 dev accuracy (%)", scale=alt.Scale(zero=False)),
        y=alt.Y("system:N", title=None, sort=MODE_ORDER), color=alt.Color("system:N", legend=None, sort=MODE_ORDER),
        tooltip=["run", "seed", alt.Tooltip("quality:Q", format=".1f")])
    zero = alt.Chart(data.dropna(subset=["zero-shot"])).mark_rule(strokeDash=[4, 4], color="gray").encode(
        x="mean(zero-shot):Q")
    return (zero + points).properties(width=420, height=130)


def gpu_fit(verdicts: pd.DataFrame, gpu_gib: float = 24.0) -> alt.TopLevelMixin:
    """Predicted peak training memory per model and mode (log scale) against a GPU's memory (dashed rule)."""
    data = verdicts.assign(configuration=verdicts["model"] + " · " + verdicts["mode"],
                           fits=verdicts["fits"].map({True: "fits", False: "does not fit", "yes": "fits",
                                                      "no": "does not fit"}))
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("predicted GiB:Q", title="predicted peak training memory (GiB, log scale)", scale=alt.Scale(type="log")),
        y=alt.Y("configuration:N", title=None, sort=None),
        color=alt.Color("fits:N", title=f"{gpu_gib:g} GB GPU"),
        tooltip=["model", "mode", alt.Tooltip("predicted GiB:Q", format=".1f"), alt.Tooltip("margin GiB:Q", format=".1f")])
    rule = alt.Chart(pd.DataFrame({"gib": [gpu_gib]})).mark_rule(strokeDash=[4, 4], color="black").encode(x="gib:Q")
    return (bars + rule).properties(width=380, height=220)
