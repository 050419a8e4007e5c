"""Reading run directories into tables and figures for the notebooks and the book.

Charts are Altair, rendered to static SVG with vl-convert so that they draw in a browser without network access."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import altair as alt
import pandas as pd
from IPython.display import SVG, Markdown, display

from ..core.records import Run, busy_seconds, profile_runs_dir, provenance_problems, read_runs, summed_seconds
from ..locations import REPO

alt.renderers.enable("svg")  # notebooks show charts as SVG made by vl-convert: no CDN needed
PROFILE_ENV = "QLORA_PROFILE"
MISSING_ENV = "QLORA_MISSING_RUNS"  # a partial build: the unfinished runs, which the landing page lists


def book_profile() -> str:
    """The profile whose runs the book shows ($QLORA_PROFILE, default cpu)."""
    return os.environ.get(PROFILE_ENV, "cpu")


def book_runs_dir() -> Path:
    """The run directories of that profile ($QLORA_RUNS_DIR/<profile>, default runs/<profile>)."""
    return profile_runs_dir(book_profile())


def book_runs(notebook: str | None = None) -> list[Run]:
    """The finished runs of the book's profile, optionally only those of one notebook (by stem)."""
    return read_runs(book_runs_dir(), notebook)


def run_link(run: Run, from_dir: str = "book") -> str:
    """A Markdown link from a page in from_dir to the run's executed notebook (rendered in the book's appendix)."""
    target = Path(os.path.relpath(run.path / "notebook.ipynb", REPO / from_dir))
    return f"[{run.name}]({target.as_posix()})"


def svg(chart: alt.TopLevelMixin) -> SVG:
    """A static SVG of an Altair chart, made by vl-convert."""
    import vl_convert as vlc

    return SVG(vlc.vegalite_to_svg(chart.to_dict()))


def glue_chart(name: str, chart: alt.TopLevelMixin) -> None:
    """Glue a chart (as static SVG) for `{glue:figure}`."""
    from myst_nb import glue

    glue(name, svg(chart), display=False)


def glue_value(name: str, value: Any, fmt: str = "{:.1f}") -> None:
    """Glue a number as formatted text for `{glue:text}` in prose."""
    from myst_nb import glue

    glue(name, fmt.format(value) if isinstance(value, numbers.Number) else str(value), display=False)


def styled(frame: pd.DataFrame, digits: int = 2) -> Any:
    """A table for reading: no index column, floats rounded, thousands separated, missing values as a dash."""
    floats = {}
    for c in frame.columns:
        if pd.api.types.is_float_dtype(frame[c]):
            whole = frame[c].dropna().apply(float.is_integer).all()
            floats[c] = "{:g}" if "learning rate" in str(c) else "{:,.0f}" if whole else f"{{:,.{digits}f}}"
    ints = {c: "{:,}" for c in frame.columns if pd.api.types.is_integer_dtype(frame[c])}
    return frame.style.hide(axis="index").format({**floats, **ints}, na_rep="—")


def glue_table(name: str, frame: pd.DataFrame, digits: int = 2) -> None:
    """Glue a DataFrame for `{glue:}` (rendered as an HTML table without the index)."""
    from myst_nb import glue

    glue(name, styled(frame, digits) if len(frame.columns) else frame, display=False)


def history_frame(history: Sequence[dict[str, Any]], **labels: Any) -> pd.DataFrame:
    """Per-step history as a long table (step, kind = train/eval, loss) with constant label columns added."""
    rows = []
    for entry in history:
        for key, kind in (("loss", "train"), ("eval_loss", "eval")):
            if key in entry:
                rows.append({"step": entry["step"], "kind": kind, "loss": entry[key],
                             "tokens_seen": entry.get("tokens_seen"), **labels})
    return pd.DataFrame(rows)


def loss_chart(history: Sequence[dict[str, Any]] | pd.DataFrame, title: str = "loss per step",
               color: str = "kind") -> alt.Chart:
    """Training (and evaluation) loss against optimizer step."""
    frame = history if isinstance(history, pd.DataFrame) else history_frame(history)
    return alt.Chart(frame, title=title).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="optimizer step"), y=alt.Y("loss:Q", title="cross-entropy loss"),
        color=alt.Color(f"{color}:N"), strokeDash="kind:N" if color != "kind" else alt.Undefined,
    ).properties(width=420, height=220)


def show_record(record: dict[str, Any]) -> pd.DataFrame:
    """One experiment's headline numbers as a one-column table."""
    from ..study.analysis import headline

    frame = pd.Series(headline(record), name="value").to_frame()
    display(frame)
    return frame


def provenance_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Who made each run: notebook, model and data source, seed, versions, hardware, commit, wall time."""
    rows = []
    for r in runs:
        model = r.metrics.get("model", {})
        data = r.metrics.get("data", {})
        versions = r.env.get("versions", {})
        hardware = r.env.get("hardware", {})
        rows.append({
            "run": run_link(r), "notebook": Path(r.notebook).stem, "model": model.get("label", "—"),
            "model source": model.get("source", "—"),
            "data": "; ".join(f"{k}: {v.get('source')} ({v.get('records_used')} of {v.get('records_read')})"
                              for k, v in data.items()) if isinstance(data, dict) else "—",
            "seed": r.parameters.get("seed", "—"),
            "versions": f"torch {versions.get('torch')}, transformers {versions.get('transformers')}, "
                        f"peft {versions.get('peft')}, bitsandbytes {versions.get('bitsandbytes')}",
            "hardware": hardware.get("gpu") or f"CPU × {hardware.get('cpu_count')}, "
                                               f"{hardware.get('torch_threads', '?')} thread(s)",
            "commit": (r.env.get("git_commit") or "—")[:12],
            "provenance": "; ".join(provenance_problems(r)) or "clean commit", "finished": r.status.get("finished"),
            "wall s": r.status.get("wall_seconds"),
        })
    return pd.DataFrame(rows)


def wall_time_table(runs: list[Run]) -> pd.DataFrame:
    """Per notebook, then for the whole grid: the runs, their summed wall times and the elapsed time (minutes)."""
    groups = {stem: [r for r in runs if Path(r.notebook).stem == stem]
              for stem in sorted({Path(r.notebook).stem for r in runs})}
    groups["whole grid"] = list(runs)
    return pd.DataFrame([{"notebook": name, "runs": len(group), "sum of wall times (min)": summed_seconds(group) / 60,
                          "elapsed (min)": busy_seconds(group) / 60} for name, group in groups.items()]).round(1)


def markdown_table(frame: pd.DataFrame) -> Markdown:
    """A DataFrame as a Markdown table (links stay links in the book)."""
    return Markdown(frame.to_markdown(index=False) if len(frame) else "*(no runs)*")


def placeholder_chart(message: str) -> alt.Chart:
    """A chart that only says why there is nothing to draw (for profiles where a week did not run)."""
    return alt.Chart(pd.DataFrame({"text": [message]})).mark_text(fontSize=14).encode(text="text:N").properties(
        width=420, height=60)


def chart_or_note(frame: pd.DataFrame, build: Any, message: str) -> alt.TopLevelMixin:
    """build(frame) when the frame has rows, else a placeholder saying `message`."""
    return build(frame) if len(frame) else placeholder_chart(message)


def links(runs: Iterable[Run]) -> Markdown:
    """A Markdown list linking every run's executed notebook."""
    items = [f"- {run_link(r)} ({Path(r.notebook).stem}, {r.status.get('wall_seconds', '?')} s)" for r in runs]
    return Markdown("\n".join(items) if items else "*No runs of this week in this profile.*")
