"""The instruction-tuning runs (Alpaca) and the AlpacaEval runs that judged them, which the week 6, 7 and 8 pages
read: each instructed model's runs and judges, the systems' answers side by side, and how far a judge can be
trusted."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import pandas as pd

from ..core.design import MODE_NAMES
from ..core.records import Run
from .analysis import NA, disagreements, runs_by_size
from .winrate import better_judge


EXAMPLES = 4  # side-by-side answers shown, one per AlpacaEval source data set

REFERENCE_COLUMN = "reference (text-davinci-003)"

def model_of(run: Run) -> str:
    """The label of the model a run fine-tuned (its preset where the record has no label)."""
    model = run.metrics.get("model", {})
    return model.get("label") or model.get("preset") or NA


class Family(NamedTuple):
    """One instructed model: its instruction-tuning runs and the win-rate runs that judged their answers."""

    model: str
    instruct: list[Run]
    judged: list[Run]

    @property
    def reported(self) -> dict[str, Any]:
        """The win-rate record whose judge `winrate.better_judge` picks ({} when none ran)."""
        return better_judge([r.metrics for r in self.judged]) or {}


def families(runs: Sequence[Run]) -> list[Family]:
    """Per instructed model, the largest first (the lead): its instruction-tuning runs and the win-rate runs that
    judged them (a win-rate run naming no known run goes with the lead). Always at least one family."""
    instruct = runs_by_size([r for r in runs if r.metrics.get("experiment") == "alpaca"])
    judged = [r for r in runs if r.metrics.get("experiment") == "alpacaeval"]
    models = list(dict.fromkeys(model_of(r) for r in instruct)) or [NA]
    by_name = {r.name: model_of(r) for r in instruct}

    def judged_model(run: Run) -> str:
        return next((by_name[n] for n in run.parameters.get("instruct_runs") or [] if n in by_name), models[0])

    return [Family(m, [r for r in instruct if model_of(r) == m], [r for r in judged if judged_model(r) == m])
            for m in models]


def system_of(run: Run) -> str:
    """The system name of an instruction-tuning run (its fine-tuning mode)."""
    mode = run.metrics.get("model", {}).get("mode")
    return MODE_NAMES.get(mode, mode or run.name)


def trust_sentence(consistency: float, worst_sanity_gap: float) -> str:
    """How far the judge can be trusted, from its position consistency (%) and its sanity pairs' distance from 50 %."""
    if math.isnan(consistency) and math.isnan(worst_sanity_gap):
        return "No judge ran in this profile, so there is nothing to trust yet."
    if consistency < 50 or worst_sanity_gap > 10:
        return ("Very little: the judge's preference is mostly a preference for a position, not for an answer, and "
                "differences of a point or two between systems mean nothing.")
    if consistency < 80 or worst_sanity_gap > 5:
        return "With caution: the judge is partly swayed by the order of the answers."
    return "Reasonably: the judge mostly keeps its verdict when the answers swap places and is unbiased on itself."


def answers_by_system(instruct: Sequence[Run]) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Each system's answers in the seeded evaluation order (the base model first, from the run that recorded it)
    and the instructions' metadata."""
    answers: dict[str, list[str]] = {}
    meta: list[dict[str, Any]] = []
    for run in instruct:
        gens = run.generations()
        if not gens:
            continue
        meta = meta or gens
        if "base" not in answers and gens[0].get("zero_shot") is not None:
            answers = {"base": [g.get("zero_shot") or "" for g in gens], **answers}
        answers[system_of(run)] = [g.get("fine_tuned") or "" for g in gens]
    order = ["base", *MODE_NAMES.values()]
    ranked = sorted(answers, key=lambda k: order.index(k) if k in order else len(order))
    return {k: answers[k] for k in ranked}, meta


def example_positions(answers: dict[str, list[str]], meta: Sequence[dict[str, Any]],
                      limit: int = EXAMPLES) -> list[int]:
    """The side-by-side rule: the first positions, in the seeded evaluation order, where the systems' answers
    differ, at most one per AlpacaEval source data set."""
    positions, used = [], set()
    for i in disagreements(answers, limit=len(meta)) if answers else []:
        source = meta[i].get("dataset", NA)
        if source not in used:
            used.add(source)
            positions.append(i)
        if len(positions) == limit:
            break
    return positions


def example_rows(answers: dict[str, list[str]], meta: Sequence[dict[str, Any]],
                 positions: Sequence[int]) -> pd.DataFrame:
    """The instructions at these positions with each system's answer and the reference."""
    return pd.DataFrame([{"instruction": meta[i].get("instruction", NA), "source data set": meta[i].get("dataset", NA),
                          **{k: v[i] for k, v in answers.items()}, REFERENCE_COLUMN: meta[i].get("reference", NA)}
                         for i in positions])
