"""Every chart of `qlora_utils.book.figures` is drawn (its data marks have extent and finite coordinates in the SVG that
vl-convert makes), and the checker in `qlora_utils.book.svgcheck` rejects blank and NaN charts."""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import altair as alt
import pandas as pd
import pytest

from qlora_utils.book import figures
from qlora_utils.book.report import placeholder_chart
from qlora_utils.book.svgcheck import chart_svg, check_chart, is_placeholder, mark_groups, mark_problems, path_box
from qlora_utils.core.design import MODE_NAMES
from qlora_utils.study.planner import gpu_verdicts

QLORA, LORA, FULL = MODE_NAMES["nf4"], MODE_NAMES["bf16"], MODE_NAMES["full"]


def verdicts() -> pd.DataFrame:
    """The planner's 24 GB verdicts, as the report page builds them (mode names, not codes)."""
    fit = pd.DataFrame(gpu_verdicts())
    return fit.assign(mode=fit["mode"].map(MODE_NAMES))


def curves() -> pd.DataFrame:
    """Train and eval loss of three runs, one per mode."""
    rows = []
    for run, system, start in (("week2-qlora-seed0", QLORA, 2.1), ("week2-lora16-seed0", LORA, 2.0),
                               ("week2-full-seed0", FULL, 1.9)):
        for step in (5, 10, 15, 20):
            rows.append({"run": run, "system": system, "kind": "train", "step": step, "loss": start / (1 + step / 10)})
        for step in (10, 20):
            rows.append({"run": run, "system": system, "kind": "eval", "step": step, "loss": start / (1 + step / 12)})
    return pd.DataFrame(rows)


CHARTS: dict[str, Callable[[], alt.TopLevelMixin]] = {
    "rank_tradeoff": lambda: figures.rank_tradeoff(pd.DataFrame({
        "placement": ["attention"] * 3 + ["attention_mlp"] * 3, "rank": [4, 8, 16] * 2,
        "seeds": [3, 3, 3, 1, 1, 1], "mean": [84.0, 85.2, 85.5, 86.1, 86.0, 86.4],
        "std": [0.4, 0.6, 0.3, None, None, None], "low": [83.6, 84.5, 85.2, 86.1, 86.0, 86.4],
        "high": [84.5, 85.9, 85.8, 86.1, 86.0, 86.4]})),
    "quality_memory": lambda: figures.quality_memory(pd.DataFrame({
        "experiment": ["sst2"] * 3, "model": ["smollm2-135m"] * 3, "mode name": [QLORA, LORA, FULL],
        "placement": ["attention", "attention", "—"], "rank": [8, 8, None], "seeds": [5, 5, 5],
        "quality": [85.1, 86.0, 87.3], "peak_mib": [910.0, 1180.0, 2650.0]})),
    "loss_curves": lambda: figures.loss_curves(curves()),
    "throughput": lambda: figures.throughput(pd.DataFrame({
        "run": ["q0", "q1", "l0", "l1", "f0"], "system": [QLORA, QLORA, LORA, LORA, FULL],
        "tokens/s": [410.0, 430.0, 620.0, 600.0, 380.0]})),
    "accuracy_by_mode": lambda: figures.accuracy_by_mode(pd.DataFrame({
        "run": ["q0", "q1", "l0", "f0"], "seed": [0, 1, 0, 0], "mode": ["nf4", "nf4", "bf16", "full"],
        "quality": [85.0, 85.6, 86.2, 87.0], "zero-shot": [52.3, 52.3, 52.3, 52.3]})),
    "accuracy_by_mode, two models": lambda: figures.accuracy_by_mode(pd.DataFrame({
        "run": ["a0", "a1", "b0", "b1"], "seed": [0, 0, 0, 0], "mode": ["nf4", "full", "nf4", "full"],
        "model": ["A-0.5B", "A-0.5B", "B-135M", "B-135M"], "parameters": [5e8, 5e8, 1.35e8, 1.35e8],
        "quality": [85.0, 87.0, 80.0, 83.0], "zero-shot": [82.0, 82.0, 60.0, 60.0]})),
    "quality_memory, two models": lambda: figures.quality_memory(pd.DataFrame({
        "experiment": ["sst2"] * 4, "model": ["A-0.5B", "A-0.5B", "B-135M", "B-135M"],
        "mode name": [QLORA, FULL, QLORA, FULL], "placement": ["attention", "all weights"] * 2, "rank": [8, None] * 2,
        "seeds": [5] * 4, "quality": [83.0, 86.0, 80.0, 83.0], "peak_mib": [3500.0, 13000.0, 900.0, 2500.0]})),
    "gpu_fit": lambda: figures.gpu_fit(verdicts()),
    "learning_rates": lambda: figures.learning_rates(pd.DataFrame({
        "arm": ["QLoRA q,k,v"] * 3 + ["full fine-tuning"] * 3, "learning rate": [1e-4, 1e-3, 3e-3, 3e-6, 1e-5, 3e-5],
        "fine-tuned %": [82.8, 87.6, 53.6, 84.0, 86.5, 50.2]})),
    "training_loss": lambda: figures.training_loss(curves()),
    "token_lengths": lambda: figures.token_lengths(pd.DataFrame({
        "split": ["SST-2 train", "SST-2 train", "SQuAD train", "SQuAD train"],
        "part": ["prompt", "answer", "prompt", "answer"], "tokens": [38.5, 2.0, 212.4, 5.3]})),
    "scaling_memory": lambda: figures.scaling_memory(pd.DataFrame({
        "model": ["qwen2.5-0.5b", "qwen2.5-1.5b"] * 3, "parameters": [4.9e8, 1.5e9] * 3,
        "mode": [QLORA] * 2 + [LORA] * 2 + [FULL] * 2,
        "peak memory (MiB)": [610.0, 1420.0, 1250.0, 3400.0, 5600.0, 17100.0]})),
    "scaling_throughput": lambda: figures.scaling_throughput(pd.DataFrame({
        "model": ["qwen2.5-0.5b", "qwen2.5-1.5b"] * 2, "parameters": [4.9e8, 1.5e9] * 2,
        "mode": [QLORA, QLORA, LORA, LORA], "threads": [2, 2, 1, 1], "tokens/s": [95.0, 31.0, 140.0, 52.0],
        "machine": ["quiet machine", "busy machine", "quiet machine", "load not recorded"],
        "load average (1 min)": [0.4, 3.1, 0.6, None]})),
    "squad_scores": lambda: figures.squad_scores(pd.DataFrame({
        "run": ["week4-squad-qwen"] * 4 + ["week4-squad-smollm"] * 4, "model": ["Qwen"] * 4 + ["SmolLM2"] * 4,
        "system": ["zero-shot", "fine-tuned"] * 4, "metric": ["exact match", "exact match", "F1", "F1"] * 2,
        "value": [22.0, 41.0, 39.5, 54.2, 2.0, 31.0, 9.5, 44.2]})),
    "winrates": lambda: figures.winrates(pd.DataFrame({
        "system": [QLORA, LORA, "base vs itself"], "against": ["base", "base", "base"],
        "win rate": [61.0, 58.5, 50.0], "se": [4.1, 4.3, 0.0]})),
    "planner_validation": lambda: figures.planner_validation(pd.DataFrame({
        "model": ["qwen2.5-0.5b", "qwen2.5-0.5b", "qwen2.5-1.5b"], "mode": [QLORA, FULL, QLORA],
        "measured peak (MiB)": [820.0, 5400.0, 1610.0], "predicted peak (MiB)": [790.0, 5900.0, 1500.0],
        "error (%)": [-3.7, 9.3, -6.8]})),
}


