"""Value checks of a profile's parameters, made before any run starts: known presets, modes, placements, kinds and
schedules; positive sizes, ranks and rates; no more training or evaluation records than the data hold; no parameter
that means nothing for its mode. Each problem names the run, the parameter, the bad value and what would be accepted.
The names accepted come from the modules that define them, imported when a profile is first checked (not when a
runner starts: they pull in the model stack)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

KINDS = {"week3_scaling": ("efficiency", "accuracy", "bench"), "week6_alpacaeval_efficiency": ("instruct", "efficiency",
                                                                                       "winrates")}
REFERENCES = ("text_davinci_003", "gpt4_turbo")
POSITIVE = ("rank", "alpha", "train_examples", "batch_size", "seq_len", "steps", "max_new_tokens", "max_length",
            "judge_max_output_tokens", "length_sample", "repeats")
NON_NEGATIVE = ("eval_examples", "sanity_examples", "seed")
ADAPTER_ONLY = ("rank", "alpha", "dropout", "placement")  # mean nothing for full fine-tuning

NOTEBOOK_DATA = {  # the data each notebook reads (task, split), checked before a run starts
    "week1_setup": (("sst2", "train"), ("sst2", "validation"), ("squad", "train"), ("squad", "validation"),
                    ("alpaca", "train"), ("alpaca_eval", "text_davinci_003")),
    "week2_sst2_baseline": (("sst2", "train"), ("sst2", "validation")),
    "week3_scaling": (("sst2", "train"), ("sst2", "validation")),
    "week4_squad": (("squad", "train"), ("squad", "validation")),
    "week5_ablations": (("sst2", "train"), ("sst2", "validation")),
    "week6_alpacaeval_efficiency": (("alpaca", "train"), ("alpaca_eval", "text_davinci_003"),
                                    ("alpaca_eval", "gpt4_turbo")),
}


def _choice(options: Any) -> Callable[[Any], str | None]:
    names = sorted(options)
    return lambda v: None if v in options else f"is not one of: {', '.join(map(str, names))}"


def _positive(v: Any) -> str | None:
    if isinstance(v, str) and _number(v) is not None:  # YAML 1.1 reads 3e-05 (no dot) as text
        return f"is text, not a number: write it with a dot, e.g. {_number(v):.1e}".replace("e-0", "e-")
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else "must be positive"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _non_negative(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "must be 0 or more"


def _judge(v: Any) -> str | None:
    from ..core.models import PRESETS

    kind, _, name = str(v).partition(":")
    if kind == "openai" and name:
        return None
    if kind == "local" and name in PRESETS:
        return None
    return "must be local:PRESET (a preset of qlora_utils.core.models) or openai:MODEL"


def _presets(v: Any) -> str | None:
    from ..core.models import PRESETS

    bad = [p for p in v if p not in PRESETS] if isinstance(v, list) else [v]
    return f"names unknown preset(s) {bad}" if bad else None


@functools.cache
def checks() -> dict[str, Callable[[Any], str | None]]:
    """The check of each parameter's value, by name."""
    from transformers import SchedulerType

    from ..core.adapters import PLACEMENTS
    from ..study.bench import VARIANTS
    from ..core.models import MODES, PRESETS

    return {
        "preset": _choice(PRESETS), "model": _choice(PRESETS), "mode": _choice(MODES), "placement": _choice(PLACEMENTS),
        "scheduler": _choice({t.value for t in SchedulerType}), "learning_rate": _positive, "epochs": _positive,
        "dropout": lambda v: None if isinstance(v, (int, float)) and 0 <= v < 1 else "must be in [0, 1)",
        "judge": _judge, "table_presets": _presets, "peft_check_presets": _presets,
        "references": lambda v: None if isinstance(v, list) and v and set(v) <= set(REFERENCES)
        else f"must be a non-empty list of {list(REFERENCES)}",
        "variants": lambda v: None if isinstance(v, list) and v and set(v) <= set(VARIANTS)
        else f"must be a non-empty list of {list(VARIANTS)}",
        "ranks": lambda v: None if isinstance(v, list) and v and all(_positive(r) is None for r in v)
        else "must be a non-empty list of positive ranks",
        **{name: _positive for name in POSITIVE}, **{name: _non_negative for name in NON_NEGATIVE},
    }


def value_problems(name: str, notebook: str, parameters: dict[str, Any], explicit: tuple[str, ...],
                   earlier: list[str]) -> list[str]:
    """Every problem with the values of one run's parameters (empty when they are all acceptable)."""
    stem = Path(notebook).stem
    problems = []
    for key, value in parameters.items():
        check = checks().get(key)
        if key == "kind" and stem in KINDS:
            check = _choice(KINDS[stem])
        if key == "instruct_runs":
            unknown = [r for r in value if r not in earlier] if isinstance(value, list) else [value]
            if unknown:
                problems.append(f"run {name!r}: instruct_runs names {unknown}, which are no earlier run of the "
                                "profile")
            continue
        try:
            problem = check(value) if check is not None else None
        except TypeError:
            problem = "has the wrong type"
        if problem is not None:
            problems.append(f"run {name!r}: {key}={value!r} {problem}")
    problems += _eval_size_problems(name, stem, parameters.get("eval_examples"))
    problems += _train_size_problems(name, stem, parameters.get("train_examples"), parameters.get("min_words") or 0)
    if parameters.get("mode") == "full":
        meaningless = [k for k in ADAPTER_ONLY if k in explicit]
        if meaningless:
            problems.append(f"run {name!r}: {', '.join(meaningless)} mean(s) nothing for mode 'full' (no adapters); "
                            "remove them")
    return problems


def _eval_size_problems(name: str, stem: str, eval_examples: Any) -> list[str]:
    """eval_examples larger than the evaluation split its notebook reads (0 means the whole split)."""
    from ..core.data import EVAL_SIZES
    limit = min((EVAL_SIZES[split] for split in NOTEBOOK_DATA.get(stem, ()) if split in EVAL_SIZES), default=None)
    if limit is None or not isinstance(eval_examples, int) or eval_examples <= limit:
        return []
    return [f"run {name!r}: eval_examples={eval_examples} is more than the {limit} records of {stem}'s evaluation "
            f"split; use at most {limit}, or 0 for all of them"]


def _train_size_problems(name: str, stem: str, train_examples: Any, min_words: Any = 0) -> list[str]:
    """train_examples larger than the training pool its notebook draws from (`data.train_pool`)."""
    from ..core.data import train_pool
    from ..locations import DATA_DIR_ENV
    tasks = [task for task, split in NOTEBOOK_DATA.get(stem, ()) if split == "train"]
    if len(tasks) != 1 or not isinstance(train_examples, int) or isinstance(train_examples, bool):
        return []
    limit, where, hub = train_pool(tasks[0], min_words if isinstance(min_words, int) else 0)
    if train_examples <= limit:
        return []
    more = f", or unset {DATA_DIR_ENV} to draw from the Hub's {hub}" if hub and train_examples <= hub else ""
    return [f"run {name!r}: train_examples={train_examples} is more than the {limit} {tasks[0]} training records it "
            f"can draw from ({where}); use at most {limit}{more}"]
