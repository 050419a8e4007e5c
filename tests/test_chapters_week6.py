"""The AlpacaEval and efficiency chapter's numbers, tables and figures, on hand-made run records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from qlora_utils.book.chapters import NA, week6
from qlora_utils.core.records import Run
from qlora_utils.study import instruct, planner

NOTEBOOK = "notebooks/week6_alpacaeval_efficiency.md"
MODE_KEYS = {"QLoRA (NF4)": "nf4", "16-bit LoRA": "bf16", "full fine-tuning": "full"}


def run(path: Path, metrics: dict[str, Any], notebook: str = NOTEBOOK, wall: float = 60.0, group: str | None = None,
        **parameters: Any) -> Run:
    """A finished run record (config, status, metrics) in a fresh directory."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"notebook": notebook, "parameters": parameters, **({"group": group} if group else {})}
    return Run(path, config, {"state": "done", "wall_seconds": wall}, metrics, {})


def instruct_run(tmp: Path, mode: str, used: int = 150, answers: list[str] | None = None,
                 zero_shot: list[str] | None = None) -> Run:
    """An instruction-tuning run with its generations.json (four instructions from two source data sets)."""
    r = run(tmp / f"week6-instruct-{mode}", {
        "experiment": "alpaca", "model": {"preset": "tiny-qwen2", "mode": mode},
        "data": {"train": {"records_used": used, "records_read": 52002}, "eval": {"records_read": 805}},
        "fine_tuned": {"n": 4}, "training": {"steps": math.ceil(used / 8), "settings": {"batch_size": 8}},
        "decoding": {"strategy": "greedy", "max_new_tokens": 64, "prompt": "chat template"}}, kind="instruct")
    answers = answers or ["same", "same", "same", "same"]
    gens = [{"instruction": f"instruction {i}", "dataset": "koala" if i < 2 else "oasst", "reference": f"ref {i}",
             "fine_tuned": a, "zero_shot": zero_shot[i] if zero_shot else None} for i, a in enumerate(answers)]
    (r.path / "generations.json").write_text(json.dumps(gens))
    return r


def rate(system: str, baseline: str, win: float, consistency: float | None = 0.1, sanity: float | None = 70.0,
         lc: float | None = None) -> dict[str, Any]:
    """One row of a win-rate record, as qlora_utils.study.winrate writes it."""
    row = {"system": system, "baseline": baseline, "n": 4, "win_rate": win, "standard_error": 0.5,
           "length_controlled_winrate": lc, "position_consistency": consistency, "sanity_pair_win_rate": sanity}
    if lc is None:
        row["length_controlled_note"] = "not computed: alpaca-eval needs df_gamed.csv from the Hub (X)"
    return row


WINRATES = {
    "experiment": "alpacaeval", "instructions": 4,
    "judge": {"spec": "local:tiny-qwen2", "max_output_tokens": 32, "outputs": 12, "clipped": 5},
    "win_rates": [rate("QLoRA (NF4)", "text_davinci_003", 48.0, 0.10),
                  rate("16-bit LoRA", "text_davinci_003", 53.0, 0.30),
                  rate("QLoRA (NF4)", "base", 51.0, 0.20, sanity=58.0)],
    "sanity_pair": {"text_davinci_003": {"win_rate": 70.0, "standard_error": 1.0, "n": 4},
                    "base": {"win_rate": 58.0, "standard_error": 1.0, "n": 4}},
    "output_lengths": {"QLoRA (NF4)": {"mean_chars": 200.0, "median_chars": 190.0, "mean_words": 35.0},
                       "base": {"mean_chars": 250.0, "median_chars": 260.0, "mean_words": 42.0}},
}


