"""The appendix: wall time per notebook and for the whole grid, and every run's provenance (with its problems:
code outside a commit, mixed commits, machine paths)."""

from __future__ import annotations

from ..report import provenance_frame, wall_time_table
from ..runs import Run, busy_seconds
from . import Page


def budget_sentence(busy_hours: float, budget_hours: float | None) -> str:
    """The grid's elapsed time against the profile's budget, in words."""
    if budget_hours is None:
        return "This profile states no time budget."
    if busy_hours <= budget_hours:
        return f"That is within the profile's budget of {budget_hours:g} hours."
    return (f"That is over the profile's budget of {budget_hours:g} hours by {busy_hours - budget_hours:.2f} hours: "
            "the budget is not met.")


def page(runs: list[Run], budget_hours: float | None = None) -> Page:
    """Everything the appendix shows, from every finished run of the profile and its time budget (hours)."""
    out = Page("appendix")
    busy = out.value("busy_hours", busy_seconds(runs) / 3600, "{:.2f}")
    out.value("budget", budget_sentence(busy, budget_hours), "{}")
    out.markdown["wall_time"] = wall_time_table(runs)
    out.markdown["provenance"] = provenance_frame(runs)
    dirty = [r for r in runs if (r.commit or "").endswith("+dirty")]
    out.value("dirty", f"{len(dirty)} of the {len(runs)} runs ran with uncommitted code and are marked so in the "
                       "provenance column" if dirty else f"all {len(runs)} runs ran from a clean commit", "{}")
    return out
