"""Cross-experiment analysis: one table over every run of a profile, comparisons by mode, and the verdicts on the
plan's expectations."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..core.design import MODE_NAMES
from ..core.records import Run, read_runs
from ..speed.efficiency import headline_peak_mib
from .protocol import decide, interval, two_level_bootstrap

NA = "n/a"


def join_words(words: list[str], last: str = "and") -> str:
    """Words as prose lists them: "a", "a and b", "a, b and c" (or "a, b or c")."""
    return f" {last} ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def quality(record: dict[str, Any]) -> tuple[str | None, float | None]:
    """The headline quality metric of a record: SST-2 accuracy (%) or SQuAD F1."""
    tuned = record.get("fine_tuned") or {}
    if record.get("experiment") == "sst2":
        return "SST-2 accuracy %", 100 * tuned["accuracy"] if "accuracy" in tuned else None
    if record.get("experiment") == "squad":
        return "SQuAD F1", tuned.get("f1")
    return None, None


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The one place a run's headline numbers are read from its record: configuration, quality, efficiency."""
    metric, value = quality(record)
    lora = record.get("lora") or {}
    training = record.get("training") or {}
    settings = training.get("settings", {})
    tuned, zero = record.get("fine_tuned") or {}, record.get("zero_shot") or {}
    sst2 = record.get("experiment") == "sst2"
    return {
        "experiment": record.get("experiment"), "model": record.get("model", {}).get("label"),
        "pretrained": record.get("model", {}).get("pretrained"), "mode": record.get("model", {}).get("mode"),
        "placement": lora.get("placement", "all weights"), "rank": lora.get("rank"), "alpha": lora.get("alpha"),
        "learning rate": settings.get("learning_rate"), "schedule": settings.get("scheduler"),
        "train examples": record.get("data", {}).get("train", {}).get("records_used"),
        "metric": metric, "quality": value, "exact match": tuned.get("exact_match"),
        "selection": 100 * record["selection"]["accuracy"] if "accuracy" in record.get("selection", {}) else None,
        "selection zero-shot": 100 * record["selection_zero_shot"]["accuracy"]
        if "accuracy" in record.get("selection_zero_shot", {}) else None,
        "predicted positive %": 100 * tuned["predicted_positive_share"] if "predicted_positive_share" in tuned else None,
        "zero-shot": (100 * zero["accuracy"] if sst2 else zero.get("f1")) if zero else None,
        "trainable %": record.get("parameters", {}).get("percent"),
        "trainable": record.get("parameters", {}).get("trainable"),
        "parameters": record.get("parameters", {}).get("total"),
        "peak MiB": headline_peak_mib(training.get("memory", {})),
        "tokens/s": training.get("tokens_per_second"), "train s": training.get("seconds"),
    }


def experiments_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per training run (any notebook): its headline numbers with where and how it ran."""
    rows = []
    for run in runs:
        if "training" not in run.metrics:
            continue
        rows.append({"run": run.name, "notebook": Path(run.notebook).stem, "seed": run.parameters.get("seed"),
                     "group": run.group, "min words": run.parameters.get("min_words") or 0, **headline(run.metrics), "wall s": run.status.get("wall_seconds"),
                     "device": run.metrics["training"].get("memory", {}).get("device", "cpu"),
                     "threads": training_threads(run), "commit": run.commit,
                     "host": (run.env.get("hardware") or {}).get("platform")})  # the kernel build tells hosts apart
    return pd.DataFrame(rows)


def training_threads(run: Run) -> int | str | None:
    """The torch threads a run trained with: one count, or a range ("1–2") when a parallel grid gave it freed cores
    mid-training (`threads.follow`); records older than that give the count the run started with."""
    seen = (run.metrics.get("training") or {}).get("threads")
    if seen:
        return seen[0] if len(seen) == 1 else f"{min(seen)}–{max(seen)}"
    return (run.env.get("hardware") or run.metrics.get("environment", {}).get("hardware", {})).get("torch_threads")


def divergence_step(history: Sequence[dict[str, Any]]) -> int | None:
    """The first logged step where a training loss climbs back above the first step's (the loss of the model before
    any update) after training had halved it: training diverged there. None when it never does (batches differ, so
    the early losses before any learning may exceed the first one without counting)."""
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    start, learned = (losses[0][1] if losses else None), False
    for step, loss in losses[1:]:
        if learned and loss > start:
            return step
        learned = learned or loss < start / 2
    return None


def profile_frame(runs_dir: str | Path) -> pd.DataFrame:
    """experiments_frame over every finished run of a profile directory."""
    return experiments_frame(read_runs(Path(runs_dir)))


def mode_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Quality, memory, throughput and trainable share per experiment, model and mode (means over seeds)."""
    if frame.empty:
        return frame
    keys = ["experiment", "model", "mode", "placement", "rank"]
    agg = frame.groupby(keys, dropna=False).agg(
        quality=("quality", "mean"), quality_std=("quality", "std"), seeds=("quality", "count"),
        peak_mib=("peak MiB", "mean"), tokens_per_s=("tokens/s", "mean"), trainable_pct=("trainable %", "mean"),
    ).reset_index()
    agg["mode name"] = agg["mode"].map(MODE_NAMES)
    return agg


