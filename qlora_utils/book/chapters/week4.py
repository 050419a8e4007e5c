"""Week 4, SQuAD v1.1: exact match and F1 zero-shot and after fine-tuning on the same dev questions, and the kinds
of answers the fine-tuned model gives (from the first SQuAD run's generations)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...core.design import MODE_NAMES
from ...core.records import Run
from ...study.analysis import answer_format, runs_by_size, squad_error_table, squad_gain
from .. import figures
from ..report import chart_or_note
from . import NA, Page

TARGET_GAIN = 15.0  # the study's target: at least +15 F1 over zero-shot
SCORE_COLUMNS = ["run", "model", "mode", "adapters on", "train questions", "dev questions", "zero-shot EM (%)",
                 "zero-shot F1 (%)", "EM (%)", "F1 (%)", "trainable (%)", "tokens/s"]
ERROR_COLUMNS = {"kind": "kind of answer", "zero-shot": "zero-shot answers", "fine-tuned": "fine-tuned answers",
                 "example question": "example question", "gold": "gold answers",
                 "fine-tuned answer": "fine-tuned answer"}


def score_row(run: Run) -> dict[str, Any]:
    """One SQuAD run's configuration and scores (missing fields as None)."""
    m = run.metrics
    zero, tuned = m.get("zero_shot") or {}, m.get("fine_tuned") or {}
    return {"run": run.name, "model": m.get("model", {}).get("label"),
            "mode": MODE_NAMES.get(m.get("model", {}).get("mode"), m.get("model", {}).get("mode")),
            "adapters on": (m.get("lora") or {}).get("placement", "all weights"),
            "train questions": m.get("data", {}).get("train", {}).get("examples_after_length_filter"),
            "dev questions": tuned.get("n"), "zero-shot EM (%)": zero.get("exact_match"),
            "zero-shot F1 (%)": zero.get("f1"), "EM (%)": tuned.get("exact_match"), "F1 (%)": tuned.get("f1"),
            "trainable (%)": m.get("parameters", {}).get("percent"),
            "tokens/s": m.get("training", {}).get("tokens_per_second")}


def scores_table(runs: list[Run]) -> pd.DataFrame:
    """One row per SQuAD run, the largest model's first: model, mode, data sizes, zero-shot and fine-tuned EM and
    F1, trainable share, speed."""
    frame = pd.DataFrame([score_row(r) for r in runs_by_size(runs) if "fine_tuned" in r.metrics], columns=SCORE_COLUMNS)
    for column in ("train questions", "dev questions"):
        frame[column] = frame[column].astype("Int64")
    return frame


def score_bars(scores: pd.DataFrame) -> pd.DataFrame:
    """EM and F1 zero-shot and fine-tuned, long (run, model, system, metric, value), for the scores chart."""
    value_vars = ["zero-shot EM (%)", "zero-shot F1 (%)", "EM (%)", "F1 (%)"]
    if scores.empty:
        return pd.DataFrame(columns=["run", "model", "system", "metric", "value"])
    bars = scores.melt(id_vars=["run", "model"], value_vars=value_vars, var_name="score",
                       value_name="value").dropna(subset=["value"])
    bars["system"] = bars["score"].str.startswith("zero").map({True: "zero-shot", False: "fine-tuned"})
    bars["metric"] = bars["score"].str.replace("zero-shot ", "", regex=False).str.replace(" (%)", "", regex=False)
    return bars[["run", "model", "system", "metric", "value"]].astype({"value": float})


def count(value: Any) -> str:
    """A count with thousands separators, "n/a" when missing."""
    return NA if value is None or pd.isna(value) else f"{int(value):,}"


def errors_table(generations: list[dict[str, Any]]) -> pd.DataFrame:
    """How many answers of each kind, zero-shot and fine-tuned, with an example, under human column names."""
    if not generations:
        return pd.DataFrame(columns=list(ERROR_COLUMNS.values()))
    return squad_error_table(generations).rename(columns=ERROR_COLUMNS)


