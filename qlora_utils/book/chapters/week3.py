"""Week 3, scaling: peak memory and throughput per model size and mode (efficiency runs), and SST-2 accuracy for two
pretrained sizes (accuracy runs, only where they ran). Throughput is compared only between runs with the same torch
thread count, and runs measured on a busy machine are flagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ...core.design import MODE_NAMES
from ...core.records import Run
from ...study.analysis import efficiency_frame, experiments_frame, models_by_size, seed_summary, training_threads
from ...study.headline import NOTEBOOK, headline_frame
from ...study.protocol import SETTING_KEYS, interval
from .. import figures
from ..report import chart_or_note
from . import NA, Page

BUSY_MARGIN = 0.5  # a run is "on a busy machine" when the 1-minute load average exceeded cores + this
PEAK = "peak memory (MiB)"
SPEED = "tokens/s"


def _training_memory(run: Run) -> dict[str, Any]:
    """The training phase's memory record of a run (empty when it did not train)."""
    return (run.metrics.get("training") or {}).get("memory", {})


def load_and_cores(run: Run) -> tuple[float | None, int | None]:
    """The 1-minute load average at the end of training and the machine's cores (None where not recorded)."""
    memory = _training_memory(run)
    cores = memory.get("cpu_count") or run.env.get("hardware", {}).get("cpu_count")
    return memory.get("load_average_1min"), cores


def busy(load: float | None, cores: int | None) -> bool | None:
    """Whether a load average means a busy machine (above cores + BUSY_MARGIN); None when either is unknown."""
    if load is None or cores is None or pd.isna(load) or pd.isna(cores):
        return None
    return bool(load > cores + BUSY_MARGIN)


def memory_measure(memory: dict[str, Any]) -> str:
    """In words, which memory `headline_peak_mib` reads from one phase record."""
    if "cuda_max_allocated_mib" in memory:
        return "the CUDA allocator's peak (max allocated)"
    if "cpu_total_rss_above_baseline_mib" in memory:
        return ("the process's whole resident set at its peak (memory-mapped weights included) above the process "
                "before the model was loaded")
    if "cpu_peak_above_baseline_mib" in memory:
        return ("anonymous resident memory (memory-mapped weights excluded) above the process before the model was "
                "loaded (an older record)")
    return NA


def threads_label(n: Any) -> str:
    """A facet label for a thread count."""
    if n is None or (not isinstance(n, str) and pd.isna(n)):
        return "threads not recorded"
    if isinstance(n, str):  # a range: the run was given freed cores mid-training
        return f"{n} threads"
    return f"{int(n)} thread" + ("" if int(n) == 1 else "s")


