"""Cross-experiment analysis: SQuAD error kinds, the side-by-side rule, seed summaries, the planner's validation rows
(the verdicts are in test_protocol.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlora_utils.study.analysis import disagreements, divergence_step, seed_summary, squad_error_kind, squad_error_table
from qlora_utils.study.inventory import config_of
from qlora_utils.study.planner import GiB, plan_memory, validation_rows


@pytest.mark.parametrize("prediction, kind", [
    ("The Eiffel Tower", "exact match"),  # articles, case and punctuation are normalised away
    ("the Eiffel Tower in Paris", "answer too long (contains the gold span)"),
    ("Eiffel", "answer too short (inside the gold span)"),
    ("Tower of London", "partial overlap"),
    ("Big Ben", "wrong span (no overlap)"),
    ("", "empty answer"),
])
def test_squad_error_kinds(prediction: str, kind: str) -> None:
    assert squad_error_kind(prediction, ["Eiffel Tower.", "the iron lady"]) == kind


def test_squad_error_table_counts_every_answer() -> None:
    gens = [{"question": "q1", "answers": ["Paris"], "zero_shot": "It is Paris.", "fine_tuned": "Paris"},
            {"question": "q2", "answers": ["1999"], "zero_shot": "", "fine_tuned": "in 1998"}]
    table = squad_error_table(gens).set_index("kind")
    assert table["fine-tuned"].sum() == 2 and table["zero-shot"].sum() == 2
    assert table.loc["exact match", "fine-tuned"] == 1 and table.loc["wrong span (no overlap)", "fine-tuned"] == 1
    assert table.loc["answer too long (contains the gold span)", "zero-shot"] == 1
    assert table.loc["wrong span (no overlap)", "example question"] == "q2"


def test_disagreements_come_first_then_agreements_fill_up() -> None:
    systems = {"a": [1, 0, 1, 1], "b": [1, 1, 1, 0]}
    assert disagreements(systems, limit=3) == [1, 3, 0]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    columns = ["experiment", "model", "pretrained", "mode", "placement", "rank", "learning rate", "train examples",
               "quality", "trainable %", "trainable", "peak MiB", "tokens/s"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows]).assign(schedule="cosine")


ROWS = [("sst2", "M", True, "nf4", "attention", 8, 1e-3, 1000, q, 0.48, 645_120, 1900.0, 150.0) for q in (80, 82)] + \
       [("sst2", "M", True, "nf4", "attention", 8, 3e-3, 1000, 95, 0.48, 645_120, 1900.0, 150.0)] + \
       [("sst2", "M", True, "full", "all weights", None, 5e-5, 1000, q, 100.0, 135_000_000, 3400.0, 160.0)
        for q in (84, 84)] + \
       [("sst2", "M", True, "nf4", "attention_mlp", 16, 1e-3, 1000, q, 3.5, 4_800_000, 2100.0, 70.0) for q in (83, 83)]


def test_seed_summary_spread() -> None:
    summary = seed_summary(_frame(ROWS[:2]), ["placement", "rank"]).iloc[0]
    assert (summary["seeds"], summary["mean"], summary["low"], summary["high"]) == (2, 81.0, 80, 82)


def test_validation_rows_compare_the_plan_with_the_measurement() -> None:
    record = {"experiment": "efficiency", "model": {"preset": "tiny-qwen2", "label": "tiny", "mode": "bf16"},
              "lora": {"rank": 8, "alpha": 16, "dropout": 0.1, "placement": "attention"},
              "shape": {"batch_size": 2, "seq_len": 32, "gradient_checkpointing": True},
              "training": {"memory": {"cpu_peak_above_baseline_mib": 100.0}, "settings": {"optim": "paged_adamw_32bit"}}}
    from qlora_utils.core.adapters import LoraSettings

    plan = plan_memory(config_of("tiny-qwen2"), "bf16", LoraSettings(8, 16, 0.1, "attention"), 2, 32)
    (row,) = validation_rows([record, {"experiment": "sst2"}])
    assert row["predicted MiB"] == pytest.approx(plan.total / 2 ** 20)
    assert row["error %"] == pytest.approx(100 * (plan.total / 2 ** 20 - 100) / 100)
    assert plan.total < GiB


def test_training_threads_give_one_count_or_the_range_a_grid_gave_mid_training() -> None:
    from qlora_utils.study.analysis import training_threads
    from qlora_utils.core.records import Run

    def run(metrics: dict, env: dict) -> Run:
        return Run(Path("r"), {}, {}, metrics, env)

    assert training_threads(run({"training": {"threads": [1]}}, {})) == 1
    assert training_threads(run({"training": {"threads": [1, 2]}}, {})) == "1–2"
    assert training_threads(run({"training": {}}, {"hardware": {"torch_threads": 2}})) == 2, "older records"
    assert training_threads(run({}, {})) is None


def test_divergence_is_a_loss_above_the_first_steps() -> None:
    assert divergence_step([]) is None and divergence_step([{"step": 1, "loss": 3.0}]) is None
    falling = [{"step": s, "loss": 3.0 / s} for s in range(1, 6)]
    assert divergence_step(falling) is None
    assert divergence_step(falling + [{"step": 6, "eval_loss": 9.0}, {"step": 7, "loss": 3.5}]) == 7, \
        "evaluation losses are not training losses"
    before_learning = [{"step": 1, "loss": 8.5}, {"step": 2, "loss": 8.7}, {"step": 3, "loss": 0.6}]
    assert divergence_step(before_learning) is None, "another batch before any update is no divergence"
    halved = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 1.9}, {"step": 3, "loss": 4.5}]
    assert divergence_step(halved) == 3, "1.9 is below half of 4.0: learned, then above the start"
    back = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": 4.0}]
    assert divergence_step(back) is None, "back at the first loss is not above it"
    assert divergence_step(before_learning + [{"step": 4, "loss": 14.5}]) == 4


def test_sentence_interval_pairs_each_seeds_runs_sentence_by_sentence(tmp_path: Path) -> None:
    import json

    from chapter_fixtures import sst2_run
    from qlora_utils.study.analysis import with_sentence_intervals
    from qlora_utils.study.protocol import two_level_bootstrap

    labels = [1, 0] * 500
    runs, right = [], {"q": [600, 700, 650], "f": [800, 850, 900]}  # sentences right per seed, of 1,000
    for kind, mode in (("q", "nf4"), ("f", "full")):
        for seed, n in enumerate(right[kind]):
            run = sst2_run(tmp_path, f"{kind}{seed}", mode, seed, n / 1000)
            run.path.mkdir()
            rows = [{"label": y, "fine_tuned": y if i < n else 1 - y} for i, y in enumerate(labels)]
            (run.path / "generations.json").write_text(json.dumps(rows))
            runs.append(run)
    table = pd.DataFrame([{"seeds": 3, "margin": 2.0, "verdict": "inconclusive",
                           "runs": ["q0", "q1", "q2", "f0", "f1", "f2"]}])
    row = with_sentence_intervals(table, runs).iloc[0]
    scores = np.array([[100.0 * (i < n) for i in range(1000)] for n in right["q"] + right["f"]])
    assert (row["items low"], row["items high"]) == two_level_bootstrap(scores[:3], scores[3:])[1:]
    assert row["items verdict"] == "not supported"  # reference ahead by 20 points against a 2-point margin
    lone = with_sentence_intervals(table.assign(runs=[["q0", "f0"]], seeds=1), runs).iloc[0]
    assert np.isnan(lone["items low"]) and lone["items verdict"] is None


def test_answer_format_baselines_trim_without_the_gold_and_bound_with_it() -> None:
    from qlora_utils.study.analysis import answer_format, best_span, trimmed_answer

    question = "Who were the defending Super Bowl champions?"
    answer = "The defending Super Bowl champions were the New England Patriots. They won in 2015."
    assert trimmed_answer(answer, question) == "The the New England Patriots.", "first sentence, question words out"
    assert trimmed_answer("Super Bowl champions", question) == "Super Bowl champions", "nothing left: kept whole"
    assert best_span(answer, ["the New England Patriots"]) == "New England Patriots."
    rows = [{"question": question, "answers": ["New England Patriots"], "zero_shot": answer,
             "fine_tuned": "Patriots"},
            {"question": "How many?", "answers": ["118"], "zero_shot": "He had 118 tackles.", "fine_tuned": "118"}]
    scores = answer_format(rows)
    assert scores["n"] == 2 and scores["zero-shot best span"]["exact_match"] == 100.0
    assert scores["zero-shot"]["exact_match"] == 0.0 and scores["fine-tuned"]["exact_match"] == 50.0
    assert scores["zero-shot trimmed"]["f1"] > scores["zero-shot"]["f1"]
    assert scores["fine-tuned"]["words"] == 1.0
