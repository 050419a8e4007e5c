"""The side-by-side benchmark on a tiny model: both recipes do identical work (the same per-step losses) and both
scorers give the same predictions."""

from __future__ import annotations

from pathlib import Path

from qlora_utils.bench import BenchSettings, compare_losses, run_bench


def test_project_and_reference_do_identical_work(tmp_path: Path, data_dir: Path) -> None:
    settings = BenchSettings(preset="tiny-qwen2", train_examples=32, batch_size=8, repeats=1, max_steps=3,
                             eval_examples=24)
    result = run_bench(settings, str(tmp_path), checkpointing=(False,))
    training, scoring = result["summary"]
    assert training["identical work"] and training["loss difference"] <= settings.loss_tolerance, training
    losses = [r["losses"] for r in result["rows"]]
    assert len(losses) == 2 and len(losses[0]) == len(losses[1]) == 3  # the same steps, losses within tolerance
    assert scoring["predictions that differ"] == 0 and scoring["project accuracy"] == scoring["reference accuracy"]
    assert training["speed-up"] > 0 and scoring["speed-up"] > 0


def test_compare_losses() -> None:
    assert compare_losses([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert compare_losses([1.1, 2.0], [1.0, 2.0]) == 0.10000000000000009
    assert compare_losses([1.0], [1.0, 2.0]) == float("inf")
