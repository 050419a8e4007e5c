"""The memory planner's accounting on hand-checked cases."""

from __future__ import annotations

import pytest

from qlora_utils.cli import main
from qlora_utils.core.adapters import LoraSettings
from qlora_utils.core.models import architecture_config
from qlora_utils.errors import QLoraError
from qlora_utils.study.planner import _linear_params, plan_memory


def test_double_quantization_costs_0127_bits_per_weight() -> None:
    config = architecture_config("random-qwen2.5-7b")
    plan = plan_memory(config, "nf4", LoraSettings(8))
    linear = _linear_params(config)
    assert plan.quantized_weights == 0.5 * linear
    assert 8 * plan.quantization_constants / linear == pytest.approx(0.127, abs=1e-3)  # the QLoRA paper's figure


def test_modes_order_as_expected() -> None:
    config = architecture_config("random-qwen3-4b")
    nf4 = plan_memory(config, "nf4", LoraSettings(8)).total
    bf16 = plan_memory(config, "bf16", LoraSettings(8)).total
    full = plan_memory(config, "full", None).total
    assert nf4 < bf16 < full
    full_plan = plan_memory(config, "full", None)
    assert full_plan.optimizer_states == 2 * full_plan.gradients == 2 * full_plan.unquantized_weights


def test_checkpointing_saves_activation_memory() -> None:
    config = architecture_config("random-qwen2.5-0.5b")
    with_ckpt = plan_memory(config, "bf16", LoraSettings(8), batch_size=8, seq_len=512)
    without = plan_memory(config, "bf16", LoraSettings(8), batch_size=8, seq_len=512, gradient_checkpointing=False)
    assert with_ckpt.activations < without.activations / 5
    # a 4-bit base keeps the quantized projections' inputs (bitsandbytes stores them outside the checkpoint hooks)
    nf4 = plan_memory(config, "nf4", LoraSettings(8), batch_size=8, seq_len=512)
    held = config.num_hidden_layers * 8 * 512 * (3 * config.hidden_size * 4 + config.intermediate_size * 2)
    assert nf4.activations - with_ckpt.activations == pytest.approx(held, rel=0.01)


def test_planner_refuses_inconsistent_inputs() -> None:
    config = architecture_config("tiny-qwen2")
    with pytest.raises(QLoraError, match="full fine-tuning has no adapters"):
        plan_memory(config, "full", LoraSettings(8))
    with pytest.raises(QLoraError, match="unknown optimizer"):
        plan_memory(config, "nf4", LoraSettings(8), optimizer="lion")


def test_plan_command_prints_breakdown_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "qwen3-8b", "--mode", "full", "--gpu-gib", "24"]) == 0
    out = capsys.readouterr().out
    assert "optimizer states" in out and "qwen3-8b full: does not fit in 24 GiB" in out


def test_efficiency_run_that_cannot_fit_is_recorded_not_started(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import psutil

    from qlora_utils.study.experiments import EfficiencyRun, run_efficiency

    class Tiny:  # pretend this machine has 1 MiB free
        available = total = 1024 ** 2

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    record = run_efficiency(EfficiencyRun(preset="tiny-qwen2", mode="full", lora=None), tmp_path)
    assert record["fit"]["fits"] is False and "training" not in record
    assert json.loads((tmp_path / "metrics.json").read_text())["fit"]["predicted_gib"] > 0


def test_efficiency_run_measures_memory_and_speed(tmp_path) -> None:
    from qlora_utils.study.experiments import EfficiencyRun, run_efficiency

    record = run_efficiency(EfficiencyRun(preset="tiny-qwen3", mode="nf4", lora=LoraSettings(4), batch_size=2,
                                          seq_len=16, steps=2), tmp_path)
    assert record["fit"]["fits"] and record["training"]["steps"] == 2
    assert record["training"]["tokens"] == 2 * 2 * 16 and record["training"]["tokens_per_second"] > 0


def test_llama_7b_terms_by_hand() -> None:
    """Each term of the plan for LLaMA-7B (6,738,415,616 parameters, the published count) worked out by hand:
    comparisons between modes alone would let a wrong term through."""
    from qlora_utils.study.planner import WORKSPACE, MemoryPlan, llama_7b_config, verdict

    config, lora = llama_7b_config(), LoraSettings(8)  # r = 8 on q, k, v: 32 layers x 3 x 8 x (4096 + 4096)
    nf4 = plan_memory(config, "nf4", lora, batch_size=1, seq_len=512)
    assert nf4.optimizer_states == 8 * 6_291_456  # paged AdamW 32-bit: two fp32 states per trainable parameter
    assert nf4.unquantized_weights == 2 * (2 * 32_000 * 4096 + 65 * 4096)  # embeddings, head and 65 norms in bf16
    bf16 = plan_memory(config, "bf16", lora, batch_size=1, seq_len=512)  # checkpointing on: every layer's input
    per_layer = 512 * (10 * 4096 + 4 * 11008) * 2 + 32 * 512 ** 2 * 2  # plus one layer recomputed
    assert bf16.activations == 32 * 512 * 4096 * 2 + per_layer + WORKSPACE
    full = plan_memory(config, "full", None, batch_size=1, seq_len=512)
    assert full.autocast_copies == 2 * (6_738_415_616 - 262_410_240)  # a bf16 copy of every linear weight
    edge = verdict(MemoryPlan(23 * 1024 ** 3, 0, 0, 0, 0, 0, 0, 0), 24.0)  # 23 GiB + 1 GiB reserve = 24 GiB
    assert edge["margin GiB"] == 0.0 and edge["fits"] is True
