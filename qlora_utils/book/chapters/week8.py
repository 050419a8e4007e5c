"""Week 8, the report: every expectation of the plan judged by the protocol (`protocol.verdict_table`), with links
to its evidence, and the planner's 24 GB predictions."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ...core.design import MODE_NAMES
from ...core.records import Run
from ...study import gpucheck, pilot, protocol
from ...study.analysis import experiments_frame
from ...study.gpucheck import gpu_agreement, gpu_table
from ...study.headline import FAMILIES, headline_frame, study_models, training_moved
from ...study.instruct import families, trust_sentence
from ...study.planner import gpu_verdicts, validation_rows
from ...study.protocol import primary_runs
from ...study.winrate import judge_trust
from .. import figures
from . import NA, Page

QUALITY_EVIDENCE = {  # where a model's comparisons of the modes live, by the notebook of its primary runs
    "week2_sst2_baseline": '<a href="week2_sst2_baseline.html#tbl-week2-verdicts">week 2 verdicts</a>',
    "week3_scaling": '<a href="week3_scaling.html#tbl-week3-accuracy">week 3 accuracy scaling</a>',
}
EVIDENCE = {
    "under": '<a href="week1_setup.html">week 1 parameter tables</a>, '
             '<a href="week5_ablations.html#tbl-week5-grid">week 5 grid</a>',
    "an 8B": '<a href="week6_alpacaeval_efficiency.html">planner vs measured (week 6)</a>',
}
COLUMNS = {"expectation": "expectation", "task": "task", "model": "model", "comparison": "primary comparison",
           "effect with interval": "effect (95 % CI)", "margin text": "margin", "verdict": "verdict",
           "significance": "gap vs 0", "seeds to settle": "seeds to settle (80 % power)", "evidence": "evidence"}


def _effect(row: pd.Series) -> str:
    if pd.isna(row.get("effect")):
        return "—"
    unit = " GiB" if row["expectation"].startswith("an 8B") else " %" if row["expectation"].startswith("under") \
        else " points"
    if unit == " GiB":
        measured = not row["verdict"] == protocol.NOT_TESTABLE
        band = "" if pd.isna(row.get("low")) else f" (band {row['low']:.1f} to {row['high']:.1f})"
        return f"{row['effect']:.1f} GiB {'measured' if measured else 'predicted'}{band}"
    if pd.isna(row.get("low")):
        return f"{row['effect']:.2f}{unit}" if unit == " %" else f"{row['effect']:+.1f}{unit}"
    return f"{row['effect']:+.1f}{unit} ({row['low']:+.1f} to {row['high']:+.1f}; {row['seeds']:.0f} seeds)"


def verdicts_frame(runs: list[Run], gpu: Sequence[dict[str, Any]] | None = None,
                   frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The protocol's verdict table over every run (and the committed GPU checks: `gpucheck.read_records()` when
    `gpu` is None), with readable effect, margin and evidence columns; `frame`: `experiments_frame(runs)` when the
    caller has it already."""
    validation = validation_rows([r.metrics for r in runs])
    frame = experiments_frame(runs) if frame is None else frame
    table = protocol.verdict_table(frame, validation,
                                   gpucheck.verdict_rows(gpucheck.read_records() if gpu is None else gpu))
    table["effect with interval"] = table.apply(_effect, axis=1)
    table["margin text"] = table.apply(lambda r: "—" if pd.isna(r.get("margin")) else
                                       f"{r['margin']:.1f} GiB" if r["expectation"].startswith("an 8B") else
                                       f"{r['margin']:g} %" if r["expectation"].startswith("under") else
                                       f"{r['margin']:.1f} points", axis=1)
    home = {model: plan["notebook"].iloc[0] for model, rows in (frame.groupby("model") if "model" in frame else [])
            if len(plan := primary_runs(rows, "nf4"))}  # the notebook of each model's plan-configuration QLoRA runs
    table["evidence"] = [QUALITY_EVIDENCE.get(home.get(model, ""), QUALITY_EVIDENCE["week2_sst2_baseline"])
                         if expectation.startswith(("QLoRA within 3 %", "QLoRA within 1.5", "QLoRA on every")) else
                         next(v for k, v in EVIDENCE.items() if expectation.startswith(k))
                         for expectation, model in zip(table["expectation"],
                                                       table["model"] if "model" in table else [None] * len(table))]
    return table


def trainable_elsewhere(frame: pd.DataFrame) -> str:
    """The largest trainable share among the QLoRA runs outside the plan's configuration (the verdict is about the
    plan's r = 8 on q,k,v), in words; "" where there are none."""
    qlora = frame[frame["mode"] == "nf4"].dropna(subset=["trainable %"]) if len(frame) else frame
    plan = set(primary_runs(frame, "nf4")["run"]) if len(frame) else set()
    other = qlora[~qlora["run"].isin(plan)] if len(qlora) else qlora
    if other.empty:
        return ""
    top = other.loc[other["trainable %"].idxmax()]
    return (f"; the verdict is at the plan's configuration: this profile's other QLoRA configurations train up to "
            f"{top['trainable %']:.2f} % ({top['model']}, r = {top['rank']:.0f} on {top['placement']})")


