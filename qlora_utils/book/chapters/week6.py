"""The AlpacaEval and efficiency chapter (book/week6_alpacaeval_efficiency.md): instruction tuning on Alpaca and its
AlpacaEval win rates with the judge's trustworthiness, the three modes' memory and speed, and the memory planner's
validation against measured runs and its 24 GB verdicts."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

from ...core.adapters import LoraSettings, analytic_parameter_count
from ...core.design import MODE_NAMES
from ...core.records import Run, busy_seconds, summed_seconds
from ...study import gpucheck, planner
from ...study.analysis import by_mode, efficiency_frame, experiments_frame
from ...study.gpucheck import FIT_GIB, gpu_agreement, gpu_table
from ...study.headline import study_models
from ...study.instruct import (EXAMPLES, REFERENCE_COLUMN, Family, answers_by_system, example_positions, example_rows,
                               families, system_of, trust_sentence)
from ...study.inventory import config_of
from ...study.protocol import at_common_setting, primary_runs
from ...study.winrate import REFERENCES, judge_trust
from .. import figures
from ..report import chart_or_note
from . import NA, Page, threads_caveat

PREFIX = "week6"
WITHIN_PCT = 15.0  # a planner prediction within ±15 % of the measurement counts as agreeing
SMALL_BATCH_TOKENS = 256  # "a small batch": at most this many tokens per step
OFFICIAL_JUDGES = ("openai:gpt-4-1106-preview", "openai:gpt-4-turbo")  # the leaderboard's AlpacaEval 2.0 judge
WINRATE_COLUMNS = {"win rate (%)": "win_rate", "± s.e. (points)": "standard_error",
                   "length-controlled win rate (%)": "length_controlled_winrate",
                   "position consistency (%)": "position_consistency", "sanity pair (%)": "sanity_pair_win_rate",
                   "pairs judged": "n"}
WINRATE_TABLE_COLUMNS = ["system", "against", *WINRATE_COLUMNS, "judge"]
MODES_COLUMNS = {"system": "system", "seeds": "seeds", "mean": "SST-2 accuracy, mean (%)",
                 "std": "SST-2 accuracy, s.d. (points)", "trainable": "trainable parameters",
                 "trainable_pct": "trainable (%)", "peak_mib": "peak memory (MiB)", "tokens_per_s": "tokens/s",
                 "train_s": "training time (s)"}
EFFICIENCY_COLUMNS = {"run": "run", "model": "model", "mode": "mode", "parameters": "parameters",
                      "trainable %": "trainable (%)", "batch × seq": "batch × sequence length",
                      "peak MiB": "peak memory (MiB)", "tokens/s": "tokens/s",
                      "predicted GiB": "predicted before the run (GiB)", "fits": "fits the device"}
VALIDATION_COLUMNS = {"model": "model", "mode": "mode", "batch × seq": "batch × sequence length",
                      "tokens": "tokens per step", "device": "device", "predicted MiB": "predicted peak (MiB)",
                      "measured MiB": "measured peak (MiB)", "error %": "error (%)"}
LENGTH_NAMES = {"mean_chars": "mean length (characters)", "median_chars": "median length (characters)",
                "mean_words": "mean length (words)"}
LENGTH_COLUMNS = ["system", *LENGTH_NAMES.values()]
JUDGE_COLUMNS = ["answers of", "judge", "position consistency (%)", "worst sanity pair gap (points)", "comparisons",
                 "pairs judged", "reported"]
PAPER_BASE_MB, PAPER_LORA_MB = 5048, 26  # QLoRA paper, LLaMA-7B: 4-bit base and LoRA weights (MB)
FACTORY_RULE_GB = {"nf4": 6, "bf16": 16, "full": 120}  # LLaMA-Factory's rule of thumb for 7B models (GB)


def page(runs: Sequence[Run], baseline: Sequence[Run] = (), scaling: Sequence[Run] = (),
         gpu: Sequence[dict[str, Any]] | None = None) -> Page:
    """Everything the page shows: `runs` are this chapter's, `baseline` week 2's SST-2 runs (the modes compared on
    the same data and steps), `scaling` week 3's fixed-shape runs (more measurements for the planner), `gpu` the
    committed GPU checks (`gpucheck.read_records()` when None)."""
    p = Page(PREFIX)
    fams = families(runs)
    instruct = fams[0].instruct
    instruction_setup(p, instruct, fams[0].reported)
    win_rates(p, fams[0].reported)
    judges(p, fams)
    second_family(p, fams[1:])
    p.tables["winrates"] = pd.concat([winrate_table(f.reported).assign(model=f.model) for f in fams],
                                     ignore_index=True)[["model", *WINRATE_TABLE_COLUMNS]]
    p.tables["lengths"] = pd.concat([length_table(f.reported).assign(model=f.model) for f in fams],
                                    ignore_index=True)[["model", *LENGTH_COLUMNS]]
    p.tables["examples"] = examples_table(instruct)
    p.value("n_examples", len(p.tables["examples"]), "{:d}")
    p.value("examples_differ", differing_rows(p.tables["examples"]), "{:d}")
    modes(p, baseline)
    p.tables["efficiency"] = efficiency_table(runs)
    planner_validation(p, [*runs, *scaling])
    gpu_verdicts(p)
    gpu_measured(p, gpucheck.read_records() if gpu is None else gpu)
    published(p)
    wall_times(p, runs)
    return p


def judges(p: Page, fams: Sequence[Family]) -> None:
    """Every judge's trust on each model's answers (position consistency, worst sanity gap), which one is reported
    by `winrate.better_judge`'s rule, and, where two judges judged the same answers, the comparison in words."""
    rows = []
    for family in fams:
        chosen = family.reported
        for r in family.judged:
            trust = judge_trust(r.metrics)
            rows.append({"answers of": family.model, "judge": r.metrics.get("judge", {}).get("spec", NA),
                         "position consistency (%)": trust["position_consistency"],
                         "worst sanity pair gap (points)": trust["sanity_gap"],
                         "comparisons": len(r.metrics.get("win_rates", [])),
                         "pairs judged": sum(w.get("n", 0) for w in r.metrics.get("win_rates", [])),
                         "reported": "yes" if r.metrics is chosen else "no"})
    table = pd.DataFrame(rows, columns=JUDGE_COLUMNS)
    p.tables["judges"] = table
    lead = table[table["answers of"] == fams[0].model]
    p.value("n_judges", len(lead), "{:d}")
    if len(lead) < 2:
        p.value("judges_compared", "Only one judge judged these answers, so there is no choice of judge to make.")
        return
    best, others = lead[lead["reported"] == "yes"].iloc[0], lead[lead["reported"] == "no"]
    p.value("judges_compared", (
        f"On the same pairs, {best['judge']} kept its verdict when the answers swapped places in "
        f"{best['position consistency (%)']:.1f} % of pairs and its sanity pairs were at most "
        f"{best['worst sanity pair gap (points)']:.1f} points from 50 %; "
        + "; ".join(f"{o['judge']}: {o['position consistency (%)']:.1f} % and "
                    f"{o['worst sanity pair gap (points)']:.1f} points" for _, o in others.iterrows())
        + f". By the rule, the win rates above are {best['judge']}'s."))


