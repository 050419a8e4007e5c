"""The cross-experiment figures of the analysis and report chapters (Altair charts over tables from `analysis`)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ..core.design import MODE_NAMES

MODE_ORDER = list(MODE_NAMES.values())


def rank_tradeoff(summary: pd.DataFrame, metric: str = "SST-2 dev accuracy (%)") -> alt.TopLevelMixin:
    """Accuracy against LoRA rank per placement: the mean over seeds, with a bar from the lowest to the highest seed;
    one panel per model when there are several (each on its own accuracy axis)."""
    base = alt.Chart(summary).encode(
        x=alt.X("rank:O", title="LoRA rank r"), color=alt.Color("placement:N", title="adapters on"))
    line = base.mark_line(point=alt.OverlayMarkDef(size=60, filled=True)).encode(
        y=alt.Y("mean:Q", title=metric, scale=alt.Scale(zero=False)),
        tooltip=[c for c in ("model", "placement", "rank", "seeds") if c in summary] +
        [alt.Tooltip("mean:Q", format=".1f"), alt.Tooltip("std:Q", format=".1f")])
    spread = base.mark_rule(strokeWidth=2, opacity=0.5).encode(y="low:Q", y2="high:Q")
    if "model" in summary and summary["model"].nunique() > 1:
        return (spread + line).properties(width=300, height=220).facet(
            column=alt.Column("model:N", title=None, sort=list(dict.fromkeys(summary["model"])))).resolve_scale(
            y="independent")
    return (spread + line).properties(width=360, height=240)


def quality_memory(comparison: pd.DataFrame, metric: str = "SST-2 dev accuracy (%)") -> alt.TopLevelMixin:
    """Quality of one task against peak training memory, by fine-tuning mode (one metric per chart: SST-2 accuracy
    and SQuAD F1 never share an axis), one panel per model when there are several."""
    chart = alt.Chart(comparison).mark_point(filled=True, size=90).encode(
        x=alt.X("peak_mib:Q", title="peak training memory above the pre-load process (MiB)"),
        y=alt.Y("quality:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("mode name:N", title="mode", sort=MODE_ORDER),
        shape=alt.Shape("placement:N", title="adapters on"),
        tooltip=["experiment", "model", "mode name", "placement", "rank", "seeds",
                 alt.Tooltip("quality:Q", format=".1f"), alt.Tooltip("peak_mib:Q", format=",.0f")],
    )
    if comparison["model"].nunique() > 1:  # one panel per model: sizes differ too much to share axes
        return chart.properties(width=420, height=200).facet(row=alt.Row("model:N", title=None)).resolve_scale(
            x="independent", y="independent")
    return chart.properties(width=420, height=260)


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
    """SST-2 accuracy per run by fine-tuning mode, with the zero-shot base model as a dashed rule; one row of panels
    per model when there are several (largest first)."""
    from ..study.analysis import models_by_size

    data = frame.assign(system=frame["mode"].map(MODE_NAMES))
    points = alt.Chart().mark_point(filled=True, size=80).encode(
        x=alt.X("quality:Q", title="SST-2 dev accuracy (%)", scale=alt.Scale(zero=False)),
        y=alt.Y("system:N", title=None, sort=MODE_ORDER), color=alt.Color("system:N", legend=None, sort=MODE_ORDER),
        tooltip=[*(["model"] if "model" in data else []), "run", "seed", alt.Tooltip("quality:Q", format=".1f")])
    zero = alt.Chart().transform_filter("isValid(datum['zero-shot'])").mark_rule(
        strokeDash=[4, 4], color="gray").encode(x="mean(zero-shot):Q")
    models = models_by_size(data) if "parameters" in data else []
    if len(models) > 1:
        return alt.layer(zero, points, data=data).properties(width=420, height=110).facet(
            row=alt.Row("model:N", title=None, sort=models)).resolve_scale(x="independent")
    return alt.layer(zero, points, data=data).properties(width=420, height=130)


def gpu_fit(verdicts: pd.DataFrame, gpu_gib: float = 24.0) -> alt.TopLevelMixin:
    """Predicted peak training memory per model and mode (log scale) against a GPU's memory (dashed rule): bars from a
    positive baseline, a power of ten below the smallest prediction, since a log scale has no zero to start from."""
    import math

    data = verdicts[verdicts["predicted GiB"] > 0].assign(
        configuration=verdicts["model"] + " · " + verdicts["mode"],
        fits=verdicts["fits"].map({True: "fits", False: "does not fit", "yes": "fits", "no": "does not fit"}))
    predicted = [*data["predicted GiB"], gpu_gib]
    baseline = 10.0 ** math.floor(math.log10(min(predicted) / 2))
    bars = alt.Chart(data.assign(baseline=baseline)).mark_bar().encode(
        x=alt.X("baseline:Q", title=f"predicted peak training memory (GiB, log scale; bars start at {baseline:g} GiB)",
                scale=alt.Scale(type="log", domain=[baseline, max(predicted) * 1.5], nice=False)),
        x2=alt.X2("predicted GiB:Q"), y=alt.Y("configuration:N", title=None, sort=None),
        color=alt.Color("fits:N", title=f"{gpu_gib:g} GB GPU", scale=alt.Scale(domain=["fits", "does not fit"])),
        tooltip=["model", "mode", alt.Tooltip("predicted GiB:Q", format=".1f"), alt.Tooltip("margin GiB:Q", format=".1f")])
    rule = alt.Chart(pd.DataFrame({"gib": [gpu_gib]})).mark_rule(strokeDash=[4, 4], color="black").encode(x="gib:Q")
    return (bars + rule).properties(width=380, height=220)


def training_loss(curves: pd.DataFrame) -> alt.TopLevelMixin:
    """Training loss per optimizer step, one line per run, coloured by fine-tuning mode."""
    return alt.Chart(curves[curves["kind"] == "train"]).mark_line(opacity=0.7).encode(
        x=alt.X("step:Q", title="optimizer step"), y=alt.Y("loss:Q", title="training loss (answer tokens)"),
        color=alt.Color("system:N", title="mode", sort=MODE_ORDER), detail="run:N").properties(width=420, height=240)


def token_lengths(lengths: pd.DataFrame) -> alt.TopLevelMixin:
    """Mean prompt and answer length (tokens under the chat template) per data split, stacked (columns split, part,
    tokens)."""
    return alt.Chart(lengths).mark_bar().encode(
        y=alt.Y("split:N", title=None), x=alt.X("tokens:Q", title="mean tokens per example (chat template)"),
        color=alt.Color("part:N", title=None), tooltip=["split", "part", alt.Tooltip("tokens:Q", format=".1f")],
    ).properties(width=420, height=200)


def scaling_memory(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """Peak training memory against model size (log scale), one line per fine-tuning mode (columns parameters,
    "peak memory (MiB)", mode, model)."""
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=60, filled=True)).encode(
        x=alt.X("parameters:Q", title="model parameters (log scale)", scale=alt.Scale(type="log"),
                axis=alt.Axis(format="~s")),
        y=alt.Y("peak memory (MiB):Q", title="peak training memory (MiB)"),
        color=alt.Color("mode:N", title="mode", sort=MODE_ORDER),
        tooltip=["model", "mode", alt.Tooltip("peak memory (MiB):Q", format=",.0f")],
    ).properties(width=360, height=220)


def scaling_throughput(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """Training tokens/s against model size, one panel per torch thread count (compare speeds only within a panel);
    the point's shape says whether the machine was busy (columns parameters, tokens/s, mode, threads, machine)."""
    base = alt.Chart().encode(
        x=alt.X("parameters:Q", title="model parameters (log scale)", scale=alt.Scale(type="log"),
                axis=alt.Axis(format="~s")),
        y=alt.Y("tokens/s:Q", title="training tokens per second"),
        color=alt.Color("mode:N", title="mode", sort=MODE_ORDER))
    points = base.mark_point(filled=True, size=80).encode(
        shape=alt.Shape("machine:N", title="1-min load average",
                        scale=alt.Scale(domain=["quiet machine", "busy machine", "load not recorded"],
                                        range=["circle", "triangle-up", "square"])),
        tooltip=["model", "mode", "threads", "machine", alt.Tooltip("load average (1 min):Q", format=".2f"),
                 alt.Tooltip("tokens/s:Q", format=".1f")])
    return alt.layer(base.mark_line(opacity=0.6), points, data=frame).properties(width=260, height=200).facet(
        column=alt.Column("threads:N", title="torch threads (compare within a panel only)"))