def runs_by_size(runs: Iterable[Run]) -> list[Run]:
    """Runs, the largest model's first (by its recorded parameter count), otherwise in the order given."""
    return sorted(runs, key=lambda r: -(r.metrics.get("parameters", {}).get("total") or 0))


def models_by_size(frame: pd.DataFrame) -> list[str]:
    """The models of a frame, largest first: the book leads with the largest pretrained model that ran the
    experiment and shows the others beside it as further families."""
    if frame.empty:
        return []
    sizes = frame.groupby("model")["parameters"].max().fillna(0)
    return sorted(sizes.index, key=lambda model: (-sizes[model], model))


def by_mode(frame: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuning mode: mean and std of quality over seeds, zero-shot, trainable share, memory, throughput."""
    if frame.empty:
        return pd.DataFrame()
    table = frame.groupby("mode").agg(
        seeds=("quality", "count"), mean=("quality", "mean"), std=("quality", "std"),
        zero_shot=("zero-shot", "max"), trainable=("trainable", "first"), trainable_pct=("trainable %", "first"),
        peak_mib=("peak MiB", "mean"), tokens_per_s=("tokens/s", "mean"), train_s=("train s", "mean"),
        threads=("threads", _thread_counts),
    ).reset_index()
    table.insert(0, "system", table["mode"].map(MODE_NAMES))
    order = {mode: i for i, mode in enumerate(MODE_NAMES)}
    return table.sort_values("mode", key=lambda s: s.map(order)).reset_index(drop=True)


def _thread_counts(threads: pd.Series) -> str:
    """The torch thread counts some runs trained with ("1", or "1/2" when they differ)."""
    return "/".join(sorted({f"{t:g}" if isinstance(t, (int, float)) else str(t) for t in threads.dropna()})) or "n/a"


def efficiency_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per efficiency run: model, mode, shape, trainable share, peak memory and tokens/s, or the planner's
    prediction for a run that was not started because it would not fit."""
    rows = []
    for run in runs:
        m = run.metrics
        if m.get("experiment") != "efficiency":
            continue
        fit = m.get("fit", {})
        row: dict[str, Any] = {"run": run.name, "model": m["model"]["label"], "mode code": m["model"]["mode"],
                               "mode": MODE_NAMES.get(m["model"]["mode"]), "predicted GiB": fit.get("predicted_gib"),
                               "fits": "yes" if fit.get("fits", True) else f"no: {fit.get('free_gib', 0):.0f} GiB free"}
        if "training" in m:
            row.update({"parameters": m["parameters"]["total"], "trainable %": m["parameters"]["percent"],
                        "batch × seq": f"{m['shape']['batch_size']} × {m['shape']['seq_len']}",
                        "peak MiB": headline_peak_mib(m["training"]["memory"]),
                        "tokens/s": m["training"]["tokens_per_second"]})
        rows.append(row)
    return pd.DataFrame(rows)


def seed_summary(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, standard deviation, min and max of quality over seeds, per configuration (`keys`)."""
    if frame.empty:
        return frame
    return frame.groupby(keys, dropna=False).agg(
        seeds=("quality", "count"), mean=("quality", "mean"), std=("quality", "std"), low=("quality", "min"),
        high=("quality", "max"), trainable_pct=("trainable %", "mean"), peak_mib=("peak MiB", "mean"),
        tokens_per_s=("tokens/s", "mean")).reset_index()


def disagreements(systems: dict[str, Sequence[Any]], limit: int = 5) -> list[int]:
    """The rule for side-by-side examples: the first `limit` positions (in the seeded evaluation order) where the
    systems' outputs are not all the same; if there are fewer, the first positions where they agree fill up."""
    columns = list(systems.values())
    n = min(len(c) for c in columns) if columns else 0
    differ = [i for i in range(n) if len({str(c[i]) for c in columns}) > 1]
    agree = [i for i in range(n) if i not in set(differ)]
    return (differ + agree)[:limit]


ERROR_KINDS = ("exact match", "answer too long (contains the gold span)", "answer too short (inside the gold span)",
               "partial overlap", "wrong span (no overlap)", "empty answer")


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text.lower().translate(_PUNCTUATION)).split())