def chart_functions() -> set[str]:
    """The public chart functions that figures.py defines."""
    return {name for name, f in inspect.getmembers(figures, inspect.isfunction)
            if f.__module__ == figures.__name__ and not name.startswith("_")}


def test_every_chart_function_has_a_drawn_check() -> None:
    assert chart_functions() == {name.split(",")[0] for name in CHARTS}, "add a synthetic frame to CHARTS for each chart function in figures.py"


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_is_drawn(name: str) -> None:
    chart = CHARTS[name]()
    assert check_chart(chart) == []
    assert not is_placeholder(chart_svg(chart))


def old_gpu_fit(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """The encoding the report first used: bars on a log x scale, which start at 0 and so have no width."""
    data = frame.assign(configuration=frame["model"] + " · " + frame["mode"])
    bars = alt.Chart(data).mark_bar().encode(x=alt.X("predicted GiB:Q", scale=alt.Scale(type="log")),
                                             y=alt.Y("configuration:N", sort=None))
    rule = alt.Chart(pd.DataFrame({"gib": [24.0]})).mark_rule(strokeDash=[4, 4]).encode(x="gib:Q")
    return (bars + rule).properties(width=380, height=220)


def test_bars_on_a_log_scale_from_zero_are_rejected() -> None:
    problems = check_chart(old_gpu_fit(verdicts()))
    assert any("rect marks" in p and "9 of 9 drawn with zero extent" in p for p in problems), problems
    assert any("log scale whose domain reaches 0" in p for p in problems), problems


def bar_ends_and_rule(chart: alt.TopLevelMixin) -> tuple[dict[str, float], float]:
    """The right end (px) of each bar by configuration, and the x (px) of the rule, in the rendered SVG."""
    import xml.etree.ElementTree as ET

    groups = mark_groups(ET.fromstring(chart_svg(chart)))
    ends = {}
    for item in next(g for g in groups if g.kind == "rect").items:
        configuration = re.search(r"configuration: ([^;]+)", item.get("aria-label")).group(1)
        ends[configuration] = path_box(item.get("d"))[2]
    rule = next(g for g in groups if g.kind == "rule").items[0]
    return ends, float(re.match(r"translate\(([-\d.]+),", rule.get("transform")).group(1))


def test_gpu_fit_bars_reach_their_prediction_and_the_24_gb_rule_splits_them() -> None:
    frame = verdicts()
    ends, rule = bar_ends_and_rule(figures.gpu_fit(frame))
    assert len(ends) == len(frame) == 9
    configurations = frame["model"] + " · " + frame["mode"]
    predicted = dict(zip(configurations, frame["predicted GiB"]))
    assert sorted(ends, key=ends.get) == sorted(predicted, key=predicted.get), "bar lengths follow the predictions"
    fits = dict(zip(configurations, frame["fits"]))
    assert {c for c in ends if ends[c] < rule} == {c for c in fits if fits[c]}, "only bars that fit end left of 24 GB"
    assert fits[f"qwen3-8b · {QLORA}"] and not fits[f"qwen3-8b · {FULL}"]


def test_a_nan_coordinate_is_rejected() -> None:
    frame = pd.DataFrame({"step": [1, 2, 3], "loss": [2.0, 1.5, 1.2]})
    chart = alt.Chart(frame).mark_point(invalid=None).transform_calculate(bad="sqrt(-1)").encode(
        x="bad:Q", y="loss:Q")
    problems = check_chart(chart)
    assert any("NaN" in p for p in problems), problems
    good = chart_svg(alt.Chart(frame).mark_line().encode(x="step:Q", y="loss:Q"))
    assert mark_problems(good) == []
    path = re.search(r'aria-roledescription="line mark" d="M([-\d.]+),', good)
    broken = good.replace(f'd="M{path.group(1)},', 'd="MNaN,', 1)
    assert any("not a finite number in d=" in p for p in mark_problems(broken))


def test_blank_marks_are_rejected_but_degenerate_data_pass() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.5, 1.5, 1.0]})
    flat = pd.DataFrame({"x": [2.0, 2.0], "y": [1.0, 1.0]})
    assert any("symbol marks" in p for p in check_chart(alt.Chart(frame).mark_point(size=0).encode(x="x", y="y")))
    assert any("line marks" in p for p in check_chart(alt.Chart(flat).mark_line().encode(x="x", y="y")))
    assert any("text marks" in p for p in check_chart(alt.Chart(pd.DataFrame({"t": [""]})).mark_text().encode(
        text="t:N")))
    assert any("no data marks" in p for p in check_chart(alt.Chart(frame.head(0)).mark_point().encode(x="x", y="y")))
    # what the data say is drawn honestly: bars of value 0, a range of one seed (low = high), one-datum lines
    zeros = pd.DataFrame({"system": ["zero-shot", "fine-tuned"], "score": [0.0, 0.0]})
    assert check_chart(alt.Chart(zeros).mark_bar().encode(x="score:Q", y="system:N")) == []
    one_seed = pd.DataFrame({"rank": [4], "low": [50.0], "high": [50.0]})
    assert check_chart(alt.Chart(one_seed).mark_rule().encode(x="rank:O", y="low:Q", y2="high:Q")) == []
    assert check_chart(alt.Chart(frame.head(1)).mark_line().encode(x="x", y="y")) == []


