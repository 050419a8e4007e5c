"""The week 7 chapter on synthetic runs: seeds never pooled across configurations, the best configuration by the
protocol's rule, one quality figure per metric."""

from __future__ import annotations

from pathlib import Path

from chapter_fixtures import sst2_run
from qlora_utils.chapters import week7


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