def squad_error_kind(prediction: str | None, answers: Sequence[str]) -> str:
    """Which kind of answer a SQuAD prediction is, against its gold answers (best-matching gold first)."""
    pred = _normalize(prediction or "")
    golds = [_normalize(a) for a in answers]
    if not pred:
        return ERROR_KINDS[5]
    if pred in golds:
        return ERROR_KINDS[0]
    if any(g and g in pred for g in golds):
        return ERROR_KINDS[1]
    if any(pred in g for g in golds):
        return ERROR_KINDS[2]
    if any(set(pred.split()) & set(g.split()) for g in golds):
        return ERROR_KINDS[3]
    return ERROR_KINDS[4]


def trimmed_answer(answer: str, question: str) -> str:
    """An answer-format baseline that never sees the gold answers: the answer's first sentence, less the words it
    shares with the question (after SQuAD's normalisation), or that sentence whole when nothing else is left."""
    first = re.split(r"(?<=[.;!?])\s|\n", answer.strip(), maxsplit=1)[0]
    asked = set(_normalize(question).split())
    kept = [w for w in first.split() if _normalize(w) not in asked]
    return " ".join(kept) if any(_normalize(w) for w in kept) else first


def _token_f1(prediction: list[str], gold: list[str]) -> float:
    """SQuAD's token F1 (percent) of two normalised token lists."""
    from collections import Counter

    same = sum((Counter(prediction) & Counter(gold)).values())
    if not prediction or not gold:
        return 100.0 * (prediction == gold)
    return 0.0 if same == 0 else 100.0 * 2 * same / (len(prediction) + len(gold))


def best_span(answer: str, answers: Sequence[str]) -> str:
    """The contiguous run of an answer's words with the best SQuAD F1 against the gold answers: what a perfect
    trimmer would keep, so its score bounds what cutting the answer's format alone can reach (it uses the gold)."""
    words = answer.split()
    tokens = [_normalize(w).split() for w in words]  # normalising word by word is normalising the span
    golds = [_normalize(a).split() for a in answers]
    spans = [(i, j) for i in range(len(words)) for j in range(i + 1, len(words) + 1)]
    if not spans:
        return answer
    i, j = max(spans, key=lambda s: (max(_token_f1([t for w in tokens[s[0]:s[1]] for t in w], g) for g in golds),
                                      s[0] - s[1]))  # ties: the shortest
    return " ".join(words[i:j])


