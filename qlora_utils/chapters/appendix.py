"""The appendix: wall time per notebook and for the whole grid, and every run's provenance (with its problems:
code outside a commit, mixed commits, machine paths)."""

from __future__ import annotations

from ..report import provenance_frame, wall_time_table
from ..runs import Run, busy_seconds
from . import Page


def page(runs: list[Run]) -> Page:
    """Everything the appendix shows, from every finished run of the profile."""
    out = Page("appendix")
    out.value("busy_hours", busy_seconds(runs) / 3600, "{:.2f}")
    out.markdown["wall_time"] = wall_time_table(runs)
    out.markdown["provenance"] = provenance_frame(runs)
    dirty = [r for r in runs if (r.commit or "").endswith("+dirty")]
    out.value("dirty", f"{len(dirty)} of the {len(runs)} runs ran with uncommitted code and are marked so in the "
                       "provenance column" if dirty else f"all {len(runs)} runs ran from a clean commit", "{}")
    return out