def sst2_run(tmp: Path, name: str, mode: str, seed: int, accuracy: float, peak: float, speed: float,
             lr: float = 1e-3, group: str | None = None) -> Run:
    """A week 2 SST-2 run at r=8 on q,k,v (full fine-tuning: every weight)."""
    lora = None if mode == "full" else {"rank": 8, "alpha": 16, "placement": "attention"}
    metrics = {"experiment": "sst2", "model": {"label": "M", "mode": mode}, "lora": lora,
               "data": {"train": {"records_used": 1000}}, "fine_tuned": {"accuracy": accuracy},
               "parameters": {"trainable": 100 if lora else 10_000, "total": 10_000, "percent": 1.0 if lora else 100},
               "training": {"settings": {"learning_rate": lr, "scheduler": "cosine"}, "tokens_per_second": speed,
                            "seconds": 10.0, "memory": {"cpu_total_rss_above_baseline_mib": peak}}}
    return run(tmp / name, metrics, "notebooks/week2_sst2_baseline.md", group=group, mode=mode, seed=seed)


def efficiency_run(tmp: Path, mode: str, measured: float, batch: int = 2, seq: int = 32) -> Run:
    """A fixed-shape efficiency run of tiny-qwen2 with its measured peak (MiB)."""
    lora = None if mode == "full" else {"rank": 8, "alpha": 16, "dropout": 0.1, "placement": "attention"}
    metrics = {"experiment": "efficiency", "model": {"preset": "tiny-qwen2", "label": "tiny", "mode": mode},
               "lora": lora, "shape": {"batch_size": batch, "seq_len": seq, "gradient_checkpointing": True},
               "parameters": {"total": 1000, "percent": 1.0}, "fit": {"predicted_gib": 0.1, "fits": True},
               "training": {"memory": {"cpu_total_rss_above_baseline_mib": measured, "device": "cpu"},
                            "tokens_per_second": 500.0, "settings": {"optim": "paged_adamw_32bit"}}}
    return run(tmp / f"eff-{mode}-{batch}x{seq}", metrics, kind="efficiency", wall=120.0)


def predicted_mib(r: Run) -> float:
    """The planner's prediction for an efficiency run (MiB)."""
    return planner.plan_for_record(r.metrics).total / planner.MiB


def chart_rows(chart: Any, key: str) -> list[dict[str, Any]]:
    """The rows of a chart's inline data sets that have `key` (its data, not its rules)."""
    return [row for rows in chart.to_dict()["datasets"].values() for row in rows if key in row]


def test_the_page_states_exactly_how_many_alpaca_examples_trained(tmp_path: Path) -> None:
    runs = [instruct_run(tmp_path, m) for m in ("nf4", "bf16", "full")]
    p = week6.page(runs)
    assert (p.text["n_train"], p.text["n_alpaca"], p.text["train_steps"], p.text["train_batch"]) == \
        ("150", "52,002", "19", "8")
    assert p.text["n_instructions"] == "4" and p.text["n_alpacaeval"] == "805"
    assert p.text["decoding"] == "greedy, at most 64 new tokens, chat template"
    mixed = week6.page([instruct_run(tmp_path / "a", "nf4", 150), instruct_run(tmp_path / "b", "bf16", 1200)])
    assert mixed.text["n_train"] == "150 (QLoRA (NF4)); 1,200 (16-bit LoRA)"


