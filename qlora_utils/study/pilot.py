"""Protocol v2's pilot and learning-rate grids, read from their runs (groups "pilot" and "lr", never pooled with the
headline): the table of training sizes and the study's size, the rates tried per arm and the one chosen, the seeds
the power calculation asks for, and the machine time of the grid they plan, per host kind."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..core.environment import host_kind
from ..core.records import Run
from . import protocol

PILOT_GROUP, LR_GROUP = "pilot", "lr"
# The decisive grid's arms: mode and adapter placement (None: every weight is trained).
ARMS = {"QLoRA q,k,v": ("nf4", "attention"), "QLoRA all linear": ("nf4", "attention_mlp"),
        "16-bit LoRA q,k,v": ("bf16", "attention"), "full fine-tuning": ("full", None)}
# Hosts whose records predate the CPU's flags, named by their kernel build as the project's session notes and
# issues identified them (the AMX Xeon that ran most Qwen runs; the AVX2-only EPYC of the later sessions).
KNOWN_HOSTS = {"fc-v1098": "Intel Xeon, AMX", "fc-v1252": "AMD EPYC, AVX2"}


def run_host(run: Run) -> str:
    """A run's host kind: from its CPU flags when recorded, else from its kernel build when known."""
    hardware = run.hardware
    kind = host_kind(hardware)
    if kind != "unrecorded" and hardware.get("cpu_flags") is not None:
        return kind
    platform = hardware.get("platform") or ""
    return next((words for build, words in KNOWN_HOSTS.items() if f"-{build}-" in platform), kind)


def arm_of(run: Run) -> str | None:
    """The grid arm a run belongs to, by its mode and placement (None for any other configuration)."""
    mode = (run.metrics.get("model") or {}).get("mode")
    placement = (run.metrics.get("lora") or {}).get("placement")
    return next((arm for arm, (m, p) in ARMS.items() if m == mode and (p is None or p == placement)), None)


def _selection_row(run: Run) -> dict[str, Any]:
    """A run's selection-split scores: zero-shot and fine-tuned accuracy, and McNemar's test between them."""
    rows = run.selection()
    before = [r["zero_shot"] == r["label"] for r in rows]
    after = [r["fine_tuned"] == r["label"] for r in rows]
    test = protocol.mcnemar(before, after) if rows and rows[0].get("zero_shot") is not None else {}
    training = run.metrics.get("training") or {}
    return {"run": run.name, "min words": int(run.parameters.get("min_words") or 0),
            "train examples": (run.metrics.get("data") or {}).get("train", {}).get("records_used"),
            "seed": run.metrics.get("seed"), "arm": arm_of(run),
            "learning rate": (training.get("settings") or {}).get("learning_rate"),
            "zero-shot %": 100 * float(np.mean(before)) if test else math.nan,
            "fine-tuned %": 100 * float(np.mean(after)) if rows else math.nan,
            "gain points": test.get("gain points", math.nan), "gained": test.get("gained"), "lost": test.get("lost"),
            "p": test.get("p", math.nan),
            "positive %": 100 * float(np.mean([r["fine_tuned"] == 1 for r in rows])) if rows else math.nan,
            "steps": training.get("steps"), "train tokens": training.get("tokens"),
            "train s": training.get("seconds"), "wall s": run.status.get("wall_seconds"),
            "tokens/s": training.get("tokens_per_second"), "threads": (run.hardware or {}).get("torch_threads"),
            "load": (training.get("memory") or {}).get("load_average_1min"),
            "host": run_host(run)}


def _rows(runs: Iterable[Run], group: str) -> pd.DataFrame:
    chosen = [r for r in runs if r.group == group and r.status.get("state") == "done"]
    return pd.DataFrame([_selection_row(r) for r in chosen]).sort_values(["train examples", "seed"]) \
        if chosen else pd.DataFrame()