def page(runs: list[Run]) -> Page:
    """Everything the SQuAD page shows: the scores table and chart, the lead (largest) model's first run's headline
    numbers and gain over zero-shot against the target and its error kinds, and a sentence for the other models."""
    result = Page("week4")
    scores = scores_table(runs)
    result.tables["scores"] = scores
    first: dict[str, Any] = scores.iloc[0].to_dict() if len(scores) else {}

    def number(key: str) -> float | None:
        value = first.get(key)
        return None if value is None or pd.isna(value) else float(value)

    result.value("train", number("train questions"), "{:,.0f}")
    result.value("dev", number("dev questions"), "{:,.0f}")
    result.value("zero_em", number("zero-shot EM (%)"))
    result.value("zero_f1", number("zero-shot F1 (%)"))
    result.value("em", number("EM (%)"))
    result.value("f1", number("F1 (%)"))
    gain = number("F1 (%)") - number("zero-shot F1 (%)") if None not in (number("F1 (%)"),
                                                                         number("zero-shot F1 (%)")) else None
    result.value("gain", gain, "{:+.1f}")
    result.value("target_gain", TARGET_GAIN, "{:.0f}")
    result.value("target", NA if gain is None else "met" if gain >= TARGET_GAIN else "not met")
    result.value("mode", first.get("mode"))
    result.value("model", first.get("model"))
    result.value("others", " ".join(
        f"{row['model']} ({row['mode']}, {count(row['train questions'])} training questions) reaches "
        f"{row['EM (%)']:.1f} EM and {row['F1 (%)']:.1f} F1 on its {count(row['dev questions'])} dev questions"
        + (f", against {row['zero-shot EM (%)']:.1f} and {row['zero-shot F1 (%)']:.1f} zero-shot."
           if not pd.isna(row["zero-shot F1 (%)"]) else ".")
        for _, row in scores.iloc[1:].iterrows() if row["model"] != first.get("model")))
    result.figures["chart"] = chart_or_note(score_bars(scores), figures.squad_scores, "no SQuAD runs in this profile")
    by_name = {r.name: r for r in runs}
    generations = by_name[first["run"]].generations() if first else []
    paired = squad_gain(generations)
    result.value("gain_ci", f"95 % CI {paired['low']:+.1f} to {paired['high']:+.1f} points, paired over "
                 f"{paired['n']:,} questions" if paired["n"] > 1 else None, "{}")
    format_values(result, generations)
    errors = errors_table(generations)
    result.tables["errors"] = errors
    misses = errors[errors["kind of answer"] != "exact match"].sort_values("fine-tuned answers", kind="stable") \
        if len(errors) else errors
    top = misses.iloc[-1] if len(misses) else None
    result.value("top_error", None if top is None else top["kind of answer"])
    result.value("top_error_n", None if top is None else int(top["fine-tuned answers"]), "{:d}")
    result.value("exact_n", int(errors.loc[errors["kind of answer"] == "exact match", "fine-tuned answers"].sum())
                 if len(errors) else None, "{:d}")
    return result


FORMAT_ROWS = {"zero-shot": "zero-shot answers", "zero-shot trimmed": "zero-shot, trimmed without the gold",
               "zero-shot best span": "zero-shot, best span (uses the gold: a ceiling)",
               "fine-tuned": "fine-tuned answers"}


def format_values(result: Page, generations: list[dict[str, Any]]) -> None:
    """The answer-format baseline (analysis.answer_format) of the lead run: a table of EM, F1 and answer length,
    and the share of the F1 gain that trimming the zero-shot answers already gets."""
    scores = answer_format(generations)
    table = pd.DataFrame([{"answers": label, "EM (%)": scores[key]["exact_match"], "F1 (%)": scores[key]["f1"],
                           "mean words": scores[key]["words"]} for key, label in FORMAT_ROWS.items()]) \
        if scores["n"] else pd.DataFrame(columns=["answers", "EM (%)", "F1 (%)", "mean words"])
    result.tables["format"] = table
    f1 = {key: scores[key]["f1"] for key in FORMAT_ROWS} if scores["n"] else {}
    gain = f1["fine-tuned"] - f1["zero-shot"] if f1 else None
    result.value("format_trimmed_f1", f1.get("zero-shot trimmed"))
    result.value("format_span_f1", f1.get("zero-shot best span"))
    result.value("format_share", 100 * (f1["zero-shot trimmed"] - f1["zero-shot"]) / gain if gain else None, "{:.0f}")
    result.value("format_words", f"{scores['zero-shot']['words']:.1f} to {scores['fine-tuned']['words']:.1f}"
                 if scores["n"] else None, "{}")