def test_win_rates_sit_beside_the_judges_consistency_and_sanity_pair(tmp_path: Path) -> None:
    p = week6.page([run(tmp_path / "week6-winrates", WINRATES, kind="winrates")])
    table = p.tables["winrates"]
    assert list(table["system"]) == ["QLoRA (NF4)", "16-bit LoRA", "QLoRA (NF4)"]
    assert list(table["against"]) == ["AlpacaEval 1.0 reference (text-davinci-003)"] * 2 + ["base"]
    assert list(table["position consistency (%)"]) == pytest.approx([10.0, 30.0, 20.0])
    assert table["length-controlled win rate (%)"].isna().all() and set(table["judge"]) == {"local:tiny-qwen2"}
    assert p.text["consistency"] == "20.0"  # mean of 10, 30, 20
    assert p.text["sanity"] == "AlpacaEval 1.0 reference (text-davinci-003) 70.0 %; base 58.0 %"
    assert p.text["sanity_gap"] == "20.0"
    assert (p.text["n_winrates"], p.text["winrate_low"], p.text["winrate_high"]) == ("3", "48.0", "53.0")
    assert p.text["trust"].startswith("Very little")  # consistency 20 % < 50 %
    assert "not comparable" in p.text["leaderboard"]
    assert p.text["length_controlled"] == "was not computed (alpaca-eval needs df_gamed.csv from the Hub (X))"
    assert p.text["clipped"] == "5 of 12 outputs were cut to 32 tokens for the judge"
    data = chart_rows(p.figures["winrate_chart"], "system")
    sanity = [d for d in data if d["system"] == "sanity pair (same answers)"]
    assert sorted(d["win rate"] for d in sanity) == [58.0, 70.0] and len(data) == 5
    lengths = p.tables["lengths"].set_index("system")
    assert lengths.loc["base", "mean length (characters)"] == 250.0 and lengths.loc["QLoRA (NF4)",
                                                                                     "mean length (words)"] == 35.0


def test_trust_follows_consistency_and_sanity() -> None:
    assert instruct.trust_sentence(95.0, 2.0).startswith("Reasonably")
    assert instruct.trust_sentence(70.0, 2.0).startswith("With caution")
    assert instruct.trust_sentence(95.0, 12.0).startswith("Very little")
    assert "openai" not in week6.leaderboard_sentence("openai:gpt-4-1106-preview")
    assert "can be set beside" in week6.leaderboard_sentence("openai:gpt-4-1106-preview")
    computed = {"win_rates": [rate("a", "base", 50.0, lc=40.0), rate("b", "base", 50.0)]}
    assert week6.length_controlled_status(computed) == "was computed for 1 of 2 comparisons"


def test_an_older_win_rate_record_without_newer_fields_reads_na(tmp_path: Path) -> None:
    old = {"experiment": "alpacaeval", "win_rates": [{"system": "QLoRA (NF4)", "baseline": "gpt4_turbo",
                                                      "win_rate": 41.0, "standard_error": 2.0, "n": 10}]}
    p = week6.page([run(tmp_path / "old", old)])
    row = p.tables["winrates"].iloc[0]
    assert row["win rate (%)"] == 41.0 and math.isnan(row["position consistency (%)"])
    assert row["judge"] == NA and p.text["sanity"] == NA and p.text["consistency"] == NA
    assert p.text["judge"] == "no judge ran in this profile" and p.text["clipped"] == "outputs were judged whole"


def test_an_empty_profile_gives_na_not_an_error() -> None:
    p = week6.page([])
    assert p.text["n_train"] == NA and p.text["n_instructions"] == NA and p.text["within"] == "0 of 0"
    assert p.text["misses"] == "none" and p.text["miss_note"] == "" and p.text["qlora_memory_share"] == NA
    assert p.tables["winrates"].empty and p.tables["examples"].empty and p.tables["modes"].empty
    assert p.text["trust"].startswith("No judge ran")
    assert set(p.figures) == {"winrate_chart", "planner"}  # placeholders that say why nothing is drawn
    # the planner's LLaMA-7B row against the paper: r = 16 on q, k, v, o is 32 layers x 4 x 16 x (4096 + 4096)
    # = 16,777,216 of 6,755,192,832 parameters
    assert p.text["paper_lora_pct"] == "0.25"


def test_side_by_side_takes_the_first_disagreement_per_source_base_first(tmp_path: Path) -> None:
    runs = [instruct_run(tmp_path, "full", answers=["x", "b", "c", "d"]),
            instruct_run(tmp_path, "nf4", answers=["x", "B", "c", "D"], zero_shot=["x", "z1", "c", "z3"])]
    p = week6.page(runs)
    table = p.tables["examples"]
    assert (p.text["n_examples"], p.text["examples_differ"]) == ("2", "2")
    # position 0 agrees everywhere; 1 (koala) and 3 (oasst) differ, one row per source; 2 agrees
    assert list(table["instruction"]) == ["instruction 1", "instruction 3"]
    assert list(table.columns) == ["instruction", "source data set", "base", "QLoRA (NF4)", "full fine-tuning",
                                   "reference (text-davinci-003)"]
    assert list(table["QLoRA (NF4)"]) == ["B", "D"] and list(table["base"]) == ["z1", "z3"]


