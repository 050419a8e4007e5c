"""Every book page's glued values, as JSON: each chapter's `page(...)` called the way its book page calls it, on the
committed runs of a profile (default cpu), and its text values, tables, Markdown tables and figure specs written out.
A refactoring that must not change the book is checked by dumping before and after and comparing the two files:

    python tests/dump_pages.py before.json && ... && python tests/dump_pages.py after.json && cmp before.json after.json
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path


def _module(*names: str):
    """The first of several module names that imports (the chapters moved between layouts)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(names[0])


def pages(profile: str = "cpu") -> dict:
    os.environ["QLORA_PROFILE"] = profile
    report = _module("qlora_utils.book.report", "qlora_utils.book.report")
    profiles = _module("qlora_utils.grid.profiles", "qlora_utils.grid.profiles")
    chapters = {name: _module(f"qlora_utils.book.chapters.{name}", f"qlora_utils.book.chapters.{name}")
                for name in ("intro", "week1", "week2", "week3", "week4", "week5", "week6", "week7", "week8",
                             "appendix")}
    runs = report.book_runs
    settings = profiles.load_profile(profile)
    intro = chapters["intro"].page
    if "baseline" in inspect.signature(intro).parameters:  # the pages it repeats are passed in (since issue 33)
        landing = intro(runs(), profile, chapters["week2"].page(runs()), chapters["week8"].page(runs()))
    else:
        landing = intro(runs(), profile)
    built = {
        "intro": landing,
        "week1": chapters["week1"].page(runs("week1_setup")),
        "week2": chapters["week2"].page(runs()),
        "week3": chapters["week3"].page(runs("week3_scaling"), baseline=runs("week2_sst2_baseline")),
        "week4": chapters["week4"].page(runs("week4_squad")),
        "week5": chapters["week5"].page(runs()),
        "week6": chapters["week6"].page(runs("week6_alpacaeval_efficiency"), baseline=runs("week2_sst2_baseline"),
                                        scaling=runs("week3_scaling")),
        "week7": chapters["week7"].page(runs()),
        "week8": chapters["week8"].page(runs()),
        "appendix": chapters["appendix"].page(runs(), budget_hours=settings.budget_hours,
                                              exclusive=settings.exclusive),
    }
    out = {}
    for name, page in built.items():
        out[name] = {
            "prefix": page.prefix,
            "text": page.text,
            "tables": {k: json.loads(v.to_json(orient="split", default_handler=str)) for k, v in page.tables.items()},
            "markdown": {k: json.loads(v.to_json(orient="split", default_handler=str))
                         for k, v in page.markdown.items()},
            "figures": {k: v.to_dict() for k, v in page.figures.items()},
        }
    return out


def count(dump: dict) -> dict[str, int]:
    """How many text values, tables and figures a dump holds."""
    return {kind: sum(len(p[kind]) for p in dump.values()) for kind in ("text", "tables", "markdown", "figures")}


if __name__ == "__main__":
    result = pages(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
    print(count(result))
