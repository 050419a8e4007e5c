"""One module per book page: each has `page(runs) -> Page`, the numbers, tables and figures its page glues, computed
from run records (never from training). The pages in book/ hold prose and 2–4-line glue cells that call these."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import pandas as pd

from ...study.analysis import NA, join_words

__all__ = ["NA", "Page", "join_words", "threads_caveat", "threads_differ"]  # NA and join_words: the study's


def threads_differ(table: pd.DataFrame) -> bool:
    """Whether the modes of an `analysis.by_mode` table trained with different torch thread counts (the full
    fine-tuning runs run alone on every core for their memory, the others two at a time)."""
    return not table.empty and "threads" in table and table["threads"].nunique() > 1


def threads_caveat(table: pd.DataFrame) -> str:
    """Where `threads_differ`, a clause saying which modes used which count; "" where they agree."""
    if not threads_differ(table):
        return ""
    parts = [f"{join_words(systems)} with {count}"
             for count, systems in table.groupby("threads", sort=True)["system"].apply(list).items()]
    return (f" (trained with different torch thread counts: {'; '.join(parts)}, so these tokens/s compare across "
            "modes only roughly)")


@dataclass
class Page:
    """What one book page shows: text values for its prose, captioned tables and figures, each under a short key;
    glued as `{prefix}_{key}`."""

    prefix: str
    text: dict[str, str] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, alt.TopLevelMixin] = field(default_factory=dict)
    markdown: dict[str, pd.DataFrame] = field(default_factory=dict)  # tables with links, rendered as Markdown

    def value(self, key: str, value: Any, fmt: str = "{:.1f}") -> Any:
        """Keep a value for the prose, formatted; None and NaN read "n/a". Returns the value."""
        missing = value is None or (isinstance(value, numbers.Real) and math.isnan(value))
        self.text[key] = NA if missing else fmt.format(value) if isinstance(value, numbers.Number) else str(value)
        return value

    def glue_text(self) -> None:
        """Glue every text value (for `{glue:text}` in the prose)."""
        from myst_nb import glue

        for key, text in self.text.items():
            glue(f"{self.prefix}_{key}", text, display=False)

    def glue(self, key: str, digits: int = 2) -> None:
        """Glue one table or figure (for `{glue:figure}` or `{glue:}` right below the cell)."""
        from ..report import glue_chart, glue_table

        if key in self.figures:
            glue_chart(f"{self.prefix}_{key}", self.figures[key])
        elif key in self.markdown:
            from myst_nb import glue

            from ..report import markdown_table

            glue(f"{self.prefix}_{key}", markdown_table(self.markdown[key]), display=False)
        elif key in self.tables:
            glue_table(f"{self.prefix}_{key}", self.tables[key], digits)
        else:
            raise KeyError(f"page {self.prefix!r} has no table or figure {key!r}; it has "
                           f"{sorted(self.figures) + sorted(self.tables) + sorted(self.markdown)}")
