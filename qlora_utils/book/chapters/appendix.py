"""The appendix: wall time per notebook and for the whole grid, and every run's provenance (with its problems:
code outside a commit, mixed commits, machine paths)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Collection

from ...core.records import Run, busy_seconds, packing_floor_seconds, span_seconds
from ..report import provenance_frame, wall_time_table
from . import Page, join_words


PAUSE_HOURS = 1 / 60  # a span longer than the busy time by more than this had pauses worth naming
BUDGET_JOBS = 2  # runs at a time the profiles' budgets assume (`make book`'s JOBS)


def budget_sentence(busy_hours: float, budget_hours: float | None, span_hours: float | None = None) -> str:
    """The grid's elapsed time (busy: at least one run executing) against the profile's budget, in words, and the
    span from the first start to the last finish where pauses make it longer."""
    if budget_hours is None:
        verdict = "This profile states no time budget."
    elif busy_hours <= budget_hours:
        verdict = f"That is within the profile's budget of {budget_hours:g} hours."
    else:
        verdict = (f"That is over the profile's budget of {budget_hours:g} hours by {busy_hours - budget_hours:.2f} "
                   "hours: the budget is not met.")
    if span_hours is None or span_hours - busy_hours <= PAUSE_HOURS:
        return verdict
    over = budget_hours is not None and busy_hours <= budget_hours < span_hours
    return (verdict + f" From the first start to the last finish {span_hours:.2f} hours passed: the busy time leaves "
            "out the pauses when no run was executing (between sessions, or while a runner was stopped)"
            + (", and by that longer measure the budget is not met." if over else "."))


def floor_sentence(runs: list[Run], exclusive: Collection[str], budget_hours: float | None,
                   jobs: int = BUDGET_JOBS) -> str:
    """The least elapsed time any schedule of `jobs` runs at a time could reach at these runs' wall times, and
    whether the budget then asks for a better schedule or for faster (or fewer) runs."""
    if not runs:
        return ""
    floor = packing_floor_seconds(runs, exclusive, jobs) / 3600
    alone = [r for r in runs if r.name in exclusive]
    text = (f"However they are scheduled, {jobs} at a time, these runs need at least {floor:.2f} hours at their "
            f"recorded wall times (the {len(alone)} marked to run alone one after another, the other "
            f"{len(runs) - len(alone)} in {jobs} parallel streams)")
    if budget_hours is None:
        return text + "."
    if floor > budget_hours:
        return (text + f": {budget_hours:g} hours needs faster or fewer runs, not a better schedule. "
                + without_one_week(runs, exclusive, budget_hours, jobs))
    return text + f", within the {budget_hours:g}-hour budget."


def without_one_week(runs: list[Run], exclusive: Collection[str], budget_hours: float, jobs: int) -> str:
    """How far leaving out one week's runs (one notebook's) would take the least elapsed time: which weeks would
    bring it within the budget, or the least it could then be."""
    floors = {week: packing_floor_seconds([r for r in runs if Path(r.notebook).stem != week], exclusive, jobs) / 3600
              for week in sorted({Path(r.notebook).stem for r in runs})}
    fits = [week for week, hours in floors.items() if hours <= budget_hours]
    if fits:
        return (f"Leaving out the runs of {join_words(fits, 'or')} would bring it within the budget ("
                + ", ".join(f"{floors[w]:.2f} h" for w in fits) + ").")
    week = min(floors, key=floors.get)
    return (f"Leaving out one week's runs would not be enough either: the least is {floors[week]:.2f} hours, "
            f"without {week}'s.")


def speed_sentence(runs: list[Run]) -> str:
    """The machine's speed over the grid, from the probe each run took at its start (`environment.speed_probe`), per
    thread: the same grid takes longer on a slower host."""
    probes = [r.env["speed"] for r in runs if (r.env.get("speed") or {}).get("threads")]
    if not probes:
        return "No run recorded the machine's speed (the probe is newer than these runs)."
    per_thread = sorted(p["gflops"] / p["threads"] for p in probes)
    older = len(runs) - len(probes)
    return (f"The machine's speed, probed at the start of {len(probes)} run(s) (bf16 matrix products), ranged "
            f"{per_thread[0]:.0f} to {per_thread[-1]:.0f} GFLOP/s per thread (median {statistics.median(per_thread):.0f})"
            + (f"; {older} older run(s) did not record it." if older else "."))


def hosts_sentence(runs: list[Run]) -> str:
    """Which hosts the runs ran on (told apart by the platform string, which names the kernel build), with each
    host's runs, elapsed hours and dates: a grid spread over hosts of different speed times neither of them."""
    hosts: dict[str, list[Run]] = {}
    for run in runs:
        hosts.setdefault((run.env.get("hardware") or {}).get("platform") or "an unrecorded platform", []).append(run)
    if len(hosts) <= 1:
        return "Every run ran on the same host (one platform string)."
    parts = []
    for platform, group in sorted(hosts.items(), key=lambda item: min(r.status.get("started", "") for r in item[1])):
        days = sorted({r.status["started"][:10] for r in group if r.status.get("started")})
        when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "undated"
        from ...study.pilot import run_host

        kinds = sorted({run_host(r) for r in group} - {"unrecorded"})
        cpu = f"{' / '.join(kinds)}, " if kinds else ""  # the host kind: the CPU and its best vector instructions
        parts.append(f"{len(group)} on {platform} ({cpu}{busy_seconds(group) / 3600:.2f} h elapsed, {when})")
    return (f"The runs ran on {len(hosts)} hosts, told apart by their platform string: " + "; ".join(parts)
            + ". Hosts differ in speed, so a grid spread over several is timed on none of them alone.")


def page(runs: list[Run], budget_hours: float | None = None, exclusive: Collection[str] = ()) -> Page:
    """Everything the appendix shows, from every finished run of the profile, its time budget (hours) and the
    names of its runs that run alone (`exclusive`)."""
    out = Page("appendix")
    busy = out.value("busy_hours", busy_seconds(runs) / 3600, "{:.2f}")
    out.value("budget", budget_sentence(busy, budget_hours, span_seconds(runs) / 3600), "{}")
    out.value("floor", floor_sentence(runs, exclusive, budget_hours), "{}")
    out.value("speed", speed_sentence(runs), "{}")
    out.value("hosts", hosts_sentence(runs), "{}")
    out.markdown["wall_time"] = wall_time_table(runs)
    out.markdown["provenance"] = provenance_frame(runs)
    dirty = [r for r in runs if (r.commit or "").endswith("+dirty")]
    out.value("dirty", f"{len(dirty)} of the {len(runs)} runs ran with uncommitted code and are marked so in the "
                       "provenance column" if dirty else f"all {len(runs)} runs ran from a clean commit", "{}")
    return out