def answer_format(generations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How much of a SQuAD fine-tuning gain the answer's format alone gets: official EM and F1 (percent) of the
    zero-shot answers, of those answers trimmed without the gold (`trimmed_answer`), of their best span (`best_span`,
    a ceiling), and of the fine-tuned answers, with each one's mean length in words, over the questions with both."""
    from ..core.metrics import squad_scores

    both = [g for g in generations if g.get("zero_shot") is not None and g.get("fine_tuned") is not None]
    golds = [g["answers"] for g in both]
    answers = {"zero-shot": [g["zero_shot"] for g in both],
               "zero-shot trimmed": [trimmed_answer(g["zero_shot"], g["question"]) for g in both],
               "zero-shot best span": [best_span(g["zero_shot"], g["answers"]) for g in both],
               "fine-tuned": [g["fine_tuned"] for g in both]}
    return {"n": len(both), **{name: {**(squad_scores(texts, golds) if both else {"exact_match": None, "f1": None}),
                                      "words": float(np.mean([len(t.split()) for t in texts])) if both else None}
                               for name, texts in answers.items()}}


def squad_gain(generations: Sequence[dict[str, Any]], metric: str = "f1") -> dict[str, float]:
    """Fine-tuned minus zero-shot SQuAD `metric` (points), paired by question: the mean (equal to the difference of
    the official scores) with its 95 % t interval over the questions that have both answers; NaN when none do."""
    from ..core.metrics import squad_scores

    both = [g for g in generations if g.get("zero_shot") is not None and g.get("fine_tuned") is not None]
    differences = [squad_scores([g["fine_tuned"]], [g["answers"]])[metric]
                   - squad_scores([g["zero_shot"]], [g["answers"]])[metric] for g in both]
    mean, low, high = interval(differences)
    return {"gain": float(mean), "low": float(low), "high": float(high), "n": len(both)}


def squad_error_table(generations: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Typical errors: how many answers of each kind, zero-shot and fine-tuned, with the first fine-tuned example."""
    rows = []
    for kind in ERROR_KINDS:
        zero = [g for g in generations if g.get("zero_shot") is not None
                and squad_error_kind(g["zero_shot"], g["answers"]) == kind]
        tuned = [g for g in generations if squad_error_kind(g["fine_tuned"], g["answers"]) == kind]
        example = tuned[0] if tuned else None
        rows.append({"kind": kind, "zero-shot": len(zero), "fine-tuned": len(tuned),
                     "example question": example["question"] if example else "—",
                     "gold": " | ".join(dict.fromkeys(example["answers"])) if example else "—",
                     "fine-tuned answer": example["fine_tuned"] if example else "—"})
    return pd.DataFrame(rows)


def item_scores(run: Run) -> list[float] | None:
    """A run's per-item dev scores in points, in the evaluation set's fixed order: SST-2 100 × correct, SQuAD the
    F1 of each question (None when the run kept no per-item outputs)."""
    rows = run.generations()
    if not rows:
        return None
    if "label" in rows[0]:
        return [100.0 * (r["fine_tuned"] == r["label"]) for r in rows]
    if "fine_tuned_f1" in rows[0]:
        return [float(r["fine_tuned_f1"]) for r in rows]
    return None


def with_sentence_intervals(table: pd.DataFrame, runs: Iterable[Run]) -> pd.DataFrame:
    """Verdict rows with protocol v2's two-level bootstrap beside the seed interval (seeds and dev items resampled:
    the evaluation set's own sampling error included) and the margin's verdict on that wider interval."""

    by_name = {r.name: r for r in runs}
    lows, highs, verdicts = [], [], []
    for _, row in table.iterrows():
        names = row.get("runs") if isinstance(row.get("runs"), list) else []
        seeds = int(row["seeds"]) if "seeds" in row and not pd.isna(row.get("seeds")) else 0
        scores = [item_scores(by_name[n]) if n in by_name else None for n in names]
        if seeds < 2 or len(names) != 2 * seeds or any(s is None for s in scores) \
                or len({len(s) for s in scores}) != 1:
            lows.append(float("nan")), highs.append(float("nan")), verdicts.append(None)
            continue
        _, low, high = two_level_bootstrap(np.array(scores[:seeds]), np.array(scores[seeds:]))
        lows.append(low), highs.append(high), verdicts.append(decide(low, high, float(row["margin"])))
    return table.assign(**{"items low": lows, "items high": highs, "items verdict": verdicts})
