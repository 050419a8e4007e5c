"""An SST-2 experiment that never sees the dev set (protocol v2's pilot and learning-rate runs): the selection split
scored zero-shot and fine-tuned, per sentence, and nothing of dev recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_utils.core.records import read_run
from qlora_utils.core.training import TrainSettings
from qlora_utils.errors import QLoraError
from qlora_utils.study.experiments import Experiment, run_experiment, training_data


@pytest.mark.slow
def test_selection_only_run_records_both_scorings_per_sentence_and_no_dev(data_dir: Path, tmp_path: Path) -> None:
    exp = Experiment(task="sst2", preset="tiny-qwen2", mode="nf4", train_examples=16, eval_examples=8,
                     selection_examples=40, score_dev=False, data_dir=str(data_dir),
                     train=TrainSettings(learning_rate=1e-3, batch_size=8))
    record = run_experiment(exp, tmp_path / "run")
    assert "fine_tuned" not in record and "zero_shot" not in record, "the dev set is never scored"
    assert not (tmp_path / "run" / "generations.json").exists()
    rows = read_run(tmp_path / "run").selection()
    _, held = training_data(exp)
    assert [r["sentence"] for r in rows] == held.dataset["sentence"] and len(rows) == 40
    for key, summary in (("zero_shot", "selection_zero_shot"), ("fine_tuned", "selection")):
        correct = sum(r[key] == r["label"] for r in rows)
        assert record[summary]["accuracy"] == pytest.approx(correct / 40) and record[summary]["n"] == 40


def test_selection_only_is_refused_where_there_is_no_selection_split() -> None:
    with pytest.raises(QLoraError, match="score_dev"):
        Experiment(task="squad", score_dev=False)
    with pytest.raises(QLoraError, match="score_dev"):
        Experiment(task="sst2", selection_examples=0, score_dev=False)
    with pytest.raises(QLoraError, match="selection_examples"):
        Experiment(task="alpaca", selection_examples=10)
    assert Experiment(task="squad").selection_examples == 0 and Experiment(task="sst2").selection_examples == 500


def test_squad_selection_split_is_held_out_scored_per_question_and_dev_untouched(data_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """SQuAD's learning rates are chosen like SST-2's: on training questions set aside by a fixed seed."""
    exp = Experiment(task="squad", preset="tiny-qwen2", mode="nf4", train_examples=8, eval_examples=4,
                     selection_examples=6, score_dev=False, max_new_tokens=4, data_dir=str(data_dir),
                     train=TrainSettings(learning_rate=1e-3, batch_size=4))
    train, held = training_data(exp)
    assert len(held.dataset) == 6 and not set(train.dataset["id"]) & set(held.dataset["id"])
    default, none = training_data(Experiment(task="squad", train_examples=8, data_dir=str(data_dir)))
    assert none is None, "without selection_examples the earlier runs' draw is unchanged"
    record = run_experiment(exp, tmp_path / "run")
    assert "fine_tuned" not in record and "examples" not in record["selection"]
    rows = read_run(tmp_path / "run").selection()
    assert [r["id"] for r in rows] == held.dataset["id"] and {"zero_shot", "fine_tuned_f1"} <= set(rows[0])
    assert record["selection"]["f1"] == pytest.approx(sum(r["fine_tuned_f1"] for r in rows) / 6, abs=1e-3)


def test_min_words_draws_training_and_selection_from_long_items_only(data_dir: Path) -> None:
    exp = Experiment(task="sst2", train_examples=64, selection_examples=50, min_words=9, data_dir=str(data_dir))
    train, held = training_data(exp)
    assert all(len(s.split()) >= 9 for s in list(train.dataset["sentence"]) + list(held.dataset["sentence"]))
    assert not set(train.dataset["sentence"]) & set(held.dataset["sentence"])
    assert "9+ words" in train.split and "9+ words" in held.split
    every, _ = training_data(Experiment(task="sst2", train_examples=64, selection_examples=50, data_dir=str(data_dir)))
    assert min(len(s.split()) for s in every.dataset["sentence"]) < 9, "without it, short phrases are drawn too"
    no_held, none = training_data(Experiment(task="sst2", train_examples=16, selection_examples=0, min_words=9,
                                             data_dir=str(data_dir)))
    assert none is None and all(len(s.split()) >= 9 for s in no_held.dataset["sentence"])
    with pytest.raises(QLoraError, match="min_words"):
        Experiment(task="squad", min_words=9)