def second_family(p: Page, fams: Sequence[Family]) -> None:
    """One sentence per further model family: its systems' win rates against the first reference, with its judge
    and that judge's position consistency (empty when there is one model)."""
    sentences = []
    for family in fams:
        model, record = family.model, family.reported
        if not record:
            continue
        first = record["win_rates"][0]["baseline"]
        rates = ", ".join(f"{w['system']} {w['win_rate']:.1f} %" for w in record["win_rates"]
                          if w["baseline"] == first)
        trust = judge_trust(record)
        sentences.append(f"For {model} (the second model family), against {REFERENCES.get(first, first)}: {rates}, "
                         f"judged by {record['judge']['spec']}, whose verdict survived the swap in "
                         f"{trust['position_consistency']:.1f} % of pairs.")
    p.value("second", " ".join(sentences))


def per_system(values: dict[str, Any], fmt: str = "{:,}") -> str:
    """One value when every system has the same, else "value (system); ..."; "n/a" when none is known."""
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return NA
    if len(set(map(str, known.values()))) == 1:
        return fmt.format(next(iter(known.values())))
    return "; ".join(f"{fmt.format(v)} ({k})" for k, v in known.items())


def decoding_text(decoding: dict[str, Any]) -> str:
    """The decoding settings in words: strategy, new-token limit, prompt."""
    parts = [decoding.get("strategy"),
             f"at most {decoding['max_new_tokens']} new tokens" if "max_new_tokens" in decoding else None,
             decoding.get("prompt")]
    return ", ".join(p for p in parts if p) or NA