def test_side_by_side_falls_back_to_agreeing_answers(tmp_path: Path) -> None:
    p = week6.page([instruct_run(tmp_path, "nf4", answers=["a", "b", "c", "d"], zero_shot=["a", "b", "c", "x"])])
    assert list(p.tables["examples"]["instruction"]) == ["instruction 3", "instruction 0"]  # oasst differs; koala not
    assert (p.text["n_examples"], p.text["examples_differ"]) == ("2", "1")


def test_modes_use_the_plans_runs_not_the_sweep(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, f"q{s}", "nf4", s, 0.80 + 0.02 * s, 2000.0, 150.0) for s in (0, 1)]
    runs += [sst2_run(tmp_path, f"l{s}", "bf16", s, 0.84, 1800.0, 160.0) for s in (0, 1)]
    runs += [sst2_run(tmp_path, f"f{s}", "full", s, 0.86, 4000.0, 100.0, lr=5e-5) for s in (0, 1)]
    runs += [sst2_run(tmp_path, "sweep", "nf4", 0, 0.99, 9000.0, 10.0, lr=3e-3, group="sweep"),
             sst2_run(tmp_path, "old-sweep", "nf4", 0, 0.99, 9000.0, 10.0, lr=3e-4)]  # an old record: no group
    p = week6.page([], baseline=runs)
    table = p.tables["modes"].set_index("system")
    assert list(table.index) == ["QLoRA (NF4)", "16-bit LoRA", "full fine-tuning"]
    assert table.loc["QLoRA (NF4)", "seeds"] == 2
    assert table.loc["QLoRA (NF4)", "SST-2 accuracy, mean (%)"] == pytest.approx(81.0)
    assert table.loc["QLoRA (NF4)", "peak memory (MiB)"] == 2000.0
    assert (p.text["qlora_memory_share"], p.text["qlora_speed_share"]) == ("50", "150")  # 2000/4000, 150/100
    assert p.text["qlora_vs_lora"] == "above 16-bit LoRA's by 200 MiB (11 %)"
    assert p.text["modes_seeds"] == "2"


def test_planner_validation_counts_agreements_and_names_the_misses(tmp_path: Path) -> None:
    close = efficiency_run(tmp_path, "bf16", 0.0)
    close.metrics["training"]["memory"]["cpu_total_rss_above_baseline_mib"] = predicted_mib(close) * 1.05
    small = efficiency_run(tmp_path, "nf4", 0.0)
    small.metrics["training"]["memory"]["cpu_total_rss_above_baseline_mib"] = predicted_mib(small) * 2  # -50 %
    large = efficiency_run(tmp_path, "nf4", 0.0, batch=16, seq=64)
    large.metrics["training"]["memory"]["cpu_total_rss_above_baseline_mib"] = predicted_mib(large)
    p = week6.page([close, small], scaling=[large])
    table = p.tables["validation"]
    assert list(table["error (%)"]) == pytest.approx([100 * (1 / 1.05 - 1), -50.0, 0.0])
    assert list(table["tokens per step"]) == [64, 64, 1024] and list(table["mode"])[1] == "QLoRA (NF4)"
    assert p.text["within"] == "2 of 3" and p.text["worst_error"] == "50.0"
    assert p.text["misses"] == "tiny QLoRA (NF4) at 2 × 32 (-50 %)"
    assert p.text["miss_note"].startswith("Every miss is a 4-bit base on a CPU at a small batch")
    assert "The planner's error on the one such run is -50 %, while 1 of 1 4-bit runs at more than 256 tokens per " \
           "step is predicted within ±15 %." in p.text["miss_note"]
    data = chart_rows(p.figures["planner"], "mode")
    assert len(data) == 3 and {d["mode"] for d in data} == {"16-bit LoRA", "QLoRA (NF4)"}
    assert list(p.tables["efficiency"].columns[:3]) == ["run", "model", "mode"]
    assert p.tables["efficiency"]["peak memory (MiB)"].iloc[1] == pytest.approx(predicted_mib(small) * 2)


