"""The setup, scaling and SQuAD chapters (qlora_utils.book.chapters.week1/3/4) on hand-built run records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from chapter_fixtures import sst2_run
from qlora_utils.book.chapters import NA, week1, week3, week4
from qlora_utils.core.records import Run


def _run(path: Path, metrics: dict[str, Any], threads: int | None = 1, cores: int = 2) -> Run:
    hardware = {"cpu_count": cores, "memory_gib": 16.0, "cuda": False}
    if threads is not None:
        hardware["torch_threads"] = threads
    return Run(path, {"parameters": {"seed": 0}}, {"state": "done"}, metrics,
               {"hardware": hardware, "versions": {"torch": "2.9", "transformers": "4.57"}, "git_commit": "abc" * 10})


# --- week 1 -----------------------------------------------------------------------------------------------------

SETUP = {
    "datasets": [
        {"task": "sst2", "split": "validation", "source": "local:sst2/dev.tsv", "records": 872, "positive share": 0.5,
         "prompt tokens mean": 50.0, "answer tokens mean": 2.0, "total tokens mean": 52.0, "total tokens p95": 70.0,
         "total tokens max": 88, "length sample": 100},
        {"task": "squad", "split": "validation", "source": "local:squad/dev.json", "records": 10570,
         "prompt tokens mean": 210.4, "answer tokens mean": 5.5, "total tokens mean": 215.9,
         "total tokens p95": 346.0, "total tokens max": 825, "length sample": 100}],
    "lora_parameters": [
        {"model": "M", "base parameters": 1000, "placement": "attention", "rank": r, "trainable": 10 * r,
         "trainable %": r * 1.0} for r in (4, 8)],
    "peft_check": [
        {"model": "tiny", "mode": "nf4", "placement": "attention", "rank": 4, "peft trainable": 40,
         "analytic trainable": 40, "peft total": 1040, "analytic total": 1040, "agree": True},
        {"model": "tiny", "mode": "nf4", "placement": "attention", "rank": 8, "peft trainable": 80,
         "analytic trainable": 81, "peft total": 1080, "analytic total": 1081, "agree": False}],
}


def test_week1_tables_have_human_columns_and_keep_the_row_labels(tmp_path: Path) -> None:
    page = week1.page([_run(tmp_path, SETUP, threads=2)])
    hardware = page.tables["hardware"].set_index("setting")["value"]
    assert hardware["CPU cores"] == "2" and hardware["torch threads"] == "2" and hardware["git commit"] == "abc" * 10
    assert page.tables["versions"].set_index("package").loc["torch", "version"] == "2.9"
    data = page.tables["data"]
    assert data.loc[0, "positive (%)"] == 50.0 and pd.isna(data.loc[1, "positive (%)"])
    assert list(data["prompt tokens (mean)"]) == [50.0, 210.4]
    lora = page.tables["lora"]
    assert list(lora.columns) == ["model", "adapters on", "r = 4 (% trainable)", "r = 8 (% trainable)"]
    assert lora.iloc[0].tolist() == ["M", "attention", 4.0, 8.0]
    assert list(page.tables["peft"]["agree"]) == ["yes", "no"]
    assert page.text["peft_agree"] == "1" and page.text["peft_checked"] == "2" and page.text["peft_models"] == "tiny"
    assert page.text["squad_prompt"] == "210" and page.text["sst2_prompt"] == "50"
    assert page.text["machine"].startswith("2 CPU cores (2 torch threads), 16.0 GiB")
    lengths = page.figures["lengths"].data
    assert set(lengths["part"]) == {"prompt", "answer"}
    assert lengths.set_index(["split", "part"]).loc[("squad / validation", "answer"), "tokens"] == 5.5


def test_week1_without_a_setup_run_reads_na() -> None:
    page = week1.page([])
    assert page.text["machine"] == NA and page.text["peft_agree"] == "0" and page.text["squad_prompt"] == NA
    assert page.tables["data"].empty and page.tables["hardware"].empty
    page.figures["lengths"].to_dict()  # the placeholder chart is valid


# --- week 3 -----------------------------------------------------------------------------------------------------

def _efficiency(label: str, total: float, mode: str, tokens_s: float, anon: float, load: float | None = None,
                fits: bool = True) -> dict[str, Any]:
    size = {"0.5B": 5e8, "1.5B": 1.5e9, "3B": 3e9}[label]
    record: dict[str, Any] = {"experiment": "efficiency", "model": {"label": label, "mode": mode},
                              "fit": {"predicted_gib": 50.0 if not fits else 2.0, "free_gib": 20.0, "fits": fits}}
    if fits:
        memory = {"device": "cpu", "cpu_peak_above_baseline_mib": anon, "cpu_total_rss_above_baseline_mib": total}
        if load is not None:
            memory.update(load_average_1min=load, cpu_count=2)
        record.update(parameters={"total": size, "percent": 0.1}, shape={"batch_size": 2, "seq_len": 128},
                      training={"tokens_per_second": tokens_s, "memory": memory})
    return record


@pytest.fixture()
def scaling_runs(tmp_path: Path) -> list[Run]:
    specs = [  # name, record, threads
        ("0.5b-nf4", _efficiency("0.5B", 2000.0, "nf4", 6.0, 1500.0, load=5.7), 2),  # busy: 5.7 > 2 + 0.5
        ("0.5b-bf16", _efficiency("0.5B", 3000.0, "bf16", 8.0, 500.0, load=1.0), 2),
        ("1.5b-nf4", _efficiency("1.5B", 2200.0, "nf4", 16.0, 2100.0, load=2.5), 1),  # exactly cores + 0.5: quiet
        ("1.5b-bf16", _efficiency("1.5B", 4400.0, "bf16", 18.0, 600.0), 1),  # an older record: no load
        ("3b-full", _efficiency("3B", 0.0, "full", 0.0, 0.0, fits=False), 1),
        ("3b-nf4", _efficiency("3B", 3500.0, "nf4", 7.0, 3400.0, load=2.0), 2),
        ("3b-bf16", _efficiency("3B", 7000.0, "bf16", 9.0, 700.0, load=2.0), 1),
        ("sst2-4b", {"experiment": "sst2", "model": {"label": "Qwen3-4B", "mode": "nf4"},
                     "lora": {"rank": 8, "placement": "attention_mlp"}, "data": {"train": {"records_used": 2000}},
                     "zero_shot": {"accuracy": 0.6}, "fine_tuned": {"accuracy": 0.9},
                     "parameters": {"trainable": 10, "percent": 0.5},
                     "training": {"tokens_per_second": 100.0, "seconds": 5.0,
                                  "memory": {"cuda_max_allocated_mib": 9000.0}}}, 1),
    ]
    return [_run(tmp_path / name, record, threads) for name, record, threads in specs]


def test_week3_memory_ratio_uses_the_whole_resident_set_on_the_largest_model_with_both_modes(
        scaling_runs: list[Run]) -> None:
    page = week3.page(scaling_runs)
    assert page.text["largest"] == "3B"
    assert page.text["bf16_over_nf4"] == "2.0"  # 7000 / 3500 (whole RSS); anonymous memory would give 700 / 3400
    assert page.text["bf16_peak"] == "7,000" and page.text["nf4_peak"] == "3,500"
    assert "whole resident set" in page.text["memory_measure"]
    assert page.text["not_fit"] == "3B full fine-tuning (predicted 50 GiB)"
    assert list(page.figures["memory"].data["peak memory (MiB)"]) == [2000.0, 3000.0, 2200.0, 4400.0, 3500.0, 7000.0]


def test_week3_largest_needs_both_lora_modes(scaling_runs: list[Run]) -> None:
    page = week3.page([r for r in scaling_runs if r.name != "3b-bf16"])
    assert page.text["largest"] == "1.5B" and page.text["bf16_over_nf4"] == "2.0"  # 4400 / 2200
    alone = week3.page([r for r in scaling_runs if r.name == "3b-nf4"])  # no pair: the measure of what ran
    assert alone.text["largest"] == NA and "whole resident set" in alone.text["memory_measure"]


def test_week3_table_shows_threads_load_and_busy_flag(scaling_runs: list[Run]) -> None:
    table = week3.page(scaling_runs).tables["efficiency"]
    assert len(table) == 7  # the SST-2 accuracy run is not an efficiency run
    rows = table.set_index(["model", "mode"])
    assert rows.loc[("0.5B", "QLoRA (NF4)"), "torch threads"] == 2
    assert rows.loc[("0.5B", "QLoRA (NF4)"), "load average (1 min)"] == 5.7
    assert rows.loc[("0.5B", "QLoRA (NF4)"), "busy machine"] == "yes"
    assert rows.loc[("1.5B", "QLoRA (NF4)"), "busy machine"] == "no"
    assert rows.loc[("1.5B", "16-bit LoRA"), "busy machine"] == "not recorded", "trained, but its load was not kept"
    assert pd.isna(rows.loc[("3B", "full fine-tuning"), "busy machine"]), "did not train: a blank, not n/a"
    assert rows.loc[("3B", "full fine-tuning"), "fits in free memory"] == "no: 20 GiB free"
    assert rows.loc[("3B", "16-bit LoRA"), "peak memory (MiB)"] == 7000.0
    assert {"tokens/s", "cores", "predicted peak (GiB)"} <= set(table.columns)


def test_week3_throughput_is_compared_only_within_a_thread_count(scaling_runs: list[Run]) -> None:
    page = week3.page(scaling_runs)
    assert page.text["speed_runs"] == "6" and page.text["thread_counts"] == "2"
    assert page.text["threads_summary"] == "2 threads for 0.5B, 3B (3 runs); 1 thread for 1.5B, 3B (3 runs)"
    assert page.text["busy_n"] == "1" and page.text["busy_runs"] == "0.5B QLoRA (NF4) (load 5.7 on 2 cores)"
    assert page.text["load_missing_n"] == "1"
    pairs = page.text["speed_pairs"]
    assert "0.5B with 2 threads: QLoRA 6.0 against 16-bit LoRA 8.0 tokens/s (measured on a busy machine)" in pairs
    assert "1.5B with 1 thread: QLoRA 16.0 against 16-bit LoRA 18.0 tokens/s;" not in pairs  # no busy note, no ';'
    assert pairs.endswith("1.5B with 1 thread: QLoRA 16.0 against 16-bit LoRA 18.0 tokens/s")
    assert "3B" not in pairs  # 3B QLoRA ran with 2 threads, 3B 16-bit LoRA with 1: not compared
    speed = page.figures["speed"].data
    assert set(speed["threads"]) == {"1 thread", "2 threads"}
    assert speed.set_index("run").loc["0.5b-nf4", "machine"] == "busy machine"
    assert speed.set_index("run").loc["1.5b-bf16", "machine"] == "load not recorded"
    page.figures["speed"].to_dict()  # a valid faceted spec


def test_week3_accuracy_scaling_pairs_the_larger_size_with_week2_runs_of_the_same_setting(tmp_path: Path) -> None:
    small = dict(label="S-0.5B", total=500_000, examples=500)
    large = dict(label="L-1.5B", total=1_500_000, examples=500, notebook="week3_scaling", preset="tiny-qwen2")
    runs = []
    for seed in range(5):  # the smaller size's week 2 headline: five seeds per mode, of which the larger ran three
        runs += [sst2_run(tmp_path, f"s-nf4-{seed}", "nf4", seed, 0.80 + seed / 100, **small),
                 sst2_run(tmp_path, f"s-bf16-{seed}", "bf16", seed, 0.81, **small),
                 sst2_run(tmp_path, f"s-full-{seed}", "full", seed, 0.85, **small)]
    runs.append(sst2_run(tmp_path, "s-sweep", "nf4", 0, 0.99, group="sweep", lr=3e-3, **small))  # not a partner
    for seed, gain in zip(range(3), (0.02, 0.03, 0.04)):
        runs += [sst2_run(tmp_path, f"l-nf4-{seed}", "nf4", seed, 0.80 + seed / 100 + gain, **large),
                 sst2_run(tmp_path, f"l-bf16-{seed}", "bf16", seed, 0.83, **large)]
    page = week3.page(runs)
    table = page.tables["accuracy"]
    assert list(table["model"]) == ["L-1.5B", "L-1.5B", "S-0.5B", "S-0.5B"]  # larger first; no full of S: no pair
    assert list(table["seeds"]) == [3, 3, 3, 3]  # the smaller size's seeds 3 and 4 have no partner
    assert table.iloc[0]["dev accuracy (%)"] == pytest.approx(84.0)  # mean of 82, 84, 86
    assert page.text["scale_large"] == "L-1.5B" and page.text["scale_small"] == "S-0.5B"
    assert page.text["scale_nf4_gain"] == "+3.0" and page.text["scale_nf4_seeds"] == "3"
    assert page.text["scale_nf4_ci"] == "+0.5 to +5.5"  # t(0.975, 2) = 4.303 x 1.0 / sqrt(3) = 2.48
    assert page.text["scale_bf16_gain"] == "+2.0"
    assert page.text["scale_full_note"].startswith("Full fine-tuning of L-1.5B did not run: the memory planner")
    assert page.text["accuracy_note"] == ""
    assert page.text["scale_result"].startswith("Here the two sizes are S-0.5B and L-1.5B. With QLoRA the larger "
                                                "model scores +3.0 points more after fine-tuning (95 % CI +0.5 to "
                                                "+5.5, 3 seed pairs)")
    assert page.text["scale_nf4_zero_gap"] == "n/a", "no zero-shot score: the bases' gap is not made up"


def test_week3_separates_the_bases_gap_from_what_fine_tuning_added(tmp_path: Path) -> None:
    small = dict(label="S-0.5B", total=500_000, examples=500)
    large = dict(label="L-1.5B", total=1_500_000, examples=500, notebook="week3_scaling", preset="tiny-qwen2")
    runs = []
    for seed, (s, l) in enumerate([(0.80, 0.89), (0.82, 0.90), (0.81, 0.91)]):
        runs += [sst2_run(tmp_path, f"s-nf4-{seed}", "nf4", seed, s, zero_shot=0.79 if seed == 0 else None, **small),
                 sst2_run(tmp_path, f"l-nf4-{seed}", "nf4", seed, l, zero_shot=0.88 if seed == 0 else None, **large)]
    page = week3.page(runs)
    assert page.text["scale_nf4_gain"] == "+9.0"  # 9, 8, 10 points after fine-tuning
    assert page.text["scale_nf4_zero_gap"] == "+9.0"  # 88 − 79 before it
    assert page.text["scale_nf4_tuning_gap"] == "+0.0" and page.text["scale_nf4_tuning_ci"] == "-2.5 to +2.5"
    assert "but its base already scored +9.0 points more zero-shot: what fine-tuning added differs by +0.0 points" \
        in page.text["scale_result"]
    assert page.text["scale_result"].endswith("so it is recorded as not fitting.")


def test_week3_helpers_and_empty_profile() -> None:
    assert week3.busy(2.51, 2) is True and week3.busy(2.5, 2) is False and week3.busy(None, 2) is None
    assert "CUDA" in week3.memory_measure({"cuda_max_allocated_mib": 1.0, "cpu_total_rss_above_baseline_mib": 2.0})
    assert "older record" in week3.memory_measure({"cpu_peak_above_baseline_mib": 1.0})
    page = week3.page([])
    assert page.text["largest"] == NA and page.text["bf16_over_nf4"] == NA and page.text["not_fit"] == "none"
    assert page.text["busy_n"] == "0" and page.text["accuracy_note"].startswith("Accuracy scaling did not run")
    assert page.text["scale_result"] == ""
    assert page.tables["efficiency"].empty and "tokens/s" in page.tables["efficiency"].columns


# --- week 4 -----------------------------------------------------------------------------------------------------

def _squad(f1: float, zero_f1: float | None) -> dict[str, Any]:
    record = {"experiment": "squad", "model": {"label": "SmolLM2", "mode": "nf4"},
              "lora": {"placement": "attention_mlp"},
              "data": {"train": {"examples_after_length_filter": 1940}},
              "fine_tuned": {"exact_match": 30.0, "f1": f1, "n": 3},
              "parameters": {"percent": 1.5}, "training": {"tokens_per_second": 80.0}}
    if zero_f1 is not None:
        record["zero_shot"] = {"exact_match": 5.0, "f1": zero_f1, "n": 3}
    return record


GENERATIONS = [
    {"question": "q1", "answers": ["Paris"], "zero_shot": "It is Paris.", "fine_tuned": "Paris"},
    {"question": "q2", "answers": ["1999"], "zero_shot": "", "fine_tuned": "in 1998"},
    {"question": "q3", "answers": ["Big Ben"], "zero_shot": "no idea", "fine_tuned": "the tower"},
]


def test_week4_scores_gain_target_and_errors(tmp_path: Path) -> None:
    first = _run(tmp_path / "a-qlora", _squad(50.0, 30.0))
    first.path.mkdir()
    (first.path / "generations.json").write_text(json.dumps(GENERATIONS))
    older = _run(tmp_path / "b-older", _squad(40.0, None))  # no zero-shot recorded
    page = week4.page([first, older])
    scores = page.tables["scores"]
    assert list(scores["run"]) == ["a-qlora", "b-older"] and scores.loc[0, "train questions"] == 1940
    assert scores.loc[0, "mode"] == "QLoRA (NF4)" and pd.isna(scores.loc[1, "zero-shot F1 (%)"])
    text = page.text
    assert (text["train"], text["dev"], text["em"], text["f1"], text["zero_f1"]) == ("1,940", "3", "30.0", "50.0",
                                                                                      "30.0")
    assert text["gain"] == "+20.0" and text["target"] == "met" and text["target_gain"] == "15"
    bars = page.figures["chart"].data
    assert len(bars) == 6  # four scores for the first run, two for the run without zero-shot
    assert bars[(bars["run"] == "a-qlora") & (bars["system"] == "zero-shot") & (bars["metric"] == "F1")][
        "value"].item() == 30.0
    errors = page.tables["errors"].set_index("kind of answer")
    assert errors["fine-tuned answers"].sum() == 3 and errors.loc["exact match", "fine-tuned answers"] == 1
    assert text["exact_n"] == "1"
    # per-question F1 gains: "Paris" vs "It is Paris." 100 − 50, then 0 − 0 twice: mean 16.7, sd 28.9, t(2) 4.303
    assert text["gain_ci"] == "95 % CI -55.0 to +88.4 points, paired over 3 questions"
    assert text["top_error"] == "wrong span (no overlap)" and text["top_error_n"] == "2"  # "in 1998", "the tower"


def test_week4_the_largest_model_leads_and_the_others_get_a_sentence(tmp_path: Path) -> None:
    small, big = _squad(50.0, 30.0), _squad(60.0, 45.0)
    small["parameters"]["total"], big["parameters"]["total"] = 100, 500
    big["model"]["label"] = "Qwen"
    page = week4.page([_run(tmp_path / "small", small), _run(tmp_path / "big", big)])
    assert list(page.tables["scores"]["model"]) == ["Qwen", "SmolLM2"]
    assert page.text["model"] == "Qwen" and page.text["gain"] == "+15.0" and page.text["target"] == "met"
    assert page.text["others"] == ("SmolLM2 (QLoRA (NF4), 1,940 training questions) reaches 30.0 EM and 50.0 F1 on "
                                   "its 3 dev questions, against 5.0 and 30.0 zero-shot.")
    assert set(page.figures["chart"].data["model"]) == {"Qwen", "SmolLM2"}
    assert week4.page([_run(tmp_path / "one", small)]).text["others"] == ""


def test_week4_target_not_met_and_missing_zero_shot(tmp_path: Path) -> None:
    assert week4.page([_run(tmp_path / "a", _squad(40.0, 30.0))]).text["target"] == "not met"  # +10 < +15
    page = week4.page([_run(tmp_path / "b", _squad(40.0, None))])
    assert page.text["gain"] == NA and page.text["target"] == NA and page.text["top_error"] == NA
    empty = week4.page([])
    assert empty.text["f1"] == NA and empty.tables["scores"].empty and empty.tables["errors"].empty
    empty.figures["chart"].to_dict()


def test_glue_keys_are_unique_per_page(tmp_path: Path, scaling_runs: list[Run]) -> None:
    """A text value and a table or figure under one key would glue the same name twice (a build error)."""
    for page in (week1.page([_run(tmp_path, SETUP)]), week3.page(scaling_runs),
                 week4.page([_run(tmp_path / "s", _squad(50.0, 30.0))])):
        keys = list(page.text) + list(page.tables) + list(page.figures)
        assert len(keys) == len(set(keys)), page.prefix


def _bench_result() -> dict[str, Any]:
    rows = [{"what": "training", "side": side, "checkpointing": ckpt, "repeat": 0, "seconds": s, "losses": [1.0],
             "load_before": load, "load_after": load}
            for ckpt, pairs in ((False, (("reference", 140.0), ("project", 70.0))),
                                (True, (("reference", 200.0), ("project", 110.0))))
            for (side, s), load in zip(pairs, (0.3, 0.6))]
    summary = [{"what": "training", "variant": "project", "checkpointing": ckpt, "project s": p, "reference s": r,
                "first-step loss difference": 0.001, "mean loss difference": 0.01, "loss difference": 0.02,
                "identical work": True, "load": 0.6,
                "speed-up": r / p} for ckpt, p, r in ((False, 70.0, 140.0), (True, 110.0, 200.0))]
    summary.append({"what": "scoring", "project s": 12.0, "reference s": 60.0, "project accuracy": 0.655,
                    "reference accuracy": 0.66, "predictions that differ": 7, "load": 0.5, "speed-up": 5.0})
    return {"settings": {"train_examples": 500, "repeats": 2}, "rows": rows, "summary": summary, "threads": 2}


def test_bench_section_reads_the_benchmark_run(tmp_path: Path) -> None:
    run = _run(tmp_path / "week3-bench", {"experiment": "bench", "bench": _bench_result()}, threads=2)
    page = week3.page([run])
    table = page.tables["bench"]
    assert list(table["work"]) == ["training, project, checkpointing off", "training, project, checkpointing on",
                                   "SST-2 dev scoring"]
    assert list(table["speed-up"]) == [2.0, 200 / 110, 5.0]
    assert table["agreement"][0] == ("first-step loss within 0.10 %, per-step losses 1.0 % apart on average, at most "
                                     "2.0 %")
    run.metrics["bench"]["summary"][0]["mean loss tolerance"] = 0.2  # set by a noise floor
    assert "on average (allowed 20.0 %), at most 2.0 %" in week3.page([run]).tables["bench"]["agreement"][0]
    assert table["agreement"][2] == "7 predictions differ; accuracy 65.5 vs 66.0 %"
    text = page.text["bench_result"]
    assert text.startswith("The benchmark run week3-bench trained on 500 SST-2 sentences, each side 2 time(s) with 2 "
                           "torch thread(s); the 1-minute load average before the timed trainings ranged 0.30 to 0.60.")
    assert "The agreement rule was met by every training row." in text
    assert "checkpointing off: 2.00×; on: 1.82×." in text
    assert text.endswith("took 12.0 s against the reference scorer's 60.0 s, with 7 differing predictions.")
    run.metrics["bench"]["summary"][1]["identical work"] = False
    assert "rule was not met by project with checkpointing on." in week3.page([run]).text["bench_result"]
    empty = week3.page([])
    assert empty.tables["bench"].empty and NA not in empty.text["bench_result"]
    assert empty.text["bench_result"].startswith("This profile ran no benchmark")


def test_week3_two_seed_pairs_give_a_ci(tmp_path: Path) -> None:
    small = dict(label="S-0.5B", total=500_000, examples=500)
    large = dict(label="L-1.5B", total=1_500_000, examples=500, notebook="week3_scaling", preset="tiny-qwen2")
    runs = []
    for seed, gain in zip(range(2), (0.02, 0.04)):
        runs += [sst2_run(tmp_path, f"s-nf4-{seed}", "nf4", seed, 0.80 + seed / 100, **small),
                 sst2_run(tmp_path, f"l-nf4-{seed}", "nf4", seed, 0.80 + seed / 100 + gain, **large)]
    page = week3.page(runs)
    # gains 2 and 4 points: mean 3.0, s.e. 1.0, t(0.975, 1) = 12.706
    assert page.text["scale_nf4_seeds"] == "2" and page.text["scale_nf4_gain"] == "+3.0"
    assert page.text["scale_nf4_ci"] == "-9.7 to +15.7"


def test_week4_no_sentence_for_another_run_of_the_lead_model(tmp_path: Path) -> None:
    page = week4.page([_run(tmp_path / "a-qlora", _squad(50.0, 30.0)), _run(tmp_path / "b-older", _squad(40.0, None))])
    assert page.text["others"] == ""  # both runs are SmolLM2's: no "other model" to describe