def instruction_setup(p: Page, instruct: Sequence[Run], record: dict[str, Any]) -> None:
    """How the instruction-tuning runs trained and answered, and who judged them."""
    train = {system_of(r): r.metrics.get("data", {}).get("train", {}) for r in instruct}
    p.value("instruct_model", ", ".join(sorted({r.metrics.get("model", {}).get("label", NA) for r in instruct}))
            or None, "{}")
    p.value("n_train", per_system({k: v.get("records_used") for k, v in train.items()}))
    p.value("n_alpaca", per_system({k: v.get("records_read") for k, v in train.items()}))
    steps = {system_of(r): r.metrics.get("training", {}).get("steps") for r in instruct}
    batch = {system_of(r): r.metrics.get("training", {}).get("settings", {}).get("batch_size") for r in instruct}
    p.value("train_steps", per_system(steps))
    p.value("train_batch", per_system(batch))
    first = instruct[0].metrics if instruct else {}
    p.value("n_instructions", record.get("instructions", first.get("fine_tuned", {}).get("n")), "{:,}")
    p.value("n_alpacaeval", first.get("data", {}).get("eval", {}).get("records_read"), "{:,}")
    p.value("decoding", decoding_text(first.get("decoding", {})))
    judge = record.get("judge", {})
    p.value("judge", judge.get("spec", "no judge ran in this profile"))
    p.value("clipped", f"{judge.get('clipped', 0)} of {judge.get('outputs', 0)} outputs were cut to "
            f"{judge['max_output_tokens']} tokens for the judge" if judge.get("max_output_tokens") else
            "outputs were judged whole")


def winrate_table(record: dict[str, Any]) -> pd.DataFrame:
    """Every win rate of a win-rate run beside its judge, position consistency and sanity pair (in %); fields an
    older record lacks are missing (NaN), never an error."""
    rows = []
    for r in record.get("win_rates", []):
        row = {"system": r.get("system", NA), "against": REFERENCES.get(r.get("baseline"), r.get("baseline", NA))}
        for column, key in WINRATE_COLUMNS.items():
            value = r.get(key)
            row[column] = float("nan") if value is None else 100 * value if key == "position_consistency" else value
        row["judge"] = record.get("judge", {}).get("spec", NA)
        rows.append(row)
    return pd.DataFrame(rows, columns=WINRATE_TABLE_COLUMNS)


def leaderboard_sentence(spec: str | None) -> str:
    """Whether these win rates can be set beside the public AlpacaEval leaderboard (judged by GPT-4 Turbo)."""
    if spec in OFFICIAL_JUDGES:
        return "use the leaderboard's own judge (GPT-4 Turbo), so they can be set beside the public AlpacaEval numbers"
    return "are not comparable with the public AlpacaEval leaderboard, which uses GPT-4 Turbo as the judge"


