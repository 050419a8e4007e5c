"""Week 2, the SST-2 baseline: the headline comparison of QLoRA, 16-bit LoRA and full fine-tuning at the plan's
configuration (judged by the protocol), the sweep around it, and every run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...core.design import MODE_NAMES
from ...core.records import Run
from ...study import pilot, protocol
from ...study.analysis import by_mode, experiments_frame, models_by_size, with_sentence_intervals
from ...study.headline import FAMILIES, NOTEBOOK, headline_frame, training_moved
from .. import figures
from ..report import history_frame, placeholder_chart
from . import NA, Page, join_words, threads_caveat

SUMMARY_COLUMNS = {"model": "model", "system": "system", "seeds": "seeds", "mean": "dev accuracy (%)", "std": "std over seeds (points)",
                   "zero_shot": "zero-shot (%)", "trainable": "trainable parameters",
                   "trainable_pct": "trainable (%)", "peak_mib": "peak memory (MiB)", "tokens_per_s": "tokens/s",
                   "train_s": "training time (s)"}
SWEEP_COLUMNS = {"model": "model", "run": "run", "mode": "mode", "seed": "seed", "learning rate": "learning rate",
                 "train examples": "training sentences",
                 "schedule": "schedule", "quality": "dev accuracy (%)", "selection": "selection-split accuracy (%)",
                 "predicted positive %": "predicted positive (%)", "train s": "training time (s)"}
VERDICT_COLUMNS = {"model": "model", "expectation": "expectation", "seeds": "paired seeds",
                   "gap": "gap, 95 % CI over seeds (points)", "items": "95 % CI over seeds and sentences",
                   "margin": "margin (points)", "verdict": "verdict", "significance": "gap vs 0",
                   "seeds to settle": "seeds to settle (80 % power)", "preregistered": "rule before the runs"}


def _interval_text(mean: float, low: float, high: float) -> str:
    """"+0.4 (−3.0 to +3.9)", or the mean alone without an interval."""
    if pd.isna(low) or pd.isna(high):
        return "n/a" if pd.isna(mean) else f"{mean:+.1f}"
    return f"{mean:+.1f} ({low:+.1f} to {high:+.1f})" if not pd.isna(mean) else f"{low:+.1f} to {high:+.1f}"


def verdict_rows(quality: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """The quality verdicts as the page shows them: the seed interval and, beside it, the interval over seeds and
    sentences (protocol v2), the margin, the verdict and whether the gap is significant."""
    if quality.empty:
        return quality
    rows = with_sentence_intervals(quality, runs)
    by_name, v1 = {r.name: r for r in runs}, pilot.introducing_commit(pilot.PROTOCOL_MARKS["v1"])
    rows["preregistered"] = ["yes" if pilot.preregistered(v1, [by_name[n] for n in names if n in by_name]) else
                             "no: results seen first" for names in rows["runs"]]
    return rows.assign(gap=[_interval_text(*v) for v in zip(rows["effect"], rows["low"], rows["high"])],
                       items=[_interval_text(float("nan"), lo, hi) + (f" ({v})" if v and v != verdict else "")
                              for lo, hi, v, verdict in zip(rows["items low"], rows["items high"],
                                                            rows["items verdict"], rows["verdict"])])
RUN_COLUMNS = {"run": "run", "model": "model", "mode": "mode", "seed": "seed", "quality": "dev accuracy (%)",
               "selection": "selection-split accuracy (%)", "zero-shot": "zero-shot (%)",
               "predicted positive %": "predicted positive (%)", "trainable %": "trainable (%)",
               "peak MiB": "peak memory (MiB)", "tokens/s": "tokens/s", "threads": "threads", "train s": "training time (s)",
               "commit": "commit"}


def _short_commit(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(commit=frame["commit"].fillna("—").str[:10]) if "commit" in frame else frame


def page(runs: list[Run]) -> Page:
    """Everything the week 2 page shows, from every finished run of the profile (week 1's dev-set statistics too):
    tables over every model, the prose's values for the lead model (the largest) and for a second family."""
    out = Page("week2")
    week2 = [r for r in runs if Path(r.notebook).stem == NOTEBOOK]
    frame = experiments_frame(week2)
    main = headline_frame(frame)
    models = models_by_size(main)  # study_models(runs), from the frame already at hand
    summaries = [by_mode(main[main["model"] == model]).assign(model=model) for model in models]
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    out.tables["summary"] = summary[["model", *[c for c in summary if c not in ("model", "mode")]]].rename(
        columns=SUMMARY_COLUMNS) if len(summary) else summary
    verdicts = protocol.verdict_table(main) if len(main) else pd.DataFrame()
    quality = verdicts[verdicts["expectation"].isin([r.expectation for r in protocol.RULES])
                       & (verdicts["task"] == "sst2")] if len(verdicts) else verdicts
    shown = verdict_rows(quality, week2)
    out.tables["verdicts"] = shown[[c for c in VERDICT_COLUMNS if c in shown]].rename(
        columns=VERDICT_COLUMNS) if len(shown) else shown
    out.value("speed_threads", threads_caveat(summaries[0]) if summaries else "", "{}")  # the lead model's modes
    for i, prefix in enumerate(FAMILIES):
        model = models[i] if i < len(models) else None
        out.value(f"{prefix}model", model, "{}")
        out.value(f"{prefix}moved", training_moved(main[main["model"] == model]) if model else None, "{}")
        gains = gain_sentence(main[main["model"] == model]) if model else None
        out.value(f"{prefix}gain_sentence", gains and (
            f"Measured the same way, {model} moved by: {gains}" if prefix else "Measured from where each mode starts "
            f"(the zero-shot accuracy of its own base, in its own precision), training moved the dev accuracy by: "
            f"{gains}"), "{}")
        _family_values(out, prefix, summary[summary["model"] == model] if model else pd.DataFrame(),
                       verdicts, model)
    out.value("min_seeds", protocol.MIN_SEEDS, "{:d}")

    out.figures["accuracy"] = figures.accuracy_by_mode(main) if len(main) else \
        placeholder_chart("no SST-2 runs in this profile")
    lead = main[main["model"] == models[0]] if models else main
    curves = pd.concat([history_frame(r.history(), run=r.name, system=MODE_NAMES[r.metrics["model"]["mode"]])
                        for r in week2 if r.name in set(lead["run"])]) if len(lead) else pd.DataFrame()
    out.figures["loss"] = figures.training_loss(curves) if len(curves) else \
        placeholder_chart("no SST-2 runs in this profile")

    _pilot(out, runs)
    _designs(out, runs, frame, main, models)
    for i, prefix in enumerate(FAMILIES):
        test = zero_shot_mcnemar(week2, main, models[i]) if i < len(models) else None
        out.value(f"{prefix}zero_shot_test", None if test is None else
                  f"McNemar p = {test['p']:.2g} over the {test['n']} dev sentences: "
                  f"{'significant' if test['p'] < 0.05 else 'not significant'}", "{}")
    _dev_and_setting(out, runs, main, models)
    _family_sentences(out)
    _sweep(out, frame, main, models)
    runs_table = frame[[c for c in RUN_COLUMNS if c in frame]] if len(frame) else frame
    out.tables["runs"] = _short_commit(runs_table).rename(columns=RUN_COLUMNS) if len(frame) else frame
    return out


def _designs(out: Page, runs: list[Run], frame: pd.DataFrame, main: pd.DataFrame, models: list[str]) -> None:
    """Which design the lead model's headline holds (protocol v2's study, with its seeds so far against the
    planned, or the first design), and the first design's size, steps and outcome for the pilot's opening."""
    lead = models[0] if models else None
    first = headline_frame(frame[frame["min words"] == 0]) if "min words" in frame else frame
    first = first[first["model"] == lead] if lead else first
    qlora = first[first["mode"] == "nf4"] if len(first) else first
    run = next((r for r in runs if len(qlora) and r.name == qlora["run"].iloc[0]), None)
    out.value("first_train_examples", qlora["train examples"].iloc[0] if len(qlora) else None, "{:,.0f}")
    out.value("first_steps", run.metrics["training"]["steps"] if run else None, "{:d}")
    out.value("first_moved", training_moved(first) if len(first) else None, "{}")
    mine = main[main["model"] == lead] if lead else main
    study = len(mine) and (mine["min words"] == protocol.SST2_MIN_WORDS).all()
    seeds = mine.groupby(["mode", "placement"])["seed"].nunique() if len(mine) else pd.Series(dtype=int)
    out.value("design", (f"protocol v2's study ({int(mine['train examples'].iloc[0]):,} training items of "
                         f"{protocol.SST2_MIN_WORDS}+ words): {int(seeds.min())} to {int(seeds.max())} of the "
                         f"{protocol.MIN_SEEDS_V2} planned seeds per arm have finished" if study else
                         "the first design (protocol v2's study has no finished run yet)") if len(mine) else None, "{}")


def _family_sentences(out: Page) -> None:
    """The prose that depends on whether a second family ran (empty where it did not)."""
    t = out.text
    second = t["second_model"] != NA
    out.value("families", f"The lead model is {t['model']}, the largest pretrained model of this build; "
              f"{t['second_model']} runs the same comparison as a second model family, with its own verdicts."
              if second else f"The model is {t['model']}.", "{}")
    out.value("second_summary", f"The second family, {t['second_model']}, scores {t['second_nf4_zero_shot']} % "
              f"zero-shot and, trained on {t['second_train_examples']} sentences, reaches {t['second_nf4_mean']} ± "
              f"{t['second_nf4_std']} % with QLoRA, {t['second_bf16_mean']} ± {t['second_bf16_std']} % with 16-bit "
              f"LoRA and {t['second_full_mean']} ± {t['second_full_std']} % with full fine-tuning." if second else "",
              "{}")
    out.value("second_verdicts", f"For {t['second_model']}: {t['second_full_sentence']}; "
              f"{t['second_lora_sentence']}." if second else "", "{}")
    out.value("zero_shot_precision", f"{t['model']} scores {t['nf4_zero_shot']} % in NF4 against "
              f"{t['bf16_zero_shot']} % for the same weights in bf16 ({t['zero_shot_test']})" + (
                  f", {t['second_model']} {t['second_nf4_zero_shot']} % against {t['second_bf16_zero_shot']} % "
                  f"({t['second_zero_shot_test']})" if second else ""), "{}")
    out.value("second_setting", f"For {t['second_model']} the setting (learning rate {t['second_lr']}, "
              f"{t['second_train_examples']} training sentences, one pass of {t['second_steps']} optimizer steps; "
              f"full fine-tuning {t['second_full_lr']}) is the middle of a wider sweep, all QLoRA with seed 0 except "
              "the runs that repeat the largest amount of data with seeds 1 and 2." if second else "", "{}")


def _family_values(out: Page, prefix: str, summary: pd.DataFrame, verdicts: pd.DataFrame, model: str | None) -> None:
    """One model's per-mode numbers and verdicts for the prose, under `prefix`."""
    stats = summary.set_index("mode") if len(summary) else pd.DataFrame()
    for mode in ("nf4", "bf16", "full"):
        for column, fmt in (("mean", "{:.1f}"), ("std", "{:.1f}"), ("zero_shot", "{:.1f}"), ("seeds", "{:.0f}"),
                            ("trainable_pct", "{:.2f}"), ("peak_mib", "{:,.0f}"), ("tokens_per_s", "{:.0f}")):
            ok = mode in stats.index and pd.notna(stats.loc[mode, column])
            out.value(f"{prefix}{mode}_{column}", stats.loc[mode, column] if ok else None, fmt)
    for key, words in (("full", "QLoRA within 3 %"), ("lora", "QLoRA within 1.5")):
        row = protocol.verdict_for(verdicts, words, model) if len(verdicts) and model else None
        out.value(f"{prefix}{key}_sentence", protocol.sentence(row) if row else None, "{}")
        out.value(f"{prefix}{key}_verdict", row["verdict"] if row else None, "{}")
        out.value(f"{prefix}{key}_margin", row.get("margin") if row else None, "{:.1f}")
        out.value(f"{prefix}{key}_significance", row.get("significance") if row else None, "{}")


def gain_sentence(rows: pd.DataFrame) -> str | None:
    """What fine-tuning added to one model per mode, in words: each seed's dev accuracy minus the zero-shot accuracy
    of the same base in the same precision, with its 95 % t interval over the seeds (None without zero-shot scores)."""
    parts, settled = [], []
    for mode, name in MODE_NAMES.items():
        mine = rows[rows["mode"] == mode]
        start = mine["zero-shot"].dropna() if "zero-shot" in mine else pd.Series(dtype=float)
        if mine.empty or start.empty:
            continue
        mean, low, high = protocol.interval((mine["quality"] - start.max()).to_list())  # as `by_mode` shows it
        ci = f"95 % CI {low:+.1f} to {high:+.1f}, " if pd.notna(low) else ""
        parts.append(f"{name} {mean:+.1f} points ({ci}{len(mine)} seed{'s' * (len(mine) > 1)})")
        if pd.notna(low) and (low > 0 or high < 0):
            settled.append(name)
    if not parts:
        return None
    reading = (f"the interval excludes zero for {join_words(settled)}" if settled else
               "one seed gives no interval yet" if all(", 1 seed)" in part for part in parts) else
               "no interval excludes zero: at this amount of training the model ends about where it started, and "
               "the comparisons between the modes are between runs that moved little")
    return f"{'; '.join(parts)}. Here {reading}."


def _dev_and_setting(out: Page, runs: list[Run], main: pd.DataFrame, models: list[str]) -> None:
    """The dev set's positive share (from week 1) and each family's training setting."""
    setup = [r for r in runs if Path(r.notebook).stem == "week1_setup"]
    dev = [d for d in (setup[-1].metrics.get("datasets", []) if setup else [])
           if d["task"] == "sst2" and d["split"] == "validation"]
    out.value("dev_positive", 100 * dev[0]["positive share"] if dev else None, "{:.0f}")
    for i, prefix in enumerate(FAMILIES):
        rows = main[main["model"] == models[i]] if i < len(models) else pd.DataFrame(columns=["mode"])
        qlora, full = rows[rows["mode"] == "nf4"], rows[rows["mode"] == "full"]
        first = qlora.iloc[0] if len(qlora) else None
        out.value(f"{prefix}train_examples", first["train examples"] if first is not None else None, "{:,.0f}")
        out.value(f"{prefix}lr", first["learning rate"] if first is not None else None, "{:g}")
        out.value(f"{prefix}full_lr", full["learning rate"].iloc[0] if len(full) else None, "{:g}")
        run = next((r for r in runs if first is not None and r.name == first["run"]), None)
        out.value(f"{prefix}steps", run.metrics["training"]["steps"] if run else None, "{:d}")
        if not prefix:
            out.value("schedule", first["schedule"] if first is not None else None, "{}")
            checkpointing = run.metrics["training"].get("gradient_checkpointing", True) if run else True
            out.value("checkpointing", "with" if checkpointing else "without", "{}")


def selected_rate(sweep: pd.DataFrame, mode: str) -> float | None:
    """The learning rate with the best selection-split accuracy among one model's seed-0 runs of a mode at its
    headline amount of data (the rule that chose the headline's rate; never the dev set)."""
    rows = sweep[(sweep["mode"] == mode) & sweep["selection"].notna()]
    return None if rows.empty else float(rows.sort_values("selection", ascending=False)["learning rate"].iloc[0])


def _sweep(out: Page, frame: pd.DataFrame, main: pd.DataFrame, models: list[str]) -> None:
    """The sweeps (profile group "sweep") beside each model's headline seed-0 runs; the learning rates the selection
    split picks; what the schedule and more data did (for the first model, by size, that swept them)."""
    if frame.empty:
        frame = main = pd.DataFrame(columns=["run", "model", "mode", "group", "seed", "train examples", "learning rate",
                                             "schedule", "selection", "quality", "predicted positive %"])
    swept = frame[frame["group"] == "sweep"]
    pairs = set(zip(swept["model"], swept["mode"])) | {(m, "nf4") for m in models}  # what each model swept
    seed0 = [r["run"] for _, r in main.iterrows() if r["seed"] == 0 and (r["model"], r["mode"]) in pairs]
    sweep = frame[(frame["group"] == "sweep") | frame["run"].isin(seed0)] if len(frame) else frame
    sweep = sweep.sort_values(["model", "mode", "train examples", "learning rate", "schedule", "seed"],
                              key=lambda c: c.map({m: i for i, m in enumerate(models)}) if c.name == "model" else c) \
        if len(sweep) else sweep
    out.tables["sweep"] = sweep[[c for c in SWEEP_COLUMNS if c in sweep]].rename(columns=SWEEP_COLUMNS) \
        if len(sweep) else sweep
    for i, prefix in enumerate(FAMILIES):
        mine = sweep[sweep["model"] == models[i]] if i < len(models) else sweep.iloc[:0]
        setting = main[(main["model"] == models[i]) & (main["mode"] == "nf4")] if i < len(models) else main.iloc[:0]
        same_data = mine[mine["train examples"] == setting["train examples"].iloc[0]] if len(setting) else mine
        for mode, key in (("nf4", "selected_lr"), ("full", "selected_full_lr")):
            out.value(f"{prefix}{key}", selected_rate(same_data, mode) if len(same_data) else None, "{:g}")
    schedules = [m for m in models if sweep[(sweep["model"] == m) & (sweep["mode"] == "nf4")]["schedule"].nunique() > 1]
    model = schedules[0] if schedules else None
    out.value("sweep_model", model, "{}")
    mine = sweep[(sweep["model"] == model) & (sweep["mode"] == "nf4")] if model else sweep.iloc[:0]
    qlora = main[(main["model"] == model) & (main["mode"] == "nf4")] if model else main.iloc[:0]
    setting = qlora.iloc[0] if len(qlora) else None
    same = mine[(mine["learning rate"] == setting["learning rate"]) & (mine["seed"] == 0)
                & (mine["train examples"] == setting["train examples"])] if setting is not None else mine
    for schedule, key in (("constant_with_warmup", "constant"), ("cosine", "cosine")):
        row = same[same["schedule"] == schedule] if len(same) else same
        out.value(f"sweep_{key}", row["quality"].iloc[0] if len(row) else None)
        out.value(f"sweep_{key}_positive", row["predicted positive %"].iloc[0] if len(row) else None, "{:.0f}")
    more = mine[(mine["learning rate"] == setting["learning rate"]) & (mine["schedule"] == setting["schedule"])
                & (mine["train examples"] > setting["train examples"])] if setting is not None else mine
    more_n = more["train examples"].max() if len(more) else None
    more = more[more["train examples"] == more_n] if len(more) else more
    out.value("more_n", more_n, "{:,.0f}")
    out.value("more_seeds", len(more), "{:d}")
    out.value("more_mean", more["quality"].mean() if len(more) else None)
    out.value("more_std", more["quality"].std() if len(more) > 1 else None)
    _sweep_sentences(out)


def _sweep_sentences(out: Page) -> None:
    """The sweep's prose figures as sentences, each saying so where this profile did not sweep it (no n/a)."""
    t = out.text
    full = (f"{t['selected_full_lr']} for full fine-tuning" if t["selected_full_lr"] != NA else
            "no rate for full fine-tuning (this profile swept none: its headline rate is set, not chosen)")
    out.value("selection_sentence", f"For {t['model']} the selection split picks {t['selected_lr']} for QLoRA (and "
              f"so 16-bit LoRA, which trains the same adapters) and {full}; the headline runs use {t['lr']} and "
              f"{t['full_lr']}." if t["selected_lr"] != NA else
              f"This profile swept no learning rate for {t['model']}: its headline runs use {t['lr']} (QLoRA and "
              f"16-bit LoRA) and {t['full_lr']} (full fine-tuning), set, not chosen.", "{}")
    out.value("schedule_result", f"For {t['sweep_model']} on seed 0, the constant schedule reached "
              f"{t['sweep_constant']} % with {t['sweep_constant_positive']} % of the dev sentences predicted positive, "
              f"the cosine decay to zero {t['sweep_cosine']} % with {t['sweep_cosine_positive']} % positive (the dev "
              f"set is {t['dev_positive']} % positive)." if t["sweep_model"] != NA else
              "This profile ran no schedule sweep, so it has no figures on it.", "{}")
    out.value("more_result", f"With {t['more_n']} training sentences instead, the plan's QLoRA configuration of "
              f"{t['sweep_model']} reaches {t['more_mean']} ± {t['more_std']} % over {t['more_seeds']} seeds; the "
              "comparisons with 16-bit LoRA and full fine-tuning above stay at equal data." if t["more_n"] != NA else
              "This profile ran no sweep with more training data, so it has no figures on it.", "{}")


PILOT_COLUMNS = {"items": "training items", "seed": "seed", "zero-shot %": "zero-shot (%)",
                 "fine-tuned %": "fine-tuned (%)", "gain points": "gain (points)", "p": "McNemar p",
                 "wall min": "wall time (min)"}
LR_COLUMNS = {"arm": "arm", "learning rate": "learning rate", "fine-tuned %": "selection accuracy (%)",
              "positive %": "predicted positive (%)", "wall min": "wall time (min)"}


def _pilot(out: Page, runs: list[Run]) -> None:
    """Protocol v2's pilot and learning-rate grids: their tables and figure, the study's size, the seeds by power,
    and the commits that fixed the rules."""
    rows = pilot.pilot_rows(runs)
    if len(rows):
        rows = rows.assign(items=[f"{n:,.0f}" + (f" ({w}+ words)" if w else " (any)")
                                  for n, w in zip(rows["train examples"], rows["min words"])],
                           **{"wall min": rows["wall s"] / 60}).sort_values(["min words", "train examples", "seed"])
    shown = rows.assign(p=rows["p"].map("{:.1g}".format)) if len(rows) else rows  # 1e-6 must not read 0.0
    out.tables["pilot"] = shown[list(PILOT_COLUMNS)].rename(columns=PILOT_COLUMNS) if len(rows) else rows
    out.value("pilot_host", join_words(sorted(set(rows["host"]))) if len(rows) else None, "{}")
    first = rows[(rows["min words"] == 0) & (rows["seed"] == 0)].head(1) if len(rows) else rows
    for key, column in (("zero", "zero-shot %"), ("tuned", "fine-tuned %"), ("gain", "gain points")):
        out.value(f"pilot_first_{key}", first[column].iloc[0] if len(first) else None)
    result = pilot.pilot_result(rows) if len(rows) else {"size": None}
    size = result["size"]
    chosen = rows[(rows["min words"] == protocol.SST2_MIN_WORDS) & (rows["train examples"] == size)
                  & (rows["seed"] == 0)] if size else rows.iloc[:0]
    out.value("pilot_size", size, "{:,d}")
    out.value("pilot_zero", chosen["zero-shot %"].iloc[0] if len(chosen) else None)
    out.value("pilot_tuned", chosen["fine-tuned %"].iloc[0] if len(chosen) else None)
    out.value("pilot_gain", result.get("gain"), "{:+.1f}")
    out.value("pilot_p", result.get("p"), "{:.1g}")
    out.value("pilot_sd_seeds", result.get("sd seeds"), "{:d}")
    out.value("pilot_sd", result.get("sd"), "{:.2f}")
    out.value("pilot_paired_sd", result.get("paired sd"), "{:.2f}")
    out.value("pilot_margin", result.get("margin"), "{:.2f}")
    out.value("pilot_seeds", result.get("seeds"), "{:d}")
    out.value("min_words", protocol.SST2_MIN_WORDS, "{:d}")
    out.value("power", 100 * protocol.POWER, "{:.0f}")
    out.value("min_seeds_v2", protocol.MIN_SEEDS_V2, "{:d}")
    out.value("pilot_min_gain", protocol.PILOT_MIN_GAIN, "{:g}")
    out.value("pilot_alpha", protocol.PILOT_ALPHA, "{:g}")
    for key, mark in pilot.PROTOCOL_MARKS.items():
        out.value(f"protocol_{key.replace('.', '_')}_commit", pilot.introducing_commit(mark), "{}")
    lr = pilot.lr_rows(runs, size) if size else pd.DataFrame()
    if len(lr):
        lr = lr.assign(**{"wall min": lr["wall s"] / 60})
    out.tables["rates_table"] = lr[list(LR_COLUMNS)].rename(columns=LR_COLUMNS) if len(lr) else lr
    out.figures["rates"] = figures.learning_rates(lr) if len(lr) else \
        placeholder_chart("no learning-rate run has finished")
    choices = pilot.lr_choices(lr)
    for arm, key in zip(pilot.ARMS, ("qlora", "qlora_all", "lora16", "full")):
        choice = choices.get(arm) or {}
        out.value(f"lr_{key}", choice.get("rate"), "{:g}")
        out.value(f"lr_{key}_state", None if not choice else "at the grid's edge: to be extended"
                  if choice["at edge"] else "chosen" if choice["complete"] else "too few rates", "{}")


def zero_shot_mcnemar(runs: list[Run], main: pd.DataFrame, model: str) -> dict | None:
    """McNemar's test between the NF4 and the bf16 base of one model, zero-shot, on the same dev sentences (the first
    headline run of each mode that scored them): whether quantization alone changed the model measurably."""
    by_name = {r.name: r for r in runs}
    correct = {}
    for mode in ("nf4", "bf16"):
        for name in main[(main["model"] == model) & (main["mode"] == mode)].sort_values("seed")["run"]:
            rows = by_name[name].generations() if name in by_name else []
            if rows and rows[0].get("zero_shot") is not None:
                correct[mode] = [r["zero_shot"] == r["label"] for r in rows]
                break
    if len(correct) < 2 or len(correct["nf4"]) != len(correct["bf16"]):
        return None
    return protocol.mcnemar(correct["bf16"], correct["nf4"])