def test_the_miss_note_summarises_every_small_4bit_run() -> None:
    table = pd.DataFrame({"mode": ["QLoRA (NF4)"] * 4, "tokens per step": [64, 256, 1024, 2048],
                          "device": ["cpu"] * 4, "error (%)": [-44.0, -10.0, 5.0, -12.0]})
    note = week6.miss_note(table)
    assert "under-predicts all 2 such runs (by 10 % to 44 %), while 2 of 2 4-bit runs at more than 256 tokens per " \
           "step are predicted within ±15 %." in note
    assert week6.miss_note(table.assign(**{"error (%)": [1.0, 2.0, 3.0, 4.0]})) == ""


def test_a_miss_of_another_kind_is_called_so() -> None:
    table = pd.DataFrame({"mode": ["full fine-tuning"], "tokens per step": [64], "device": ["cpu"],
                          "error (%)": [30.0]})
    assert week6.miss_note(table).startswith("The misses are not confined")


def test_gpu_verdicts_answer_the_8b_question_with_the_planner() -> None:
    p = week6.page([])
    expected = next(r for r in planner.gpu_verdicts() if r["model"] == "qwen3-8b" and r["mode"] == "nf4")
    assert p.text["q8_need"] == f"{expected['predicted GiB']:.1f}"
    assert p.text["q8_verdict"] == (f"fits, with {expected['margin GiB']:.1f} GiB to spare" if expected["fits"]
                                    else f"does not fit: it is {-expected['margin GiB']:.1f} GiB short")
    table = p.tables["verdicts"]
    assert len(table) == 9 and {"predicted peak (GiB)", "margin on 24 GB (GiB)", "fits 24 GB"} <= set(table.columns)
    assert "full fine-tuning fits none" in p.text["other_modes"]
    assert "total" not in table.columns and "GPU GiB" not in table.columns
    assert list(p.tables["paper"]["QLoRA paper (MB)"]) == [5048, 26]
    assert list(p.tables["factory"]["mode"]) == ["QLoRA (NF4)", "16-bit LoRA", "full fine-tuning"]


def test_mode_summary_counts_what_fits() -> None:
    rows = [{"model": "a", "mode": "bf16", "fits": True, "margin GiB": 3.0, "predicted GiB": 20.0},
            {"model": "b", "mode": "bf16", "fits": False, "margin GiB": -1.0, "predicted GiB": 24.0}]
    assert week6.mode_summary(rows, "bf16") == "16-bit LoRA fits 1 of 2 (a)"
    assert week6.mode_summary(rows[:1], "bf16") == "16-bit LoRA fits all 1 (tightest: a, 3.0 GiB to spare)"


def test_wall_times_per_kind(tmp_path: Path) -> None:
    runs = [instruct_run(tmp_path, "nf4"), run(tmp_path / "w", WINRATES, wall=300.0, kind="winrates"),
            efficiency_run(tmp_path, "bf16", 100.0)]
    p = week6.page(runs)
    assert (p.text["minutes_instruct"], p.text["minutes_winrates"], p.text["minutes_efficiency"],
            p.text["minutes"]) == ("1", "5", "2", "8")


