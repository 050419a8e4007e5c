"""The week 8 chapter on synthetic runs: one verdict row per expectation, the same verdicts as week 2."""

from __future__ import annotations

from pathlib import Path

from chapter_fixtures import sst2_run
from test_chapters_week6 import gpu_record
from qlora_utils.book.chapters import week2, week8


def test_week8_and_week2_agree(tmp_path: Path) -> None:
    runs = []
    for seed, (full, qlora) in enumerate(zip([0.86, 0.87, 0.88, 0.86, 0.87], [0.85, 0.86, 0.87, 0.85, 0.86])):
        runs.append(sst2_run(tmp_path, f"week2-full-seed{seed}", "full", seed, full))
        runs.append(sst2_run(tmp_path, f"week2-qlora-seed{seed}", "nf4", seed, qlora + 0.001 * seed))
    report, baseline = week8.page(runs, gpu=[]), week2.page(runs)
    table = report.tables["verdicts"]
    assert list(table["expectation"]) == ["QLoRA within 3 % of full fine-tuning"] * 3 + [
        "QLoRA within 1.5 points of 16-bit LoRA", "under 1 % of parameters trainable",
        "an 8B model trains with QLoRA within a 24 GB GPU"]
    assert list(table["verdict"]) == ["supported"] + ["not testable here"] * 3 + ["supported", "not testable here"]
    assert report.text["full"] == baseline.text["full_verdict"] == "supported"
    assert baseline.text["full_sentence"].replace(": supported;", ";") == report.text["full_sentence"], \
        "week 8 names the verdict before its evidence, so the evidence does not repeat it"
    assert report.text["full_sentence"].endswith("the gap is significant (QLoRA behind: its interval excludes 0)"), \
        "significance is a statement of its own beside the margin's verdict (protocol v2)"
    assert report.text["gpu_sentence"].startswith("predicted, not measured")
    # differences 1.0, 0.9, 0.8, 0.7, 0.6: mean 0.8, sd 0.158, t(4) 2.776 → ±0.196
    assert table["effect (95 % CI)"].iloc[0] == "+0.8 points (+0.6 to +1.0; 5 seeds)"
    assert "predicted" in table["effect (95 % CI)"].iloc[5]
    assert report.text["squad_train"] == "n/a"
    measured = week8.page(runs, gpu=[gpu_record("nf4", 10 * 1024, 12 * 1024)])  # a committed gpu-check decides
    assert measured.text["gpu"] == "supported" and measured.text["gpu_sentence"].startswith("measured on a GPU")
    assert report.text["planner_limit"].endswith("checked against CPU measurements only.")
    wrong = gpu_record("nf4", 27 * 1024, 28.5 * 1024, checkpointing=False)  # predicted 16 GiB: fits; measured: not
    limits = week8.page(runs, gpu=[gpu_record("nf4", 10 * 1024, 12 * 1024), wrong]).text["planner_limit"]
    assert "2 of its rows were trained on a GPU" in limits and limits.endswith("its verdict held in 1 of them.")


def test_the_judge_limitation_names_the_reported_judge_and_its_trust(tmp_path: Path) -> None:
    from qlora_utils.core.records import Run

    def judged(name: str, spec: str, consistency: float, sanity: float) -> Run:
        metrics = {"experiment": "alpacaeval", "judge": {"spec": spec},
                   "win_rates": [{"system": "QLoRA (NF4)", "baseline": "base", "win_rate": 55.0, "n": 4,
                                  "position_consistency": consistency}],
                   "sanity_pair": {"base": {"win_rate": sanity}}}
        return Run(tmp_path / name, {"parameters": {"kind": "winrates"}}, {"state": "done"}, metrics, {})

    assert week8.page([]).text["judge_limit"] == "No AlpacaEval judge ran in this profile."
    text = week8.page([judged("a", "local:small", 0.05, 70.0), judged("b", "local:large", 0.9, 53.0)]).text
    assert text["judge_limit"].startswith("The AlpacaEval judge reported, local:large, kept its "
                                          "verdict when the answers swapped places in 90.0 % of pairs")
    assert "up to 3.0 points from 50 %. How far to trust it: reasonably:" in text["judge_limit"]


def test_each_models_verdicts_link_to_the_chapter_that_ran_them(tmp_path: Path) -> None:
    runs = []
    for seed in range(3):
        for mode in ("full", "nf4", "bf16"):
            runs.append(sst2_run(tmp_path, f"week2-{mode}-seed{seed}", mode, seed, 0.85 + 0.01 * seed))
        for mode in ("nf4", "bf16"):
            runs.append(sst2_run(tmp_path, f"week3-big-{mode}-seed{seed}", mode, seed, 0.90, label="Big",
                                 preset="big", total=900_000, notebook="week3_scaling"))
    runs.append(sst2_run(tmp_path, "week5-r16-attention_mlp-seed0", "nf4", 0, 0.86, rank=16,
                         placement="attention_mlp", notebook="week5_ablations", trainable=6000))
    report = week8.page(runs, gpu=[])
    assert report.text["trainable_elsewhere"] == ("; the verdict is at the plan's configuration: this profile's other "
                                                  "QLoRA configurations train up to 3.00 % (M-135M, r = 16 on "
                                                  "attention_mlp)")
    assert week8.page(runs[:-1], gpu=[]).text["trainable_elsewhere"] == "", "only the plan's configuration ran"
    smaller = sst2_run(tmp_path, "week5-r4-attention-seed0", "nf4", 0, 0.86, rank=4, notebook="week5_ablations",
                       trainable=500)
    assert week8.page(runs + [smaller], gpu=[]).text["trainable_elsewhere"].endswith(
        "up to 3.00 % (M-135M, r = 16 on attention_mlp)"), "the largest share, not the last or the smallest"
    table = report.tables["verdicts"]
    lora = table[table["expectation"] == "QLoRA within 1.5 points of 16-bit LoRA"].set_index("model")
    assert "week3_scaling.html" in lora.loc["Big", "evidence"], "the larger model's modes were compared in week 3"
    assert "week2_sst2_baseline.html" in lora.loc["M-135M", "evidence"]
    assert report.text["seeds_per_model"] in ("M-135M 3; Big 3", "Big 3; M-135M 3")