def pilot_rows(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per pilot run: size, seed, zero-shot and fine-tuned selection accuracy, gain, McNemar, time, host."""
    return _rows(runs, PILOT_GROUP)


def pilot_result(rows: pd.DataFrame, min_words: int = protocol.SST2_MIN_WORDS) -> dict[str, Any]:
    """The study's size by `protocol.pilot_choice` on the seed-0 runs of the items the protocol trains on (amendment
    2.1: `min_words`), the spread over the seeds run at that size, the paired sd it implies (√2 × sd) and the seeds
    per arm by power at a margin of 3 % of the pilot's accuracy."""
    rows = rows[rows["min words"] == min_words] if len(rows) else rows
    if rows.empty:
        return {"size": None, "reason": f"no pilot run on items of {min_words}+ words has finished"}
    first = rows[rows["seed"] == 0]
    choice = protocol.pilot_choice(first.to_dict("records"))
    if choice is None:
        return {"size": None, "reason": f"no size of {sorted(first['train examples'])} gained "
                                        f"{protocol.PILOT_MIN_GAIN:g} points with p < {protocol.PILOT_ALPHA:g}"}
    size = int(choice["train examples"])
    at_size = rows[rows["train examples"] == size]["fine-tuned %"]
    sd = float(at_size.std(ddof=1)) if len(at_size) > 1 else math.nan
    paired_sd = math.sqrt(2) * sd
    margin = 3.0 * float(at_size.mean()) / 100  # the 3 % margin in points, at the pilot's own accuracy
    enough = len(at_size) >= protocol.PILOT_SD_SEEDS
    return {"size": size, "gain": choice["gain points"], "p": choice["p"], "sd seeds": len(at_size), "sd": sd,
            "paired sd": paired_sd, "margin": margin,
            "seeds": protocol.power_seeds(paired_sd, margin) if enough else None,
            "reason": None if enough else f"the spread needs {protocol.PILOT_SD_SEEDS} seeds at {size:,}; "
                                          f"{len(at_size)} ran"}


def lr_rows(runs: Iterable[Run], size: int | None = None) -> pd.DataFrame:
    """One row per learning-rate run: arm, rate, selection accuracy, time and host; with the study's `size`, the
    pilot's seed-0 run at that size joins as QLoRA q,k,v at the pilot's rate (the same run, not run twice)."""
    runs = list(runs)
    rows = _rows(runs, LR_GROUP)
    if size is not None:
        pilot = pilot_rows(runs)
        same = pilot[(pilot["train examples"] == size) & (pilot["seed"] == 0)
                     & (pilot["min words"] == protocol.SST2_MIN_WORDS)] if len(pilot) else pilot
        rows = pd.concat([rows, same], ignore_index=True) if len(same) else rows
    return rows.sort_values(["arm", "learning rate"]).reset_index(drop=True) if len(rows) else rows