def test_each_model_reports_the_judge_the_rule_picks(tmp_path: Path) -> None:
    big = instruct_run(tmp_path / "big", "nf4")
    big.metrics["model"].update(label="Big", preset="big")
    big.metrics["parameters"] = {"total": 500}
    small = instruct_run(tmp_path / "small", "bf16")  # another run name
    small.metrics["model"].update(label="Small", preset="small")
    small.metrics["parameters"] = {"total": 100}
    weak = {**WINRATES, "judge": {"spec": "local:weak"}}
    strong = {**WINRATES, "judge": {"spec": "local:strong"},
              "win_rates": [rate("QLoRA (NF4)", "text_davinci_003", 40.0, 0.80, sanity=52.0)],
              "sanity_pair": {"text_davinci_003": {"win_rate": 52.0}}}
    runs = [small, big,
            run(tmp_path / "w-small", WINRATES, kind="winrates", instruct_runs=[small.name]),
            run(tmp_path / "w-weak", weak, kind="winrates", instruct_runs=[big.name]),
            run(tmp_path / "w-strong", strong, kind="winrates", instruct_runs=[big.name])]
    p = week6.page(runs)
    assert p.text["instruct_model"] == "Big" and p.text["judge"] == "local:strong"
    judges = p.tables["judges"]
    assert list(judges["answers of"]) == ["Big", "Big", "Small"]
    assert list(judges["reported"]) == ["no", "yes", "yes"]
    assert judges["position consistency (%)"].tolist() == pytest.approx([20.0, 80.0, 20.0])
    assert p.text["n_judges"] == "2"
    assert "local:strong kept its verdict" in p.text["judges_compared"] and "80.0 %" in p.text["judges_compared"]
    assert "local:weak: 20.0 % and 20.0 points" in p.text["judges_compared"]
    table = p.tables["winrates"]
    assert list(table["model"]) == ["Big", "Small", "Small", "Small"]
    assert table["win rate (%)"].iloc[0] == 40.0
    assert p.text["second"].startswith("For Small (the second model family), against AlpacaEval 1.0 reference")
    assert "QLoRA (NF4) 48.0 %, 16-bit LoRA 53.0 %" in p.text["second"]
    assert list(p.tables["lengths"]["model"]) == ["Big", "Big", "Small", "Small"]


def gpu_record(mode: str, allocated: float, device_peak: float, load_start: float = 500.0, paged: float = 0.0,
               checkpointing: bool = True, preset: str = "random-qwen3-8b") -> dict[str, Any]:
    """A gpu-check efficiency record at the plan's settings (MiB), as `run_efficiency` writes it on CUDA."""
    lora = None if mode == "full" else {"rank": 8, "alpha": 16, "dropout": 0.1, "placement": "attention"}
    return {"experiment": "efficiency", "check": f"plan-{mode}", "lora": lora,
            "model": {"preset": preset, "label": "Qwen3-8B (random weights)", "mode": mode},
            "fit": {"predicted_gib": 16.0, "fits": True},
            "shape": {"batch_size": 4, "seq_len": 512, "steps": 8, "gradient_checkpointing": checkpointing},
            "load_memory": {"cuda_device_used_at_start_mib": load_start, "cuda_max_allocated_mib": 6000.0},
            "training": {"tokens_per_second": 2000.0, "memory": {"cuda_max_allocated_mib": allocated,
                                                                   "cuda_device_used_peak_mib": device_peak},
                         "optimizer_states": {"tensors": 10, "paged_tensors": 4 if paged else 0, "mib": paged,
                                              "paged_mib": paged}},
            "environment": {"hardware": {"gpu": "NVIDIA H200"}, "git_commit": "abcdef0123", "versions": {}}}