def judge_limit(runs: list[Run]) -> str:
    """The lead model's reported AlpacaEval judge and how far it can be trusted, in a sentence or two."""
    lead = families(runs)[0]
    record = lead.reported
    if not record:
        return "No AlpacaEval judge ran in this profile."
    trust = judge_trust(record)
    how = trust_sentence(trust["position_consistency"], trust["sanity_gap"])
    whose = f" for {lead.model}'s answers" if lead.model != NA else ""
    return (f"The AlpacaEval judge reported{whose}, {record['judge']['spec']}, kept its verdict when the "
            f"answers swapped places in {trust['position_consistency']:.1f} % of pairs, and its sanity pairs were up "
            f"to {trust['sanity_gap']:.1f} points from 50 %. How far to trust it: "
            f"{how[0].lower()}{how[1:]}")


def page(runs: list[Run], gpu: Sequence[dict[str, Any]] | None = None) -> Page:
    """Everything the week 8 page shows, from every finished run of the profile and the committed GPU checks."""
    out = Page("week8")
    gpu = gpucheck.read_records() if gpu is None else gpu
    frame = experiments_frame(runs)
    table = verdicts_frame(runs, gpu, frame)
    out.tables["verdicts"] = table[[c for c in COLUMNS if c in table]].rename(columns=COLUMNS)
    models = study_models(runs)
    quality = table[table["expectation"].str.startswith("QLoRA within") & table["seeds"].notna()] \
        if {"seeds", "model"} <= set(table) else table.iloc[:0]
    seeds = quality.groupby("model", sort=False)["seeds"].min() if len(quality) else pd.Series(dtype=float)
    out.value("seeds_per_model", "; ".join(f"{model} {n:.0f}" for model, n in seeds.items()) or None, "{}")
    for i, prefix in enumerate(FAMILIES):
        model = models[i] if i < len(models) else None
        out.value(f"{prefix}model", model, "{}")
        for key, words in (("full", "QLoRA within 3 %"), ("lora", "QLoRA within 1.5"), ("trainable", "under"),
                           ("gpu", "an 8B")):
            if key == "gpu" and prefix:
                continue
            row = protocol.verdict_for(table, words, None if key == "gpu" else model) if model or key == "gpu" \
                else None
            out.value(f"{prefix}{key}", row["verdict"] if row else None, "{}")
            out.value(f"{prefix}{key}_sentence", protocol.evidence(row) if row else None, "{}")
            if key in ("full", "lora"):
                out.value(f"{prefix}{key}_significance", row.get("significance") if row else None, "{}")
    out.value("trainable_elsewhere", trainable_elsewhere(frame), "{}")
    main = headline_frame(frame[frame["notebook"] == "week2_sst2_baseline"]) if len(frame) else frame
    for key in ("v1", "v2"):
        out.value(f"protocol_{key}_commit", pilot.introducing_commit(pilot.PROTOCOL_MARKS[key]), "{}")
    out.value("moved", training_moved(main[main["model"] == models[0]]) if models and len(main) else None, "{}")
    first = headline_frame(frame[(frame["notebook"] == "week2_sst2_baseline") & (frame["min words"] == 0)]) \
        if len(frame) else frame
    out.value("first_moved", training_moved(first[first["model"] == models[0]]) if models and len(first) else None,
              "{}")
    t = out.text
    out.value("second", f"For the second family, {t['second_model']}: within 3 % of full fine-tuning — "
              f"{t['second_full']} ({t['second_full_sentence']}); within 1.5 points of 16-bit LoRA — "
              f"{t['second_lora']} ({t['second_lora_sentence']}); under 1 % trainable — {t['second_trainable']}."
              if t["second_model"] != NA else "", "{}")
    for key, task, part in (("squad_train", "squad", "train"), ("alpaca_train", "alpaca", "train"),
                            ("alpaca_eval", "alpaca", "eval")):
        used = sorted({r.metrics["data"][part]["records_used"] for r in runs if r.metrics.get("experiment") == task
                       and "records_used" in r.metrics.get("data", {}).get(part, {})})
        out.value(key, " or ".join(f"{n:,}" for n in used) or None, "{}")
    out.value("judge_limit", judge_limit(runs), "{}")
    agree, trained = gpu_agreement(gpu_table(gpu))
    out.value("planner_limit", f"The planner's 24 GB verdicts are predictions; {trained} of its rows were trained on a "
              f"GPU with random weights for a few steps (week 6), and its verdict held in {agree} of them."
              if trained else "The planner's 24 GB verdicts are predictions, checked against CPU measurements only.",
              "{}")
    fit = pd.DataFrame(gpu_verdicts())
    fit["mode"] = fit["mode"].map(MODE_NAMES)
    out.figures["fit"] = figures.gpu_fit(fit)
    return out