def length_controlled_status(record: dict[str, Any]) -> str:
    """Whether the length-controlled win rate was computed, and why not where it was not."""
    rows = record.get("win_rates", [])
    if not rows:
        return NA
    done = sum(r.get("length_controlled_winrate") is not None for r in rows)
    if done:
        return f"was computed for {done} of {len(rows)} comparisons"
    note = next((r["length_controlled_note"] for r in rows if r.get("length_controlled_note")), "")
    return "was not computed" + (f" ({note.removeprefix('not computed: ')})" if note else "")


def win_rates(p: Page, record: dict[str, Any]) -> None:
    """One model's win rates (its reported judge's record): the chart, the judge's position consistency and sanity
    pairs, and what they allow."""
    table = winrate_table(record)
    consistency = p.value("consistency", table["position consistency (%)"].mean() if len(table) else math.nan)
    sanity = record.get("sanity_pair", {})
    p.value("sanity", "; ".join(f"{REFERENCES.get(k, k)} {v['win_rate']:.1f} %" for k, v in sanity.items()
                                if v.get("win_rate") is not None) or NA)
    gaps = [abs(v["win_rate"] - 50) for v in sanity.values() if v.get("win_rate") is not None]
    p.value("sanity_gap", max(gaps) if gaps else math.nan)
    rates = table["win rate (%)"].dropna()
    p.value("n_winrates", len(rates), "{:d}")
    p.value("winrate_low", rates.min() if len(rates) else math.nan)
    p.value("winrate_high", rates.max() if len(rates) else math.nan)
    p.value("trust", trust_sentence(consistency, max(gaps) if gaps else math.nan))
    p.value("leaderboard", leaderboard_sentence(record.get("judge", {}).get("spec")))
    p.value("length_controlled", length_controlled_status(record))
    chart = table.rename(columns={"win rate (%)": "win rate", "± s.e. (points)": "se"})
    chart = pd.concat([chart, pd.DataFrame([{"system": "sanity pair (same answers)", "against": REFERENCES.get(k, k),
                                             "win rate": v["win_rate"], "se": v.get("standard_error")}
                                            for k, v in sanity.items() if v.get("win_rate") is not None])])
    p.figures["winrate_chart"] = chart_or_note(chart.reset_index(drop=True), figures.winrates,
                                          "no win rates in this profile")


def length_table(record: dict[str, Any]) -> pd.DataFrame:
    """Output lengths per system (characters and words), which AlpacaEval judges are known to reward."""
    rows = [{"system": k, **{name: v.get(key) for key, name in LENGTH_NAMES.items()}}
            for k, v in record.get("output_lengths", {}).items()]
    return pd.DataFrame(rows, columns=LENGTH_COLUMNS)


def examples_table(instruct: Sequence[Run], limit: int = EXAMPLES) -> pd.DataFrame:
    """Side-by-side answers of one model's instruction-tuning runs at `example_positions`."""
    answers, meta = answers_by_system(instruct)
    return example_rows(answers, meta, example_positions(answers, meta, limit))


def differing_rows(table: pd.DataFrame) -> int:
    """How many side-by-side rows show answers that are not all the same."""
    systems = [c for c in table.columns if c not in ("instruction", "source data set", REFERENCE_COLUMN)]
    return int(sum(len({str(v) for v in row}) > 1 for row in table[systems].itertuples(index=False)))


def baseline_modes(baseline: Sequence[Run], model: str | None) -> pd.DataFrame:
    """Week 2's three modes on the same data and steps, for one model (the lead): each mode's runs at the plan's
    configuration, outside any group such as a sweep, at the common amount of data and schedule and the mode's most
    common learning rate."""
    frame = experiments_frame(baseline)
    if frame.empty:
        return pd.DataFrame()
    frame = frame[frame["model"] == model] if model else frame  # one model's modes, never pooled
    frame = at_common_setting(frame[frame["experiment"] == "sst2"], ["train examples", "schedule"])
    chosen = [at_common_setting(primary_runs(frame, mode), ["learning rate"]) for mode in MODE_NAMES]
    chosen = [c for c in chosen if len(c)]
    return by_mode(pd.concat(chosen)) if chosen else pd.DataFrame()