def test_placeholder_is_recognised() -> None:
    chart = placeholder_chart("no runs in this profile")
    assert is_placeholder(chart_svg(chart)) and check_chart(chart) == []
    assert check_chart(chart, allow_placeholder=False) == [
        "a placeholder: the chart shows only a text message, no data"]
    labelled = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "t": ["a", "b"]})
    assert not is_placeholder(chart_svg(alt.Chart(labelled).mark_text().encode(x="x", y="y", text="t")))


def test_not_an_svg() -> None:
    assert mark_problems("<html></html>") == ["not an SVG document: the root element is <html>"]
    assert mark_problems("<svg")[0].startswith("not an SVG document")


def test_gpu_fit_bars_start_inside_the_plot() -> None:
    import xml.etree.ElementTree as ET

    frame = pd.DataFrame({"model": ["tiny", "small", "big"], "mode": [QLORA] * 3, "predicted GiB": [0.3, 5.0, 80.0],
                          "margin GiB": [23.7, 19.0, -56.0], "fits": [True, True, False]})
    chart = figures.gpu_fit(frame)
    assert chart.to_dict()["layer"][0]["encoding"]["x"]["scale"]["domain"][0] == 0.1  # 10 ** floor(log10(0.3 / 2))
    groups = mark_groups(ET.fromstring(chart_svg(chart)))
    starts = [path_box(item.get("d"))[0] for item in next(g for g in groups if g.kind == "rect").items]
    assert len(starts) == 3 and min(starts) >= 0 and max(starts) - min(starts) < 0.5, starts  # all from the baseline


def test_winrate_error_bars_span_two_standard_errors() -> None:
    import xml.etree.ElementTree as ET

    chart = CHARTS["winrates"]()  # se 4.1, 4.3 and 0.0
    assert list(chart.layer[1].data["low"]) == pytest.approx([56.9, 54.2, 50.0])
    assert list(chart.layer[1].data["high"]) == pytest.approx([65.1, 62.8, 50.0])
    rules = [g for g in mark_groups(ET.fromstring(chart_svg(chart))) if g.kind == "rule"]
    widths = sorted(abs(float(i.get("x2", 0)) - float(i.get("x1", 0))) for g in rules for i in g.items)
    assert sum(w > 1 for w in widths) == 2, widths  # two error bars with extent (the 50 % rule is vertical)