def efficiency_table(runs: list[Run]) -> pd.DataFrame:
    """One row per efficiency run with human column names: size, mode, shape, threads, load, peak memory
    (`headline_peak_mib`), tokens/s and the planner's prediction."""
    frame = efficiency_frame(runs)
    columns = ["run", "model", "mode", "parameters", "trainable (%)", "batch × seq", "torch threads", "cores",
               "load average (1 min)", "busy machine", PEAK, SPEED, "predicted peak (GiB)", "fits in free memory"]
    if frame.empty:
        return pd.DataFrame(columns=columns + ["mode code"])
    by_name = {r.name: r for r in runs}
    extra = []
    peaks = frame["peak MiB"] if "peak MiB" in frame else [None] * len(frame)
    for name, peak in zip(frame["run"], peaks):
        run = by_name[name]
        load, cores = load_and_cores(run)
        flag = busy(load, cores)
        extra.append({"torch threads": training_threads(run), "cores": cores, "load average (1 min)": load,
                      "busy machine": None if pd.isna(peak) else "not recorded" if flag is None  # blank: no training
                      else "yes" if flag else "no"})
    frame = pd.concat([frame.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    frame = frame.rename(columns={"trainable %": "trainable (%)", "peak MiB": PEAK, "predicted GiB":
                                  "predicted peak (GiB)", "fits": "fits in free memory"})
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in ("parameters", "torch threads", "cores"):
        frame[column] = frame[column].astype("Int64")
    return frame[columns + ["mode code"]]


def measured(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of efficiency_table that trained (have a peak), with chart columns added: threads and machine."""
    ran = table.dropna(subset=[PEAK]).copy() if len(table) else table.copy()
    ran["threads"] = [threads_label(n) for n in ran["torch threads"]]
    ran["machine"] = ran["busy machine"].map({"yes": "busy machine", "no": "quiet machine"}).fillna(
        "load not recorded")
    ran["parameters"] = ran["parameters"].astype(float)
    return ran


def memory_ratio(ran: pd.DataFrame) -> dict[str, Any]:
    """16-bit LoRA over QLoRA (NF4) peak memory on the largest model where both ran, with both peaks."""
    both = [m for m in ran.sort_values("parameters")["model"].unique()
            if {"nf4", "bf16"} <= set(ran.loc[ran["model"] == m, "mode code"])] if len(ran) else []
    if not both:
        return {"model": None, "nf4": None, "bf16": None, "ratio": None}
    rows = ran[ran["model"] == both[-1]].set_index("mode code")
    nf4, bf16 = float(rows.loc["nf4", PEAK]), float(rows.loc["bf16", PEAK])
    return {"model": both[-1], "nf4": nf4, "bf16": bf16, "ratio": bf16 / nf4 if nf4 else None,
            "runs": [rows.loc["nf4", "run"], rows.loc["bf16", "run"]]}


def threads_summary(ran: pd.DataFrame) -> str:
    """Which models ran with which thread count, e.g. "2 threads: Qwen2.5-0.5B (3 runs); 1 thread: ..."."""
    parts = []
    for label, group in ran.groupby("threads", sort=False):
        models = ", ".join(dict.fromkeys(group.sort_values("parameters")["model"]))
        parts.append(f"{label} for {models} ({len(group)} run{'s' if len(group) != 1 else ''})")
    return "; ".join(parts) or NA


def speed_pairs(ran: pd.DataFrame) -> str:
    """QLoRA's tokens/s against 16-bit LoRA's, per model, only where both ran with the same thread count."""
    parts = []
    for (model, label), group in ran.groupby(["model", "threads"], sort=False):
        modes = group.set_index("mode code")
        if {"nf4", "bf16"} <= set(modes.index):
            busy_note = " (measured on a busy machine)" if (modes.loc[["nf4", "bf16"], "machine"]
                                                            == "busy machine").any() else ""
            parts.append(f"{model} with {label}: QLoRA {modes.loc['nf4', SPEED]:.1f} against 16-bit LoRA "
                         f"{modes.loc['bf16', SPEED]:.1f} tokens/s{busy_note}")
    return "; ".join(parts) or "no model ran both modes with the same thread count"


SCALING_COLUMNS = {"model": "model", "mode": "mode", "parameters": "parameters", "seeds": "seeds",
                   "mean": "dev accuracy (%)", "std": "std over seeds (points)", "zero_shot": "zero-shot (%)",
                   "trainable_pct": "trainable (%)", "peak_mib": PEAK, "tokens_per_s": SPEED}
FIT_SEQ_LEN = 128  # a long SST-2 row under a chat template (tokens), for the planner's full fine-tuning prediction


def scaling_frame(runs: list[Run], baseline: Sequence[Run] = ()) -> pd.DataFrame:
    """The accuracy-scaling runs (week 3, `kind: accuracy`) and the week 2 headline runs (among `runs` and
    `baseline`) of the other sizes at the same setting (training sentences, learning rate, schedule), mode and
    seeds: one row per run."""
    scaling = experiments_frame([r for r in runs if Path(r.notebook).stem == "week3_scaling"
                                 and r.metrics.get("experiment") == "sst2"])
    if scaling.empty:
        return scaling
    headline = headline_frame(experiments_frame([r for r in [*runs, *baseline] if Path(r.notebook).stem == NOTEBOOK]))
    keys = ["mode", "seed", "min words", *SETTING_KEYS]
    if len(headline):  # the larger size in the lead's design (protocol v2's study, or the first design)
        lead = headline[headline["model"] == models_by_size(headline)[0]]
        scaling = scaling[scaling["min words"].isin(set(lead["min words"]))]
    partners = headline.merge(scaling[keys].drop_duplicates(), on=keys) if len(headline) else headline
    return pd.concat([partners, scaling], ignore_index=True)


def accuracy_scaling(result: Page, runs: list[Run], baseline: Sequence[Run] = ()) -> None:
    """Accuracy per pretrained size and mode (mean over seeds), the larger size's seed-paired gain over the smaller
    per mode, and what the planner says of full fine-tuning for a size that did not run it."""
    from ...study.inventory import config_of
    from ...study.planner import GiB, plan_memory

    frame = scaling_frame(runs, baseline)
    table = seed_summary(frame, ["model", "mode"]) if len(frame) else pd.DataFrame(columns=list(SCALING_COLUMNS))
    models = models_by_size(frame)
    if len(frame):
        zero = frame.groupby(["model", "mode"])["zero-shot"].max().rename("zero_shot").reset_index()
        size = frame.groupby("model")["parameters"].max().rename("parameters").reset_index()
        table = table.merge(zero, on=["model", "mode"]).merge(size, on="model")
        order = {m: i for i, m in enumerate(models)}
        table = table.sort_values(["model", "mode"], key=lambda c: c.map(order) if c.name == "model"
                                  else c.map({m: i for i, m in enumerate(MODE_NAMES)}))
        table["mode"] = table["mode"].map(MODE_NAMES)
    result.tables["accuracy"] = table[[c for c in SCALING_COLUMNS if c in table]].rename(columns=SCALING_COLUMNS)
    large, small = (models[0], models[-1]) if len(models) > 1 else (None, None)
    result.value("scale_large", large, "{}")
    result.value("scale_small", small, "{}")
    for mode in ("nf4", "bf16"):
        pairs = frame[frame["mode"] == mode].pivot_table(index="seed", columns="model", values="quality") \
            if large else pd.DataFrame()
        pairs = pairs.dropna() if large and {large, small} <= set(pairs.columns) else pd.DataFrame()
        mean, low, high = interval(list(pairs[large] - pairs[small])) if len(pairs) else (None, None, None)
        result.value(f"scale_{mode}_seeds", len(pairs), "{:d}")
        result.value(f"scale_{mode}_gain", mean, "{:+.1f}")
        result.value(f"scale_{mode}_ci", f"{low:+.1f} to {high:+.1f}" if len(pairs) > 1 else None, "{}")
        zero = {m: frame[(frame["model"] == m) & (frame["mode"] == mode)]["zero-shot"].max() for m in (large, small)} \
            if large else {}
        gap = zero[large] - zero[small] if large and not pd.isna(zero[large]) and not pd.isna(zero[small]) else None
        result.value(f"scale_{mode}_zero_gap", gap, "{:+.1f}")
        if len(pairs) and gap is not None:  # each seed's difference after training, less the bases' difference
            mean, low, high = interval(list(pairs[large] - pairs[small] - gap))
        else:
            mean = low = high = None
        result.value(f"scale_{mode}_tuning_gap", mean, "{:+.1f}")
        result.value(f"scale_{mode}_tuning_ci", f"{low:+.1f} to {high:+.1f}" if len(pairs) > 1 and low is not None
                     else None, "{}")
    large_runs = [r for r in runs if Path(r.notebook).stem == "week3_scaling" and r.metrics.get("experiment") == "sst2"
                  and r.metrics["model"]["label"] == large]
    ran_full = ((frame["model"] == large) & (frame["mode"] == "full")).any() if len(frame) else False
    note = None
    if large_runs and not ran_full:  # the planner's figure for the full fine-tuning the larger size did not run
        run = large_runs[0]
        training = run.metrics.get("training", {})
        plan = plan_memory(config_of(run.metrics["model"]["preset"]), "full", None,
                           int(training.get("settings", {}).get("batch_size", 16)), FIT_SEQ_LEN,
                           bool(training.get("gradient_checkpointing", True)))
        states = plan.unquantized_weights + plan.gradients + plan.optimizer_states
        memory = run.env.get("hardware", {}).get("memory_gib")
        note = (f"Full fine-tuning of {large} did not run: the memory planner predicts {plan.total / GiB:.1f} GiB "
                f"at a batch of {FIT_SEQ_LEN} tokens per row (its fp32 weights, gradients and two AdamW moments "
                f"alone are {states / GiB:.1f} GiB) against this machine's "
                f"{f'{memory:.1f} GiB' if memory else 'memory'}, so it is recorded as not fitting.")
    result.value("scale_full_note", note or "", "{}")
    v = result.text
    result.value("scale_result", f"Here the two sizes are {small} and {large}. With QLoRA the larger model scores "
                 f"{v['scale_nf4_gain']} points more after fine-tuning (95 % CI {v['scale_nf4_ci']}, "
                 f"{v['scale_nf4_seeds']} seed pairs), but its base already scored {v['scale_nf4_zero_gap']} points "
                 f"more zero-shot: what fine-tuning added differs by {v['scale_nf4_tuning_gap']} points between the "
                 f"sizes (95 % CI {v['scale_nf4_tuning_ci']}). With 16-bit LoRA: {v['scale_bf16_gain']} points after "
                 f"fine-tuning ({v['scale_bf16_ci']}), {v['scale_bf16_zero_gap']} before it, so "
                 f"{v['scale_bf16_tuning_gap']} from fine-tuning ({v['scale_bf16_tuning_ci']}). {note or ''}".rstrip()
                 if large else "", "{}")


def bench_values(result: Page, runs: list[Run]) -> None:
    """The side-by-side benchmark (a `kind: bench` run): its table, and one paragraph of its figures for the prose
    (the run, its settings and load, the speed-ups, whether the losses agreed, the scoring times), or a sentence
    saying that the profile ran no benchmark, with an empty table."""
    from ...study.bench import is_noise_floor, table

    run = next((r for r in runs if r.metrics.get("experiment") == "bench"), None)
    result.tables["bench"] = table(run.metrics["bench"]) if run else pd.DataFrame(
        columns=["work", "project s", "reference s", "speed-up", "agreement", "load average (1 min)"])
    if run is None:
        result.value("bench_result", "This profile ran no benchmark (the cpu profile's week3-bench run does), so "
                     "there are no figures here and the table below is empty.")
        return
    bench = run.metrics["bench"]
    summary = bench["summary"]
    project = {row["checkpointing"]: row for row in summary
               if row["what"] == "training" and row["variant"] == "project"}
    scoring = next((row for row in summary if row["what"] == "scoring"), {})
    failed = [row for row in summary if row["what"] == "training" and not is_noise_floor(row["variant"])
              and not row["identical work"]]
    agreement = "met by every training row" if not failed else "not met by " + ", ".join(
        f"{r['variant']} with checkpointing {'on' if r['checkpointing'] else 'off'}" for r in failed)
    loads = [row["load_before"] for row in bench["rows"]]
    for ckpt, key in ((False, "off"), (True, "on")):
        result.value(f"bench_speedup_{key}", project.get(ckpt, {}).get("speed-up"), "{:.2f}")
    result.value("bench_score_s", scoring.get("project s"), "{:.1f}")
    result.value("bench_score_reference_s", scoring.get("reference s"), "{:.1f}")
    result.value("bench_score_differ", scoring.get("predictions that differ"), "{:d}")
    v = result.text
    result.value("bench_result", (
        f"The benchmark run {run.name} trained on {bench['settings']['train_examples']:,d} SST-2 sentences, each "
        f"side {bench['settings']['repeats']:d} time(s) with {bench['threads']:d} torch thread(s); the 1-minute "
        f"load average before the timed trainings ranged {min(loads):.2f} to {max(loads):.2f}. The agreement rule "
        f"was {agreement}. Speed-up with checkpointing off: {v['bench_speedup_off']}×; on: {v['bench_speedup_on']}×. "
        f"Scoring the SST-2 dev set took {v['bench_score_s']} s against the reference scorer's "
        f"{v['bench_score_reference_s']} s, with {v['bench_score_differ']} differing predictions."))


def components(result: Page, baseline: Sequence[Run]) -> None:
    """Memory by component (memory.components_by_arm) for the lead model's week 2 arms, each arm's lowest seed among
    the runs that recorded components; the run names beside the table."""
    from ...core.memory import components_by_arm
    from ...study.pilot import ARMS
    from ...study.protocol import primary_runs

    frame = experiments_frame([r for r in baseline if r.metrics.get("memory_components")])
    chosen: dict[str, Run] = {}
    if len(frame):
        lead = frame[frame["model"] == frame.sort_values("parameters")["model"].iloc[-1]]
        by_name = {r.name: r for r in baseline}
        for arm, (mode, placement) in ARMS.items():  # the study's arms, as the pilot names them
            rows = primary_runs(lead, mode, placement or "attention")
            if len(rows):
                chosen[arm] = by_name[rows.sort_values("seed")["run"].iloc[0]]
    table = pd.DataFrame(components_by_arm({arm: run.metrics for arm, run in chosen.items()}))
    result.tables["components"] = table if chosen else pd.DataFrame(columns=["component (MiB)"])
    result.value("components_runs", ", ".join(f"{arm}: {run.name}" for arm, run in chosen.items()) or NA)
    result.value("components_model", next(iter(chosen.values())).metrics["model"]["label"] if chosen else NA)
    cells = table.set_index("component (MiB)") if chosen else pd.DataFrame()
    for arm, key in (("QLoRA q,k,v", "nf4"), ("16-bit LoRA q,k,v", "bf16")):
        have = arm in cells
        result.value(f"components_frozen_{key}", cells.at["frozen weights", arm] if have else None, "{:,.0f}")
        result.value(f"components_process_{key}", cells.at["process after step 1 (VmRSS)", arm] if have else None,
                     "{:,.0f}")


def page(runs: list[Run], baseline: Sequence[Run] = ()) -> Page:
    """Everything the scaling page shows: the efficiency table and figures, the memory ratio, thread and load
    caveats on throughput, runs not started, and the accuracy table (`baseline`: week 2's runs, the smaller sizes'
    partners)."""
    result = Page("week3")
    table = efficiency_table(runs)
    ran = measured(table)
    result.tables["efficiency"] = table.drop(columns=["mode code", "run"])
    ratio = memory_ratio(ran)
    result.value("largest", ratio["model"])
    result.value("bf16_over_nf4", ratio["ratio"], "{:.1f}")
    result.value("nf4_peak", ratio["nf4"], "{:,.0f}")
    result.value("bf16_peak", ratio["bf16"], "{:,.0f}")
    names = ratio.get("runs") or (list(ran["run"]) if len(ran) else [])  # the pair, else every run that trained
    measured_runs = [r for r in runs if r.name in names]
    measures = list(dict.fromkeys(memory_measure(_training_memory(r)) for r in measured_runs))
    result.value("memory_measure", " and ".join(measures) if measures else NA)
    not_fit = table[table["fits in free memory"].fillna("yes") != "yes"] if len(table) else table
    result.value("not_fit", ", ".join(
        f"{r['model']} {r['mode']} (predicted {r['predicted peak (GiB)']:.0f} GiB)"
        if pd.notna(r["predicted peak (GiB)"]) else f"{r['model']} {r['mode']}"
        for _, r in not_fit.iterrows()) or "none")
    speed = ran.dropna(subset=[SPEED]) if len(ran) else ran
    result.value("speed_runs", len(speed), "{:d}")
    result.value("thread_counts", speed["threads"].nunique() if len(speed) else 0, "{:d}")
    result.value("threads_summary", threads_summary(speed))
    flagged = speed[speed["machine"] == "busy machine"] if len(speed) else speed
    result.value("busy_n", len(flagged), "{:d}")
    result.value("busy_runs", ", ".join(f"{r['model']} {r['mode']} (load {r['load average (1 min)']:.1f} on "
                                        f"{r['cores']} cores)" for _, r in flagged.iterrows()) or "none")
    result.value("load_missing_n", int((speed["machine"] == "load not recorded").sum()) if len(speed) else 0, "{:d}")
    result.value("busy_limit", f"cores + {BUSY_MARGIN:g}")
    result.value("speed_pairs", speed_pairs(speed))
    result.figures["memory"] = chart_or_note(ran, figures.scaling_memory, "no efficiency runs in this profile")
    result.figures["speed"] = chart_or_note(speed, figures.scaling_throughput, "no efficiency runs in this profile")
    bench_values(result, runs)
    components(result, baseline)
    accuracy_scaling(result, runs, baseline)
    earlier = any(Path(r.notebook).stem == "week3_scaling" and r.metrics.get("experiment") == "sst2" for r in runs)
    result.value("accuracy_note", "" if len(result.tables["accuracy"]) else
                 "Accuracy scaling has not yet run in the design of week 2's headline (protocol v2's study: its "
                 "runs are planned in the profile); the larger size's runs in the first design are listed in the "
                 "appendix, and are not compared with a headline of another design." if earlier else
                 "Accuracy scaling did not run in this profile: it needs two pretrained sizes (offline, "
                 "Qwen2.5-Coder-0.5B and -1.5B-Instruct; on a GPU, Qwen3-4B and Qwen3-8B in the gpu-24gb profile). "
                 "Nothing is shown for it here.")
    return result