def squad_scores(bars: pd.DataFrame) -> alt.TopLevelMixin:
    """SQuAD exact match and F1 (%), zero-shot and fine-tuned, one row per metric and a bar pair per model (columns
    run, model, system, metric, value)."""
    order = ["zero-shot", "fine-tuned"]
    return alt.Chart(bars).mark_bar().encode(
        x=alt.X("value:Q", title="score (%)", scale=alt.Scale(domain=[0, 100])),
        y=alt.Y("model:N", title=None, sort=None), yOffset=alt.YOffset("system:N", sort=order),
        color=alt.Color("system:N", sort=order, title=None, legend=alt.Legend(orient="bottom")),
        row=alt.Row("metric:N", title=None),
        tooltip=["run", "model", "system", "metric", alt.Tooltip("value:Q", format=".1f")],
    ).properties(width=380, height=alt.Step(14))


def winrates(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """AlpacaEval win rate (%) per system, one colour per reference, with ±1 standard error bars and a dashed rule at
    50 % (no preference); expects columns system, against, win rate, se (sanity pairs may be rows too)."""
    data = frame.assign(low=frame["win rate"] - frame["se"].fillna(0), high=frame["win rate"] + frame["se"].fillna(0))
    legend = alt.Legend(orient="bottom", direction="vertical", labelLimit=0)
    base = alt.Chart(data).encode(y=alt.Y("system:N", title=None, sort=None), yOffset=alt.YOffset("against:N"),
                                  color=alt.Color("against:N", title="against", legend=legend))
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("win rate:Q", title="win rate (%)", scale=alt.Scale(zero=False)),
        tooltip=["system", "against", alt.Tooltip("win rate:Q", format=".1f"), alt.Tooltip("se:Q", format=".2f")])
    bars = base.mark_rule().encode(x="low:Q", x2="high:Q")
    half = alt.Chart(pd.DataFrame({"x": [50.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return (half + bars + points).properties(width=380, height=alt.Step(12))


def planner_validation(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """Predicted against measured peak training memory (MiB, log scales) per run, by mode (colour) and model (shape),
    with a dashed line of perfect agreement."""
    measured, predicted = "measured peak (MiB)", "predicted peak (MiB)"
    low = min(frame[measured].min(), frame[predicted].min()) * 0.8
    high = max(frame[measured].max(), frame[predicted].max()) * 1.2
    scale = alt.Scale(type="log", domain=[low, high], nice=False)
    points = alt.Chart(frame).mark_point(filled=True, size=70).encode(
        x=alt.X(f"{measured}:Q", scale=scale, title=measured),
        y=alt.Y(f"{predicted}:Q", scale=scale, title=predicted),
        color=alt.Color("mode:N", sort=MODE_ORDER), shape="model:N",
        tooltip=["model", "mode", alt.Tooltip(f"{measured}:Q", format=",.0f"),
                 alt.Tooltip(f"{predicted}:Q", format=",.0f"), alt.Tooltip("error (%):Q", format="+.0f")])
    span = pd.DataFrame({"x": [low, high]})
    line = alt.Chart(span).mark_line(strokeDash=[4, 4], color="gray").encode(x="x:Q", y="x:Q")
    return (points + line).properties(width=380, height=300)


def learning_rates(rows: pd.DataFrame) -> alt.TopLevelMixin:
    """Selection-split accuracy against the learning rate (log scale), one line per arm of the grid."""
    base = alt.Chart(rows).encode(
        x=alt.X("learning rate:Q", scale=alt.Scale(type="log"), title="learning rate", axis=alt.Axis(format="~e")),
        y=alt.Y("fine-tuned %:Q", scale=alt.Scale(zero=False), title="selection-split accuracy (%)"),
        color=alt.Color("arm:N", title="arm"),
        tooltip=["arm", alt.Tooltip("learning rate:Q", format="~e"), alt.Tooltip("fine-tuned %:Q", format=".1f")])
    return (base.mark_line() + base.mark_point(filled=True, size=70)).properties(width=420, height=220)