def lr_choices(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per arm, `protocol.lr_choice` over the rates it tried (seed 0, the pilot's size)."""
    if rows.empty:
        return {}
    return {arm: protocol.lr_choice(dict(zip(group["learning rate"], group["fine-tuned %"])))
            for arm, group in rows.groupby("arm")}


def reference_rows(runs: Iterable[Run], preset: str = "qwen2.5-coder-0.5b-instruct") -> pd.DataFrame:
    """The committed headline and ablation SST-2 runs of a model (outside the pilot and rate grids), with arm, wall
    time, training tokens/s and host kind: what the estimate scales from."""
    chosen = [r for r in runs if r.status.get("state") == "done" and r.group is None and r.metrics.get("experiment") == "sst2"
              and (r.metrics.get("model") or {}).get("preset") == preset and "training" in r.metrics]
    return pd.DataFrame([{"run": r.name, "arm": arm_of(r), "wall s": r.status.get("wall_seconds"),
                          "tokens/s": r.metrics["training"].get("tokens_per_second"),
                          "threads": (r.hardware or {}).get("torch_threads"), "host": run_host(r)}
                         for r in chosen if arm_of(r)])


def arm_costs(reference: pd.DataFrame) -> dict[str, float]:
    """Each arm's wall time relative to QLoRA q,k,v: the median over the host kinds that ran both of the ratio of
    their median wall times (so a ratio never mixes hosts)."""
    costs: dict[str, float] = {arm: 1.0 if arm == "QLoRA q,k,v" else math.nan for arm in ARMS}
    if reference.empty:
        return costs
    for arm in ARMS:
        ratios = []
        for _, group in reference.groupby("host"):
            mine, base = group[group["arm"] == arm]["wall s"], group[group["arm"] == "QLoRA q,k,v"]["wall s"]
            if len(mine) and len(base):
                ratios.append(float(mine.median()) / float(base.median()))
        costs[arm] = float(np.median(ratios)) if ratios else math.nan
    return costs


def estimate(pilot: pd.DataFrame, reference: pd.DataFrame, size: int, seeds: int) -> pd.DataFrame:
    """Machine hours of the decisive SST-2 grid (the four arms × `seeds` at `size`), per host kind.

    Seconds per run = the pilot's QLoRA run at `size` on the study's items, the least loaded of its seeds (its
    training, plus its scoring rescaled from the 1,000
    selection sentences it scored to the 1,372 a headline run scores: selection and dev) × the arm's cost relative to
    QLoRA (`arm_costs`) × the host kind's cost relative to the pilot's host (QLoRA q,k,v training tokens/s at one
    thread on each kind). An arm with no committed run has no estimate (NaN). Elapsed hours with `--jobs 2`: the
    adapter arms two at a time, full fine-tuning alone (`exclusive`)."""
    run = pilot[pilot["train examples"] == size]
    if "min words" in run:  # the study's items (amendment 2.1), not the first pilot's
        run = run[run["min words"] == protocol.SST2_MIN_WORDS]
    if run.empty:
        return pd.DataFrame()
    here = run.sort_values("load").iloc[0] if "load" in run and run["load"].notna().all() else run.iloc[0]
    per_run = float(here["train s"]) + (float(here["wall s"]) - float(here["train s"])) * 1372 / 1000
    single = reference[(reference["arm"] == "QLoRA q,k,v") & (reference["threads"] == here["threads"])] \
        if len(reference) else reference
    speeds = single.groupby("host")["tokens/s"].median().to_dict() if len(single) else {}
    speeds[here["host"]] = float(here["tokens/s"])
    costs = arm_costs(reference)
    rows = []
    for host, speed in speeds.items():
        factor = float(here["tokens/s"]) / float(speed)
        hours = {arm: per_run * costs[arm] * factor * seeds / 3600 for arm in ARMS}
        alone = hours["full fine-tuning"]  # runs alone on both cores; the adapter arms run two at a time
        shared = float(np.nansum([h for arm, h in hours.items() if arm != "full fine-tuning"]))
        rows.append({"host": host, "QLoRA tokens/s": speed, **{f"{arm} h": h for arm, h in hours.items()},
                     "machine h": float(np.nansum(list(hours.values()))),
                     "elapsed h, --jobs 2": shared / 2 + (0.0 if math.isnan(alone) else alone),
                     "measured here": host == here["host"]})
    return pd.DataFrame(rows)


def report(runs: list[Run]) -> str:
    """The pilot's table, its decision, the rates chosen per arm and the grid's estimate, as the `pilot` command
    prints them."""
    rows = pilot_rows(runs)
    if rows.empty:
        return "no pilot run has finished: run the profile's week2-pilot-* entries first"
    shown = rows[["min words", "train examples", "seed", "zero-shot %", "fine-tuned %", "gain points", "gained", "lost", "p", "positive %",
                  "train s", "wall s", "tokens/s", "threads", "load", "host"]]
    lines = ["Pilot (selection split, 500 items; QLoRA r=8, α=16 on q,k,v; min words 0 = every item):",
             shown.to_string(index=False, float_format=lambda x: f"{x:.4g}"), ""]
    result = pilot_result(rows)
    if result["size"] is None:
        return "\n".join(lines + [f"No study size: {result['reason']}. No grid is planned."])
    lines.append(f"Study size: {result['size']:,} training sentences (gain {result['gain']:+.1f} points, McNemar "
                 f"p = {result['p']:.2g}).")
    if result["seeds"] is None:
        lines.append(f"Seeds per arm: not yet: {result['reason']}.")
        return "\n".join(lines)
    lines.append(f"Spread at that size: sd {result['sd']:.2f} points over {result['sd seeds']} seeds, paired sd "
                 f"{result['paired sd']:.2f}; margin {result['margin']:.2f} points; seeds per arm by power: "
                 f"{result['seeds']}.")
    rates = lr_choices(lr_rows(runs, result["size"]))
    for arm in ARMS:
        choice = rates.get(arm)
        lines.append(f"  {arm}: " + ("no rate tried yet" if not choice else
                                     f"{choice['rate']:g} ({choice['accuracy']:.1f} %; {choice['rates']} "
                                     f"rate{'s' * (choice['rates'] > 1)} over {choice['span']:g}×"
                                     f"{'; at the edge: extend' if choice['at edge'] else ''})"))
    table = estimate(rows, reference_rows(runs), result["size"], result["seeds"])
    if len(table):
        at_size = rows[(rows["train examples"] == result["size"]) & (rows["min words"] == protocol.SST2_MIN_WORDS)]
        load = at_size["load"].min() if len(at_size) else None
        when = f"which trained at a 1-minute load of {float(load):.1f}" if load is not None and pd.notna(load) else \
            "whose load was not recorded"
        lines += ["", f"Estimated machine time of the SST-2 grid (4 arms × {result['seeds']} seeds), per host kind, "
                      f"scaled from the least loaded pilot run at {result['size']:,} items, {when} (a busier host trains "
                      "slower: on a quieter one these hours are an upper bound):",
                  table.to_string(index=False, float_format=lambda x: f"{x:.1f}")]
    return "\n".join(lines)


PROTOCOL_PATHS = ("qlora_utils/protocol.py", "qlora_utils/study/protocol.py")  # before and after the subpackages


def introducing_commit(text: str, path: str | tuple[str, ...] = PROTOCOL_PATHS) -> str | None:
    """The short hash of the first commit that added `text` to `path` (git's pickaxe; several paths for a file that
    moved), or None without git history: how the book names the commit that fixed a rule before the runs it judges."""
    import subprocess

    from ..core.records import REPO

    try:
        found = subprocess.run(["git", "log", "--reverse", "--format=%h", "-S", text, "--",
                                *([path] if isinstance(path, str) else path)], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found[0] if found else None


PROTOCOL_MARKS = {"v1": "class PairedRule", "v2": "PROTOCOL_VERSION = 2", "2.1": "SST2_MIN_WORDS = 9", "2.2": "BOOTSTRAP_RULE = "}  # the lines that introduced each rule


def precedes(commit: str | None, run_commit: str | None) -> bool:
    """Whether a rule's commit is an ancestor of (or is) the commit a run was made at: the rule came first."""
    import subprocess

    from ..core.records import REPO

    if not commit or not run_commit:
        return False
    done = subprocess.run(["git", "merge-base", "--is-ancestor", commit, run_commit.removesuffix("+dirty")],
                          cwd=REPO, capture_output=True)
    return done.returncode == 0


def first_recorded(run: Run) -> str | None:
    """The first commit that added this run's metrics.json to the repository (an earlier attempt of the same run
    counts: its results were seen then), or None when it was never committed."""
    import subprocess

    from ..core.records import REPO

    try:
        path = run.path.resolve().relative_to(REPO) / "metrics.json"
        found = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "--", str(path)], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return found[-1] if found else None


def preregistered(rule_commit: str | None, runs: Iterable[Run]) -> bool:
    """Whether a rule was committed before every run it judges: its commit precedes both the code each run was made
    with and the first commit of each run's results."""
    return all(precedes(rule_commit, run.commit) and precedes(rule_commit, first_recorded(run) or run.commit)
               for run in runs)
