"""The week 7 chapter on synthetic runs: seeds never pooled across configurations, the best configuration by the
protocol's rule, one quality figure per metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chapter_fixtures import sst2_run
from qlora_utils.book.chapters import week7
from qlora_utils.core.records import Run


def test_rank_table_groups_by_full_configuration(tmp_path: Path) -> None:
    runs = [sst2_run(tmp_path, f"week2-qlora-seed{s}", "nf4", s, a, selection=0.8)
            for s, a in enumerate([0.82, 0.83, 0.84])]
    runs += [sst2_run(tmp_path, "week2-sweep-lr3e-3", "nf4", 0, 0.95, group="sweep", lr=3e-3),
             sst2_run(tmp_path, "week2-sweep-n2000", "nf4", 0, 0.90, group="sweep", examples=2000),
             sst2_run(tmp_path, "week2-other-lr", "nf4", 1, 0.10, lr=3e-4)]
    runs += [sst2_run(tmp_path, f"week5-r4-attention-seed{s}", "nf4", s, 0.80, rank=4, notebook="week5_ablations",
                      selection=0.7, trainable=500) for s in range(2)]
    page = week7.page(runs)
    table = page.tables["rank_table"].set_index("rank r")
    assert table.loc[8, "seeds"] == 3 and table.loc[8, "dev accuracy (%)"] == 83.0, "no sweep run pooled as a seed"
    assert table.loc[4, "seeds"] == 2 and len(table) == 2
    assert page.text["best"].startswith("r = 8 on attention (80.0 % on the selection split; 83.0 % on the dev set")
    assert page.text["rank_model"] == "M-135M" and page.text["rank_others"] == ""
    assert page.text["rank_reading"] == "needs both placements and more than one rank"  # attention only here
    assert set(page.figures) >= {"rank", "quality_memory", "quality_memory_squad", "loss", "speed"}
    sst2_axis = page.figures["quality_memory"].to_dict()["encoding"]["y"]["title"]
    assert sst2_axis == "SST-2 dev accuracy (%)"


def _generating_run(tmp: Path, name: str, experiment: str, mode: str, total: int, label: str,
                    gens: list[dict[str, Any]]) -> Run:
    """A finished SQuAD or instruction-tuning run of one model, with its per-example outputs."""
    (tmp / name).mkdir()
    (tmp / name / "generations.json").write_text(json.dumps(gens))
    metrics = {"experiment": experiment, "model": {"label": label, "mode": mode, "preset": label.lower()},
               "parameters": {"total": total}}
    return Run(tmp / name, {"notebook": "notebooks/week4_squad.md", "parameters": {}}, {"state": "done"}, metrics, {})


def test_side_by_side_shows_the_lead_model_and_no_instruction_twice(tmp_path: Path) -> None:
    def squad(name: str, total: int, label: str, answer: str) -> Run:
        gens = [{"question": f"q{i}", "answers": ["a"], "zero_shot": "z", "fine_tuned": f"{answer}{i}"}
                for i in range(3)]
        return _generating_run(tmp_path, name, "squad", "nf4", total, label, gens)

    def instruct(name: str, mode: str, total: int, label: str, answers: list[str]) -> Run:
        gens = [{"instruction": f"i{k}", "dataset": "koala" if k < 4 else "oasst", "reference": "r",
                 "zero_shot": "same", "fine_tuned": a} for k, a in enumerate(answers)]
        return _generating_run(tmp_path, name, "alpaca", mode, total, label, gens)

    same = ["same"] * 8
    runs = [squad("week4-squad-qlora-seed0", 100, "Small", "small"),  # sorts first by name: not the lead
            squad("week4-squad-big-qlora-seed0", 900, "Big", "big"),
            instruct("week6-instruct-full", "full", 100, "Small", ["x"] * 8),
            instruct("week6-instruct-qlora", "nf4", 100, "Small", ["y"] * 8),
            instruct("week6-big-instruct-qlora", "nf4", 900, "Big", ["d0", "d1", "same", "d3", "d4", *same[:3]])]
    page = week7.page(runs)
    squad_rows = page.tables["squad_examples"]
    assert list(squad_rows["QLoRA (NF4)"]) == ["big0", "big1", "big2"], "the largest model's answers, not another's"
    assert page.text["squad_model"] == "Big"
    alpaca = page.tables["alpaca_examples"]
    assert page.text["alpaca_model"] == "Big"
    assert list(alpaca.columns[2:4]) == ["base", "QLoRA (NF4)"], "one model's systems only, none of Small's"
    # week 6 shows position 0 (koala) and 4 (oasst); the next disagreements are 1 and 3, then agreeing ones fill up
    assert list(alpaca["instruction"]) == ["i1", "i3", "i2"]


def _two_model_runs(tmp_path: Path) -> list[Run]:
    runs = []
    for mode in ("nf4", "bf16"):
        for s in (0, 1):
            big = sst2_run(tmp_path, f"big-{mode}-{s}", mode, s, 0.85, label="Big-1B", total=1_000_000, preset="big")
            big.metrics["training"]["tokens_per_second"] = 300.0 if mode == "nf4" else 400.0
            runs += [big, sst2_run(tmp_path, f"m-{mode}-{s}", mode, s, 0.80)]  # M-135M at 100 tokens/s
    return runs


def test_speed_is_the_largest_models(tmp_path: Path) -> None:
    assert week7.page(_two_model_runs(tmp_path)).text["tps"] == "QLoRA (NF4) 300 (1 thread), 16-bit LoRA 400 (1 thread)"


def test_busy_means_above_cores_plus_a_half(tmp_path: Path) -> None:
    runs = _two_model_runs(tmp_path)
    runs[0].metrics["training"]["memory"].update(load_average_1min=2.3, cpu_count=2)  # 2.3 <= 2 + 0.5: quiet
    assert week7.page(runs).text["busy"].startswith("0 of the 1 training runs that recorded it")
