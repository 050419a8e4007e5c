"""Same seed, same numbers: one tiny experiment in separate processes gives identical adapters and metrics, and a
different seed gives different ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from qlora_utils.grid.runner import REPO


def _run(out: Path, seed: int, threads: int = 1) -> tuple[dict, dict]:
    command = [sys.executable, "-m", "qlora_utils", "sst2", "--model", "tiny-qwen2", "--mode", "nf4",
               "--train-examples", "16", "--eval-examples", "16", "--batch-size", "8", "--lr", "1e-2",
               "--seed", str(seed), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, load_file(out / "adapter" / "adapter_model.safetensors")


def _numbers(metrics: dict) -> dict:
    return {"zero_shot": metrics["zero_shot"]["accuracy"], "fine_tuned": metrics["fine_tuned"]["accuracy"],
            "selection": metrics["selection"]["accuracy"]}


@pytest.mark.slow
def test_same_seed_same_adapters_and_metrics_in_separate_processes(tmp_path: Path, data_dir: Path) -> None:
    first, weights_a = _run(tmp_path / "a", seed=0)
    second, weights_b = _run(tmp_path / "b", seed=0)
    other, weights_c = _run(tmp_path / "c", seed=1)
    assert weights_a.keys() == weights_b.keys() and weights_a
    assert all(bool((weights_a[k] == weights_b[k]).all()) for k in weights_a), "same seed, different adapters"
    assert _numbers(first) == _numbers(second)
    losses = lambda d: [h["loss"] for h in json.loads((d / "history.json").read_text())]  # noqa: E731
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert any(not bool((weights_a[k] == weights_c[k]).all()) for k in weights_a), "another seed, same adapters"
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


@pytest.mark.slow
def test_reproduce_reruns_a_finished_run_and_finds_it_identical(tmp_path: Path, data_dir: Path) -> None:
    from qlora_utils.grid.reproduce import reproduce
    from qlora_utils.grid.profiles import load_profile
    from qlora_utils.grid.runner import run_profile

    profile = load_profile("smoke")
    assert run_profile(profile, root=tmp_path / "runs", only=["week2-qlora-seed0"], allow_dirty=True) == {
        "week2-qlora-seed0": "done"}
    found = reproduce(profile, "week2-qlora-seed0", tmp_path / "scratch", root=tmp_path / "runs", allow_dirty=True)
    assert found.differences == []
    assert "thread(s)" in found.machines and "the numbers should agree exactly" in found.machines
    generations = tmp_path / "runs" / "smoke" / "week2-qlora-seed0" / "generations.json"
    rows = json.loads(generations.read_text())
    rows[0]["fine_tuned"] = 1 - rows[0]["fine_tuned"]
    generations.write_text(json.dumps(rows))  # a tampered record is caught
    assert reproduce(profile, "week2-qlora-seed0", tmp_path / "scratch2", root=tmp_path / "runs",
                     allow_dirty=True).differences == ["1 of 16 per-example outputs differ"]


def test_the_machine_note_says_when_identical_numbers_are_not_to_be_expected() -> None:
    from qlora_utils.grid.reproduce import machine_note

    slow = {"platform": "Linux-a", "torch_threads": 1}  # a run from before the CPU's model was recorded
    here = {"platform": "Linux-b", "cpu_model": "Xeon", "cpu_capability": "AVX512", "torch_threads": 1}
    assert "CPU not recorded" in machine_note(slow, here) and "expect rounding differences" in machine_note(slow, here)
    assert "should agree exactly" in machine_note(here, dict(here))
    assert "expect rounding differences" in machine_note(here, {**here, "torch_threads": 2})
    assert "expect rounding differences" in machine_note(here, {**here, "cpu_capability": "AVX2"})
    routed = {**here, "bf16_products": "fp32 products of bf16 inputs"}  # QLORA_BF16_VIA_FP32=1 on the same CPU
    assert "expect rounding differences" in machine_note({**here, "bf16_products": "bf16 kernels"}, routed)
    assert "fp32 products of bf16 inputs" in machine_note(routed, routed)
    unnumbered = {**here, "thread_changes": [{"after_seconds": 163.7, "threads": 2}]}  # before calls were numbered
    assert "cannot be repeated" in machine_note(unnumbered, here)
    numbered = {**here, "thread_changes": [{"after_seconds": 163.7, "call": 40, "threads": 2}]}
    assert "1 thread-count change(s) replayed" in machine_note(numbered, numbered)
    assert "should agree exactly" in machine_note(numbered, numbered)
