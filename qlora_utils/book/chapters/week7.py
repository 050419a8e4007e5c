"""Week 7, the cross-experiment analysis: rank and placement, quality against memory (per task: SST-2 accuracy and
SQuAD F1 never share an axis), how the modes learn, throughput, and the systems' outputs side by side."""

from __future__ import annotations

import pandas as pd

from ...core.design import MODE_NAMES
from ...core.records import Run
from ...study import ablation, instruct
from ...study.analysis import (by_mode, disagreements, efficiency_frame, experiments_frame, mode_comparison,
                               models_by_size, runs_by_size)
from ...study.headline import headline_frame
from .. import figures
from ..report import history_frame, placeholder_chart
from . import Page, threads_differ

RANK_COLUMNS = {"model": "model", "placement": "adapters on", "rank": "rank r", "seeds": "seeds",
                "mean": "dev accuracy (%)", "std": "std (points)", "low": "lowest seed (%)", "high": "highest seed (%)",
                "trainable_pct": "trainable (%)", "tokens_per_s": "tokens/s"}
COMPARISON_COLUMNS = {"experiment": "task", "model": "model", "mode name": "mode", "placement": "adapters on",
                      "rank": "rank r", "seeds": "seeds", "quality": "quality (accuracy % or F1)",
                      "quality_std": "std", "peak_mib": "peak memory (MiB)", "tokens_per_s": "tokens/s",
                      "trainable_pct": "trainable (%)"}
LABELS = {0: "negative", 1: "positive"}
ALPACA_EXAMPLES = 3  # instructions beyond those the week 6 chapter shows


def page(runs: list[Run]) -> Page:
    """Everything the week 7 page shows, from every finished run of the profile."""
    out = Page("week7")
    frame = experiments_frame(runs)
    _ranks(out, runs)
    _quality_memory(out, frame)
    seed0 = _seed0(runs, frame)
    curves = pd.concat([history_frame(r.history(), run=r.name, system=MODE_NAMES[r.metrics["model"]["mode"]])
                        for r in seed0]) if seed0 else pd.DataFrame()
    out.figures["loss"] = figures.loss_curves(curves) if len(curves) else placeholder_chart("no week 2 runs")
    evaluated = curves["run"][curves["kind"] != "train"].nunique() if len(curves) else 0
    out.value("eval_curves", f"{evaluated} of these runs did" if evaluated else "none of these runs did", "{}")
    _speed(out, frame, runs)
    _side_by_side(out, runs, seed0)
    return out


def _ranks(out: Page, runs: list[Run]) -> None:
    """QLoRA SST-2 accuracy per rank and placement over every ablated model (week 5's grid, seeds grouped by the
    full configuration), and the lead model's reading of it."""
    families = ablation.ablated_models(ablation.grid_frame(runs), ablation.diverged_runs(runs))
    ranks = ablation.combined_grid(families)
    out.figures["rank"] = figures.rank_tradeoff(ranks) if len(ranks) else \
        placeholder_chart("no rank x placement ablation runs")
    out.tables["rank_table"] = ranks[[c for c in RANK_COLUMNS if c in ranks]].rename(columns=RANK_COLUMNS) \
        if len(ranks) else ranks
    lead = families[0] if families else None
    best = lead.best if lead else None
    out.value("rank_model", lead.model if lead else None, "{}")
    out.value("best", f"{ablation.best_text(best)} ({best['selection']:.1f} % on the selection split; {best['dev']:.1f} % "
                      f"on the dev set, mean of {best['seeds']:.0f} seeds)" if best else
              "not available: no run of this profile scored the selection split", "{}")
    out.value("rank_reading", lead.reading() if lead else None, "{}")
    out.value("rank_others", "".join(f" For {f.model}: {f.reading()}; the selection split chose "
                                     f"{ablation.best_text(f.best)}." for f in families[1:]), "{}")


def _quality_memory(out: Page, frame: pd.DataFrame) -> None:
    """Per task, quality against peak memory by mode (one figure per metric), and the comparison table."""
    scored = frame.dropna(subset=["quality"]) if len(frame) else frame
    scored = scored[scored["group"].isna()] if len(scored) else scored
    comparison = mode_comparison(scored) if len(scored) else scored
    out.tables["comparison"] = comparison[[c for c in COMPARISON_COLUMNS if c in comparison]].rename(
        columns=COMPARISON_COLUMNS) if len(comparison) else comparison
    for task, key, title in (("sst2", "quality_memory", "SST-2 dev accuracy (%)"),
                             ("squad", "quality_memory_squad", "SQuAD v1.1 F1")):
        rows = comparison[comparison["experiment"] == task] if len(comparison) else comparison
        out.figures[key] = figures.quality_memory(rows, title) if len(rows) else \
            placeholder_chart(f"no {task} training runs in this profile")


