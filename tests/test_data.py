"""Local and Hub loaders, subsampling and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import datasets

from qlora_utils.core.data import EVAL_SIZES, TaskData, load_task, split_for_selection, subsample
from qlora_utils.errors import DataUnavailableError, QLoraError


@pytest.mark.parametrize("task,split,count", [("sst2", "validation", 872), ("sst2", "train", 67_349),
                                              ("squad", "validation", 10_570), ("squad", "train", 3_807),
                                              ("alpaca", "train", 52_002), ("alpaca_eval", "text_davinci_003", 805),
                                              ("alpaca_eval", "gpt4_turbo", 805)])
def test_local_loaders_read_every_record(data_dir: Path, task: str, split: str, count: int) -> None:
    data = load_task(task, split, data_dir=data_dir)
    assert len(data) == data.n_available == count
    assert data.source.startswith("local:") and "/" not in data.source.split(":")[1].split("/")[0]
    assert (Path(data_dir) / data.source.removeprefix("local:")).is_file(), "relative to the data directory"
    assert f"read {count} records" in str(data)
    assert EVAL_SIZES.get((task, split), count) == count, "the sizes profiles are checked against"


def test_sst2_records_are_clean(data_dir: Path) -> None:
    data = load_task("sst2", "validation", data_dir=data_dir)
    first = data.dataset[0]
    assert first["sentence"] == first["sentence"].strip() and first["label"] in (0, 1)
    assert sum(data.dataset["label"]) == 444  # positives in the SST-2 dev set


def test_squad_records_have_hub_shape(data_dir: Path) -> None:
    record = load_task("squad", "validation", data_dir=data_dir).dataset[0]
    assert set(record) == {"id", "title", "context", "question", "answers"}
    start, text = record["answers"]["answer_start"][0], record["answers"]["text"][0]
    assert record["context"][start:start + len(text)] == text


def test_subsampling_is_deterministic_by_seed(data_dir: Path) -> None:
    a = load_task("sst2", "train", n=50, seed=1, data_dir=data_dir)
    b = load_task("sst2", "train", n=50, seed=1, data_dir=data_dir)
    c = load_task("sst2", "train", n=50, seed=2, data_dir=data_dir)
    assert a.dataset["sentence"] == b.dataset["sentence"] != c.dataset["sentence"]
    assert a.describe()["records_used"] == 50 and a.describe()["sample_seed"] == 1


def test_stratified_sample_keeps_group_shares(data_dir: Path) -> None:
    full = load_task("alpaca_eval", "text_davinci_003", data_dir=data_dir)
    sample = subsample(full, 100, seed=0, stratify_by="dataset")
    assert len(sample) == 100
    for group in set(full.dataset["dataset"]):
        share = full.dataset["dataset"].count(group) / len(full)
        assert abs(sample.dataset["dataset"].count(group) - 100 * share) < 1


def _toy(groups: dict[str, int]) -> TaskData:
    rows = [{"g": g, "i": i} for g, k in groups.items() for i in range(k)]
    return TaskData("toy", "train", datasets.Dataset.from_list(rows), "local:toy", len(rows))


def test_stratified_quotas_by_hand_and_the_edges_of_subsampling() -> None:
    # 7 of a:5, b:4, c:1 -> quotas 3.5, 2.8, 0.7; floors 3, 2, 0; the 2 leftovers go to the largest remainders b, c
    got = subsample(_toy({"a": 5, "b": 4, "c": 1}), 7, seed=0, stratify_by="g").dataset["g"]
    assert {k: got.count(k) for k in "abc"} == {"a": 3, "b": 3, "c": 1}
    assert len(subsample(_toy({"a": 10}), 10, seed=0)) == 10, "all records may be taken"
    part = subsample(_toy({"a": 10}), 4, seed=0).describe()
    assert (part["records_read"], part["records_used"]) == (10, 4)
    with pytest.raises(QLoraError, match="cannot set aside 10 of the 10 records"):
        split_for_selection(_toy({"a": 10}), 10)


def test_asking_for_more_than_available_is_an_error(data_dir: Path) -> None:
    with pytest.raises(QLoraError, match="cannot take 5000 records from squad/train: 3807 are available"):
        load_task("squad", "train", n=5000, data_dir=data_dir)


def test_missing_data_directory_names_the_switch(tmp_path: Path) -> None:
    with pytest.raises(QLoraError, match="QLORA_DATA_DIR"):
        load_task("sst2", "validation", data_dir=tmp_path / "nowhere")


def test_data_directory_without_the_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="sst2/dev.tsv"):
        load_task("sst2", "validation", data_dir=tmp_path)


def test_unreachable_hub_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match=r"Hugging Face Hub .*local copy .*\$QLORA_DATA_DIR, --data-dir"):
        load_task("sst2", "validation")


def test_unknown_split_lists_the_known_ones() -> None:
    with pytest.raises(QLoraError, match="unknown task split sst2/test; known: sst2/train"):
        load_task("sst2", "test")


def test_selection_split_is_fixed_and_disjoint_from_every_training_sample(data_dir: Path) -> None:
    from dataclasses import replace

    full = load_task("sst2", "train", data_dir=data_dir)
    full = replace(full, dataset=full.dataset.add_column("row", list(range(len(full)))))
    pool, selection = split_for_selection(full, 500)
    held, pooled = set(selection.dataset["row"]), set(pool.dataset["row"])
    assert len(held) == 500 and not held & pooled and held | pooled == set(range(len(full)))
    assert split_for_selection(full, 500)[1].dataset["row"] == selection.dataset["row"], "the same split every run"
    for seed in (0, 1):
        assert set(subsample(pool, 1000, seed).dataset["row"]) <= pooled, "never trained on"


def test_an_experiment_trains_on_the_pool_and_chooses_on_the_held_split(data_dir: Path) -> None:
    from qlora_utils.study.experiments import Experiment, training_data

    train, selection = training_data(Experiment(train_examples=16, selection_examples=50, data_dir=str(data_dir)))
    pool, held = split_for_selection(load_task("sst2", "train", data_dir=data_dir), 50)
    assert train.dataset["sentence"] == subsample(pool, 16, 0).dataset["sentence"]
    assert selection.dataset["sentence"] == held.dataset["sentence"]