def modes(p: Page, baseline: Sequence[Run]) -> None:
    """The modes table and the memory and speed of QLoRA relative to full fine-tuning."""
    models = study_models(list(baseline))
    table = baseline_modes(baseline, models[0] if models else None)
    p.tables["modes"] = table.drop(columns=["mode", "zero_shot"], errors="ignore").rename(columns=MODES_COLUMNS)
    rows = table.set_index("mode") if len(table) else pd.DataFrame()
    both = {"nf4", "full"} <= set(rows.index)
    p.value("modes_model", models[0] if models else None, "{}")
    p.value("modes_seeds", per_system(dict(zip(table.get("system", []), table.get("seeds", [])))))
    p.value("qlora_memory_share", 100 * rows.loc["nf4", "peak_mib"] / rows.loc["full", "peak_mib"] if both
            else math.nan, "{:.0f}")
    p.value("qlora_vs_lora", lora_comparison(rows))
    p.value("qlora_speed_share", 100 * rows.loc["nf4", "tokens_per_s"] / rows.loc["full", "tokens_per_s"] if both
            else math.nan, "{:.0f}")
    p.value("speed_threads", threads_caveat(table), "{}")


def lora_comparison(rows: pd.DataFrame) -> str:
    """QLoRA's peak memory beside 16-bit LoRA's, in words ("above 16-bit LoRA's by 190 MiB (6 %)")."""
    if not {"nf4", "bf16"} <= set(rows.index):
        return NA
    qlora, lora = rows.loc["nf4", "peak_mib"], rows.loc["bf16", "peak_mib"]
    side = "above" if qlora > lora else "below"
    return f"{side} 16-bit LoRA's by {abs(qlora - lora):,.0f} MiB ({100 * abs(qlora - lora) / lora:.0f} %)"


def efficiency_table(runs: Sequence[Run]) -> pd.DataFrame:
    """This chapter's fixed-shape runs: model, mode, shape, trainable share, peak memory, tokens/s."""
    frame = efficiency_frame(runs).drop(columns=["mode code"], errors="ignore")
    return frame.rename(columns=EFFICIENCY_COLUMNS)


def validation_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The planner's predicted peak training memory against the measured one, for every fixed-shape run."""
    frame = pd.DataFrame(planner.validation_rows(list(records)), columns=list(VALIDATION_COLUMNS))
    frame["mode"] = frame["mode"].map(lambda m: MODE_NAMES.get(m, m))
    return frame.rename(columns=VALIDATION_COLUMNS)


def miss_note(table: pd.DataFrame, limit: float = WITHIN_PCT) -> str:
    """What the planner's misses have in common, when they do (a 4-bit base at a small batch on a CPU), with the
    errors of every run of that kind and of the larger 4-bit runs."""
    error = table["error (%)"].abs()
    misses = table[error > limit]
    if misses.empty:
        return ""
    four_bit = table["mode"].isin([MODE_NAMES["nf4"], MODE_NAMES["fp4"]]) & (table["device"] == "cpu")
    small = four_bit & (table["tokens per step"] <= SMALL_BATCH_TOKENS)
    if not small[misses.index].all():
        return "The misses are not confined to one mode or shape; the planner's verdicts below carry that uncertainty."
    errors = table.loc[small, "error (%)"]
    if len(errors) == 1:
        under = f"The planner's error on the one such run is {errors.iloc[0]:+.0f} %"
    elif (errors < 0).all():
        under = (f"The planner under-predicts all {len(errors)} such runs (by {-errors.max():.0f} % to "
                 f"{-errors.min():.0f} %)")
    else:
        under = f"The {len(errors)} such runs have errors from {errors.min():+.0f} % to {errors.max():+.0f} %"
    large = table[four_bit & ~small]
    within = int(large["error (%)"].abs().le(limit).sum())
    closely = (f", while {within} of {len(large)} 4-bit runs at more than {SMALL_BATCH_TOKENS} tokens per step "
               f"{'is' if within == 1 else 'are'} predicted within ±{limit:.0f} %" if len(large) else "")
    return (f"Every miss is a 4-bit base on a CPU at a small batch ({SMALL_BATCH_TOKENS} tokens per step or fewer). "
            f"{under}{closely}. This looks like a property of the CPU code path (the allocator and bitsandbytes' "
            "CPU kernels) at small batches rather than of QLoRA's memory; it is the planner's open limitation here, "
            "and the GPU measurements below (Table of GPU checks) say how its verdicts fare on GPU kernels.")