def test_gpu_checks_measure_the_8b_answer_against_24_gb() -> None:
    records = [gpu_record("nf4", 10 * 1024, 12 * 1024), gpu_record("nf4", 27 * 1024, 28.5 * 1024, checkpointing=False),
               gpu_record("full", 30 * 1024, 70 * 1024, paged=30 * 1024)]
    page = week6.Page("week6")
    week6.gpu_measured(page, records)
    table = page.tables["gpu"]
    qlora = table[(table["mode"] == "QLoRA (NF4)") & (table["gradient checkpointing"] == "yes")].iloc[0]
    assert qlora["whole device while training (GiB)"] == pytest.approx((12 * 1024 - 500) / 1024, abs=0.01)
    assert qlora["fits 24 GB, measured"] == "yes"
    full = table[table["mode"] == "full fine-tuning"].iloc[0]
    assert full["PyTorch's peak (GiB)"] + full["paged optimizer states (GiB)"] == pytest.approx(60.0)
    assert full["planner error (%)"] == pytest.approx(100 * (16.0 - 60.0) / 60.0, abs=0.1)
    assert table[table["gradient checkpointing"] == "no"]["fits 24 GB, measured"].iloc[0] == "no"
    assert page.text["q8_allocated"] == "10.0" and page.text["gpu_name"] == "NVIDIA H200"
    assert page.text["gpu_lora_paged"] == "0 of 20" and page.text["gpu_context_gib"] == "0.5"
    assert page.text["q8_speed_share"] == "n/a"  # no 16-bit LoRA record to compare with
    assert page.text["gpu_verdicts_agree"] == "1 of the 3"  # these records all predict 16 GiB: "fits", twice wrong

    from qlora_utils.study import gpucheck, protocol

    verdict = protocol.memory_verdict(pd.DataFrame(), gpu_checks=gpucheck.verdict_rows(records))
    assert verdict["verdict"] == protocol.SUPPORTED and verdict["effect"] == pytest.approx(12.0)
    assert verdict["runs"] == ["gpu-check plan-nf4"]  # neither the run without checkpointing nor full fine-tuning
    over = protocol.memory_verdict(pd.DataFrame(), gpu_checks=gpucheck.verdict_rows(
        [gpu_record("nf4", 20 * 1024, 25 * 1024)]))
    assert over["verdict"] == protocol.NOT_SUPPORTED


def test_example_positions_shows_up_to_the_limit() -> None:
    answers = {"a": ["x"] * 6, "b": ["y"] * 6}  # every position differs
    meta = [{"dataset": f"source{i}"} for i in range(6)]  # each from its own source
    assert instruct.example_positions(answers, meta) == [0, 1, 2, 3]  # EXAMPLES = 4


def test_trust_a_sanity_gap_between_5_and_10_is_caution() -> None:
    assert instruct.trust_sentence(95.0, 7.0).startswith("With caution")


def test_miss_note_mixed_signs_is_not_under_prediction() -> None:
    table = pd.DataFrame({"mode": ["QLoRA (NF4)"] * 2, "tokens per step": [64, 128], "device": ["cpu"] * 2,
                          "error (%)": [-44.0, 20.0]})
    note = week6.miss_note(table)
    assert "The 2 such runs have errors from -44 % to +20 %" in note and "under-predicts" not in note


def test_q8_speed_share_is_qlora_over_lora() -> None:
    nf4, bf16 = gpu_record("nf4", 10 * 1024, 12 * 1024), gpu_record("bf16", 16 * 1024, 18 * 1024)
    nf4["training"]["tokens_per_second"], bf16["training"]["tokens_per_second"] = 1500.0, 2000.0
    page = week6.Page("week6")
    week6.gpu_measured(page, [nf4, bf16])
    assert page.text["q8_speed_share"] == "75"  # 100 x 1500 / 2000


def test_a_win_rate_run_naming_no_run_goes_with_the_lead(tmp_path: Path) -> None:
    big = instruct_run(tmp_path / "big", "nf4")
    big.metrics["model"].update(label="Big", preset="big")
    big.metrics["parameters"] = {"total": 500}
    small = instruct_run(tmp_path / "small", "bf16")
    small.metrics["model"].update(label="Small", preset="small")
    small.metrics["parameters"] = {"total": 100}
    p = week6.page([small, big, run(tmp_path / "w", WINRATES, kind="winrates")])  # no instruct_runs parameter
    assert list(p.tables["judges"]["answers of"]) == ["Big"] and p.text["judge"] == "local:tiny-qwen2"
    assert p.text["second"] == ""