def _lead(frame: pd.DataFrame) -> pd.DataFrame:
    """The week 2 headline runs of the lead model (the largest), never pooled with another model's."""
    main = headline_frame(frame[frame["notebook"] == "week2_sst2_baseline"]) if len(frame) else frame
    models = models_by_size(main)
    return main[main["model"] == models[0]] if models else main


def _seed0(runs: list[Run], frame: pd.DataFrame) -> list[Run]:
    """Seed 0 of each mode of the lead model's week 2 headline (same data, steps and prompts)."""
    main = _lead(frame)
    names = set(main.loc[main["seed"] == 0, "run"]) if len(main) else set()
    return [r for r in runs if r.name in names]


def _speed(out: Page, frame: pd.DataFrame, runs: list[Run]) -> None:
    """Throughput by mode (week 2 headline runs) and the fixed-shape efficiency runs, with threads and load."""
    week2 = _lead(frame)
    speed = week2.assign(system=week2["mode"].map(MODE_NAMES)) if len(week2) else week2
    out.figures["speed"] = figures.throughput(speed) if len(speed) else placeholder_chart("no week 2 runs")
    modes = by_mode(week2)
    out.value("tps", ", ".join(f"{r.system} {r.tokens_per_s:.0f} ({r.threads} thread{'s' * (r.threads != '1')})"
                               for r in modes.itertuples()) or None, "{}")
    out.value("tps_caveat", "; the thread counts differ, so the modes compare only roughly" if threads_differ(modes)
              else "", "{}")
    efficiency = efficiency_frame(runs)
    out.tables["efficiency"] = efficiency.drop(columns=["mode code"], errors="ignore")
    loads = [(r.metrics["training"]["memory"].get("load_average_1min"), r.metrics["training"]["memory"].get("cpu_count"))
             for r in runs if "training" in r.metrics]
    known = [(load, cpus) for load, cpus in loads if load is not None]
    busy = sum(load > cpus + 0.5 for load, cpus in known)
    out.value("busy", f"{busy} of the {len(known)} training runs that recorded it finished training with the 1-minute "
                      "load average above the cores plus one half" if known else None, "{}")


def _side_by_side(out: Page, runs: list[Run], seed0: list[Run]) -> None:
    """Examples chosen by a rule (the first, in the seeded evaluation order, where the systems' outputs differ)."""
    rows = []
    generations = {MODE_NAMES[r.metrics["model"]["mode"]]: r.generations() for r in seed0}
    if generations:
        first = next(iter(generations.values()))
        outputs = {"base model": [LABELS.get(g["zero_shot"], g["zero_shot"]) for g in first],
                   **{k: [LABELS.get(g["fine_tuned"]) for g in v] for k, v in generations.items()}}
        for i in disagreements(outputs, limit=5):
            rows.append({"sentence": first[i]["sentence"], "gold": LABELS[first[i]["label"]],
                         **{k: v[i] for k, v in outputs.items()}})
    out.tables["sst2_examples"] = pd.DataFrame(rows)
    squad = runs_by_size(r for r in runs if r.metrics.get("experiment") == "squad")
    lead = [r for r in squad if instruct.model_of(r) == instruct.model_of(squad[0])] if squad else []
    rows = []
    if lead:
        gens = lead[0].generations()
        outputs = {"base model": [g["zero_shot"] for g in gens],
                   MODE_NAMES[lead[0].metrics["model"]["mode"]]: [g["fine_tuned"] for g in gens]}
        for i in disagreements(outputs, limit=5):
            rows.append({"question": gens[i]["question"], "gold": " | ".join(dict.fromkeys(gens[i]["answers"])),
                         **{k: v[i] for k, v in outputs.items()}})
    out.tables["squad_examples"] = pd.DataFrame(rows)
    out.value("squad_model", instruct.model_of(lead[0]) if lead else None, "{}")
    out.value("squad_modes", ", ".join(sorted({MODE_NAMES[r.metrics["model"]["mode"]] for r in lead})) or "none", "{}")
    family = instruct.families(runs)[0]
    answers, meta = instruct.answers_by_system(family.instruct)
    shown = set(instruct.example_positions(answers, meta))
    later = [i for i in disagreements(answers, limit=len(meta)) if i not in shown][:ALPACA_EXAMPLES] if answers else []
    out.tables["alpaca_examples"] = instruct.example_rows(answers, meta, later)
    out.value("alpaca_model", family.model, "{}")