def planner_validation(p: Page, runs: Sequence[Run]) -> None:
    """Predicted against measured peak memory: the table, the figure, how many agree, and the misses."""
    table = validation_table(r.metrics for r in runs)
    p.tables["validation"] = table
    p.figures["planner"] = chart_or_note(table, figures.planner_validation, "no efficiency runs in this profile")
    error = table["error (%)"].abs()
    p.value("within", f"{int((error <= WITHIN_PCT).sum())} of {len(table)}")
    p.value("within_pct", WITHIN_PCT, "{:.0f}")
    p.value("worst_error", error.max() if len(table) else math.nan)
    misses = table[error > WITHIN_PCT]
    p.value("misses", "; ".join(f"{r['model']} {r['mode']} at {r['batch × sequence length']} ({r['error (%)']:+.0f} %)"
                                for _, r in misses.iterrows()) or "none")
    p.value("miss_note", miss_note(table))
    p.value("logit_bytes", planner.LOGIT_BYTES, "{:g}")
    p.value("workspace_mib", planner.WORKSPACE / planner.MiB, "{:.0f}")


def verdicts_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The planner's breakdown and verdict per model and mode on a GPU, with human column names (GiB)."""
    frame = pd.DataFrame(rows)
    gpu = frame["GPU GiB"].iloc[0] if len(frame) else 24.0
    frame = frame.drop(columns=["total", "GPU GiB"], errors="ignore")
    frame["mode"] = frame["mode"].map(lambda m: MODE_NAMES.get(m, m))
    frame["fits"] = frame["fits"].map({True: "yes", False: "no"})
    names = {c: f"{c} (GiB)" for c in frame.columns if c not in ("model", "mode", "fits", "predicted GiB",
                                                                  "margin GiB")}
    return frame.rename(columns={**names, "predicted GiB": "predicted peak (GiB)",
                                 "margin GiB": f"margin on {gpu:g} GB (GiB)", "fits": f"fits {gpu:g} GB"})


def mode_summary(rows: Sequence[dict[str, Any]], mode: str) -> str:
    """How many of the planned models fit in one mode, with the tightest margin or the smallest shortfall."""
    chosen = [r for r in rows if r["mode"] == mode]
    fit = [r for r in chosen if r["fits"]]
    if not chosen:
        return NA
    if len(fit) == len(chosen):
        tight = min(chosen, key=lambda r: r["margin GiB"])
        return (f"{MODE_NAMES[mode]} fits all {len(chosen)} (tightest: {tight['model']}, {tight['margin GiB']:.1f} "
                "GiB to spare)")
    if not fit:
        small = min(chosen, key=lambda r: r["predicted GiB"])
        return (f"{MODE_NAMES[mode]} fits none (even {small['model']} needs {small['predicted GiB']:.1f} GiB)")
    return (f"{MODE_NAMES[mode]} fits {len(fit)} of {len(chosen)} "
            f"({', '.join(r['model'] for r in fit)})")


