"""The side-by-side benchmark on a tiny model: both recipes do identical work (the same per-step losses: exactly for
the project's code with its speed-ups off, within the stated tolerance with them on) and both scorers agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_utils.errors import QLoraError
from qlora_utils.study.bench import NOISE_FLOOR, VARIANTS, BenchSettings, compare_losses, run_bench, table


@pytest.mark.slow
def test_project_and_reference_do_identical_work(tmp_path: Path, data_dir: Path) -> None:
    settings = BenchSettings(preset="tiny-qwen2", train_examples=32, batch_size=8, repeats=1, max_steps=3,
                             eval_examples=24, variants=("plain", "project"))
    result = run_bench(settings, str(tmp_path), checkpointing=(False,))
    noise, plain, project, scoring = result["summary"]
    assert noise["variant"] == NOISE_FLOOR and noise["mean loss tolerance"] == settings.loss_tolerance
    assert noise["identical work"] is None, "the noise floor sets the rule; it is not judged by it"
    assert 0 < noise["first-step loss difference"] <= settings.first_step_tolerance, "the other attention kernel only rounds"
    allowed = max(settings.loss_tolerance, noise["mean loss difference"])
    assert plain["mean loss tolerance"] == project["mean loss tolerance"] == allowed
    assert plain["loss difference"] == 0.0, "the project's code without speed-ups computes exactly the reference's"
    assert project["identical work"] and project["mean loss difference"] <= allowed, project
    assert project["first-step loss difference"] <= settings.first_step_tolerance
    losses = {r["side"]: r["losses"] for r in result["rows"]}
    assert sorted(losses) == ["plain", "project", "reference", NOISE_FLOOR]
    assert {len(v) for v in losses.values()} == {3}
    assert scoring["predictions that differ"] <= 1 and scoring["project accuracy"] > 0
    shown = table(result)
    other = result["attention"]["noise floor"]
    assert other != result["attention"]["reference"]
    assert list(shown["work"]) == [f"training, noise floor: the reference with {other} attention, checkpointing off",
                                   "training, plain, checkpointing off", "training, project, checkpointing off",
                                   "SST-2 dev scoring"]
    assert (shown["speed-up"] > 0).all() and shown["agreement"].str.contains("%").all()


def test_compare_losses_and_variants() -> None:
    assert compare_losses([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert compare_losses([1.1, 2.0], [1.0, 2.0]) == 0.10000000000000009
    assert compare_losses([1.0], [1.0, 2.0]) == float("inf")
    import statistics

    assert compare_losses([1.1, 2.0], [1.0, 2.0], statistics.fmean) == pytest.approx(0.05)
    assert VARIANTS["project"] == {}, "the project variant is TrainSettings' defaults"
    from qlora_utils.study.bench import _train_settings

    with pytest.raises(QLoraError, match="unknown bench variant 'fast'"):
        _train_settings(BenchSettings(), "fast")


def test_the_rules_on_made_up_timings_and_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alternation, best-of-repeats times, the ratio reference / project and the identical-work rule, on fakes
    whose numbers are checked by hand (no model trained)."""
    from types import SimpleNamespace

    from qlora_utils.study import bench

    seconds = {"reference": [6.0, 4.0], "noise": [5.0, 5.0], "plain": [3.0, 2.0], "project": [2.0, 1.0]}
    losses = {"reference": [1.0, 0.5], "noise": [1.0, 0.56], "plain": [1.0, 0.555], "project": [1.02, 0.5]}
    calls: list[str] = []

    def fake(side: str) -> tuple[float, list[float]]:
        calls.append(side)
        return seconds[side][calls.count(side) - 1], losses[side]

    monkeypatch.setattr(bench, "attention_kernels", lambda: {"reference": "sdpa", "noise floor": "eager"})
    monkeypatch.setattr(bench, "reference_training",
                        lambda settings, ckpt, out, attention=None: fake("noise" if attention else "reference"))
    monkeypatch.setattr(bench, "project_training", lambda settings, ckpt, out, variant="project": fake(variant))
    monkeypatch.setattr(bench, "load_average", lambda: 0.5)
    monkeypatch.setattr(bench, "load_model", lambda *a: SimpleNamespace(model=None, tokenizer=None))
    monkeypatch.setattr(bench, "load_task", lambda *a, **k: None)
    monkeypatch.setattr(bench, "sst2_accuracy", lambda *a: {"accuracy": 0.9, "predictions": [1, 0]})
    monkeypatch.setattr(bench, "reference_scoring", lambda *a: {"accuracy": 0.9, "predictions": [1, 1]})
    result = bench.run_bench(BenchSettings(repeats=2, variants=("plain", "project")), str(tmp_path),
                             checkpointing=(False,))
    assert calls == ["reference", "noise", "plain", "project", "project", "plain", "noise", "reference"]
    noise, plain, project, scoring = result["summary"]
    assert noise["mean loss difference"] == pytest.approx(0.06)  # (0 + 0.06 / 0.5) / 2
    assert plain["mean loss tolerance"] == pytest.approx(0.06) and plain["identical work"] is True  # 0.055
    assert project["first-step loss difference"] == pytest.approx(0.02) and project["identical work"] is False
    assert (project["reference s"], project["project s"], project["speed-up"]) == (4.0, 1.0, 4.0)
    assert scoring["predictions that differ"] == 1
