"""gpu-check's machinery on the CPU with tiny models: resumable, a failing check recorded while the others run, each
check in its own process, models dropped after their last check; and the optimizer-state report it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qlora_utils.core.models import materialize, model_folder
from qlora_utils.core.training import TrainSettings, optimizer_states
from qlora_utils.errors import QLoraError
from qlora_utils.study import gpucheck
from qlora_utils.study.experiments import EfficiencyRun, Experiment


@pytest.mark.slow
def test_checks_resume_survive_a_failure_and_drop_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         data_dir: Path) -> None:
    smollm2 = materialize("smollm2-135m-instruct")  # the tiny models' tokenizer, from the usual cache
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path / "cache"))  # the tiny models in a cache of this test's own
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / smollm2.name).symlink_to(smollm2)
    checks = [gpucheck.Check("tiny-nf4", EfficiencyRun(preset="tiny-qwen3", mode="nf4", batch_size=2, seq_len=16,
                                                       steps=2)),
              gpucheck.Check("broken", EfficiencyRun(preset="no-such-model")),
              gpucheck.Check("sst2-tiny", Experiment(task="sst2", preset="tiny-qwen3", mode="nf4", train_examples=16,
                                                     eval_examples=8, selection_examples=8, data_dir=str(data_dir),
                                                     train=TrainSettings(batch_size=8)))]
    rows = gpucheck.run_checks(tmp_path / "out", checks, require_cuda=False, drop_models=True, isolate=False)
    assert [r["state"] for r in rows] == ["done", "failed", "done"]
    assert "no-such-model" in (tmp_path / "out" / "broken.error.txt").read_text()
    assert not list((tmp_path / "out").glob(".*.staging"))
    record = json.loads((tmp_path / "out" / "tiny-nf4" / "metrics.json").read_text())
    assert rows[0]["planner_gib"] == rows[0]["predicted_gib"] and rows[0]["tokens_per_s"] > 0
    assert record["training"]["optimizer_states"]["tensors"] == rows[0]["state_tensors"] > 0
    assert 0 <= rows[2]["fine_tuned_accuracy"] <= 1
    assert not model_folder("tiny-qwen3").exists()  # its last check is done: dropped from the cache

    before = (tmp_path / "out" / "tiny-nf4" / "metrics.json").stat().st_mtime_ns
    again = gpucheck.run_checks(tmp_path / "out", checks[:2], require_cuda=False, isolate=True)
    assert [r["state"] for r in again] == ["done before", "failed"]  # the failure ran again, in its own process
    assert (tmp_path / "out" / "tiny-nf4" / "metrics.json").stat().st_mtime_ns == before


def test_gpu_check_refuses_a_machine_without_cuda_and_unknown_names(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(QLoraError, match="no CUDA device"):
        gpucheck.run_checks(tmp_path)
    with pytest.raises(QLoraError, match="plan-qwen3-8b-nf4"):
        gpucheck.run_checks(tmp_path, only="nothing", require_cuda=False)


def test_default_checks_are_the_planner_verdict_rows() -> None:
    from qlora_utils.study import planner

    names = [c.name for c in gpucheck.default_checks()]
    assert len(names) == len(set(names))
    for preset in planner.VERDICT_PRESETS:
        for mode in ("nf4", "bf16", "full"):
            work = next(c.work for c in gpucheck.default_checks() if c.name == f"plan-{preset}-{mode}")
            assert (work.batch_size, work.seq_len) == (planner.PLAN_GPU_SETTINGS["batch_size"],
                                                       planner.PLAN_GPU_SETTINGS["seq_len"])
            assert work.lora == (None if mode == "full" else planner.PLAN_LORA)


def test_optimizer_states_counts_paged_tensors() -> None:
    weight, small = torch.nn.Parameter(torch.zeros(1000, 200)), torch.nn.Parameter(torch.zeros(8, 64))
    optimizer = torch.optim.AdamW([weight, small])
    (weight.sum() + small.sum()).backward()
    optimizer.step()
    optimizer.state[weight]["exp_avg"].is_paged = True  # as bitsandbytes marks the states it pages
    report = optimizer_states(optimizer)
    assert report["class"] == "torch.optim.adamw.AdamW"
    assert report["tensors"] == 4 and report["paged_tensors"] == 1  # two moments each; step counters left out
    assert report["paged_mib"] == round(1000 * 200 * 4 / 1024 ** 2, 1)
    assert report["mib"] == round(2 * (1000 * 200 + 8 * 64) * 4 / 1024 ** 2, 1)