def gpu_verdicts(p: Page, gpu_gib: float = 24.0) -> None:
    """Does each model fit a 24 GB GPU at the plan's settings: the table and the Qwen3-8B QLoRA answer."""
    rows = planner.gpu_verdicts(gpu_gib=gpu_gib)
    p.tables["verdicts"] = verdicts_table(rows)
    q8 = next((r for r in rows if r["model"] == "qwen3-8b" and r["mode"] == "nf4"), None)
    p.value("q8_need", q8["predicted GiB"] if q8 else math.nan)
    p.value("q8_margin", q8["margin GiB"] if q8 else math.nan)
    p.value("q8_verdict", NA if q8 is None else f"fits, with {q8['margin GiB']:.1f} GiB to spare" if q8["fits"]
            else f"does not fit: it is {-q8['margin GiB']:.1f} GiB short")
    p.value("other_modes", "; ".join(mode_summary(rows, m) for m in ("bf16", "full")))
    p.value("n_verdict_models", len(planner.VERDICT_PRESETS), "{:d}")
    settings = planner.PLAN_GPU_SETTINGS
    p.value("plan_settings", f"batch {settings['batch_size']} × {settings['seq_len']} tokens, r = "
            f"{planner.PLAN_LORA.rank} on {planner.PLAN_LORA.placement}, gradient checkpointing, paged AdamW 32-bit")


def gpu_measured(p: Page, records: Sequence[dict[str, Any]]) -> None:
    """The committed GPU checks: the table, the 8B answers measured, the planner's error there, paging, the
    end-to-end runs, and the machine and commit they ran on."""
    table = gpu_table(records)
    p.tables["gpu"] = table
    p.value("gpu_checks", len(records), "{:d}")
    first = records[0] if records else {}
    env = first.get("environment", {})
    p.value("gpu_name", env.get("hardware", {}).get("gpu"))
    p.value("gpu_commit", (env.get("git_commit") or "")[:7] or None)
    p.value("gpu_torch", env.get("versions", {}).get("torch"))

    def q8(mode: str, column: str, checkpointing: str = "yes") -> float:
        """One cell of Qwen3-8B's row in a mode (NaN where the checks have none)."""
        chosen = table[(table["model"] == "Qwen3-8B (random weights)") & (table["mode"] == MODE_NAMES[mode])
                       & (table["gradient checkpointing"] == checkpointing)][column].dropna()
        return float(chosen.iloc[0]) if len(chosen) else math.nan

    need = "whole device while training (GiB)"
    p.value("q8_allocated", q8("nf4", "PyTorch's peak (GiB)"))
    p.value("q8_device", q8("nf4", need))
    p.value("q8_device_margin", FIT_GIB - q8("nf4", need))
    p.value("q8_bf16_device", q8("bf16", need))
    p.value("q8_nockpt_device", q8("nf4", need, "no"))
    p.value("q8_bf16_margin", FIT_GIB - q8("bf16", need))
    p.value("q8_speed_share", 100 * q8("nf4", "tokens/s") / q8("bf16", "tokens/s"), "{:.0f}")
    agree, trained = gpu_agreement(table)
    p.value("gpu_verdicts_agree", f"{agree} of the {trained}")
    starts = [r["load_memory"]["cuda_device_used_at_start_mib"] for r in records
              if "cuda_device_used_at_start_mib" in r.get("load_memory", {})]
    p.value("gpu_context_gib", min(starts) / 1024 if starts else math.nan)
    four_bit = table[(table["mode"] == MODE_NAMES["nf4"]) & (table["gradient checkpointing"] == "yes")][
        "planner error (%)"].dropna()
    without = []  # the same 4-bit rows, with the planner's term for 4-bit matmul inputs left out
    for record in records:
        if record.get("experiment") == "efficiency" and record["model"]["mode"] in ("nf4", "fp4") \
                and "training" in record and record["shape"].get("gradient_checkpointing", True):
            term = planner.kbit_inputs(config_of(record["model"]["preset"]),
                                       record["shape"]["batch_size"] * record["shape"]["seq_len"]) / planner.GiB
            measured = planner.measured_peak_mib(record) / 1024
            without.append(100 * (record["fit"]["predicted_gib"] - term - measured) / measured)
    p.value("gpu_nf4_error_without_term", f"{min(without):+.0f} % to {max(without):+.0f} %" if without else NA)
    nockpt = table[table["gradient checkpointing"] == "no"]["planner error (%)"].dropna()
    p.value("gpu_nockpt_error", nockpt.iloc[0] if len(nockpt) else math.nan, "{:+.0f}")
    p.value("gpu_nf4_error", f"{four_bit.min():+.0f} % to {four_bit.max():+.0f} %" if len(four_bit) else NA)
    others = table[table["mode"] != MODE_NAMES["nf4"]]["planner error (%)"].dropna()  # all with checkpointing
    p.value("gpu_other_error", f"{others.min():+.0f} % to {others.max():+.0f} %" if len(others) else NA)
    paging = []
    for record in records:
        states = record.get("training", {}).get("optimizer_states")
        if states and record.get("experiment") == "efficiency":
            paging.append((record["model"]["mode"], states["paged_tensors"], states["tensors"], states["paged_mib"]))
    lora = [x for x in paging if x[0] != "full"]
    full = [x for x in paging if x[0] == "full"]
    p.value("gpu_lora_paged", f"{sum(x[1] for x in lora)} of {sum(x[2] for x in lora)}" if lora else NA)
    p.value("gpu_full_paged", "; ".join(f"{x[1]} of {x[2]} state tensors, {x[3] / 1024:.1f} GiB" for x in full)
            or NA)
    sst2 = next((r for r in records if r.get("experiment") == "sst2" and r["model"]["mode"] == "nf4"), None)
    p.value("gpu_e2e", NA if sst2 is None else
            f"{sst2['model']['label']}, {sst2['training']['steps']} steps of QLoRA on "
            f"{sst2['data']['train']['records_used']:,} SST-2 sentences, accuracy "
            f"{100 * sst2['zero_shot']['accuracy']:.1f} % before and {100 * sst2['fine_tuned']['accuracy']:.1f} % "
            f"after on the {sst2['fine_tuned']['n']} dev sentences")


def published(p: Page) -> None:
    """The planner against published figures for LLaMA-7B: the QLoRA paper's breakdown and LLaMA-Factory's rule."""
    llama = planner.llama_7b_config()
    lora = LoraSettings(16, 16, 0.1, "attention_all")
    p7 = planner.plan_memory(llama, "nf4", lora, batch_size=1, seq_len=512)
    mb = 1e6
    p.tables["paper"] = pd.DataFrame([
        {"quantity": "4-bit base model (weights, constants, bf16 embeddings)", "QLoRA paper (MB)": PAPER_BASE_MB,
         "planner (MB)": (p7.quantized_weights + p7.quantization_constants + p7.unquantized_weights) / mb},
        {"quantity": "LoRA weights (the paper: about 0.2 % of parameters)", "QLoRA paper (MB)": PAPER_LORA_MB,
         "planner (MB)": p7.adapters / mb},
    ])
    count = analytic_parameter_count(llama, lora)
    p.value("paper_lora_pct", 100 * count.trainable / count.total, "{:.2f}")
    factory = []
    for mode, rule in FACTORY_RULE_GB.items():
        plan = planner.plan_memory(llama, mode, None if mode == "full" else lora, batch_size=1, seq_len=512)
        factory.append({"mode": MODE_NAMES[mode], "LLaMA-Factory rule of thumb (GB)": rule,
                        "planner, batch 1 × 512 (GB)": plan.total / 1e9})
    p.tables["factory"] = pd.DataFrame(factory)


def wall_times(p: Page, runs: Sequence[Run]) -> None:
    """Minutes of runs per kind (summed wall times) and the chapter's elapsed minutes."""
    for kind in ("instruct", "winrates", "efficiency"):
        chosen = [r for r in runs if r.parameters.get("kind", "instruct") == kind]
        p.value(f"minutes_{kind}", summed_seconds(chosen) / 60, "{:.0f}")
    p.value("minutes", summed_seconds(list(runs)) / 60, "{:.0f}")
    p.value("elapsed", busy_seconds(list(runs)) / 60, "{:.0f}")
