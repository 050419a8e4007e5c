"""Memory by component (qlora_utils.core.memory): tensor accounting on tiny models, against what it must come to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qlora_utils.core.adapters import LoraSettings, parameter_report, prepare_for_training
from qlora_utils.core.memory import (
    PACKED_4BIT, Ledger, SavedForBackward, allocation_peak, components_by_arm, memory_table, optimizer_ledger,
    resident_set, step_components, weight_ledger,
)
from qlora_utils.core.models import architecture_config, load_model
from qlora_utils.study.planner import _linear_params


def _prepared(preset: str, mode: str, rank: int = 4) -> torch.nn.Module:
    loaded = load_model(preset, mode)
    return prepare_for_training(loaded, None if mode == "full" else LoraSettings(rank), gradient_checkpointing=False)


def _batch(rows: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 1000, (rows, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def test_resident_set_parts_add_up_to_vmrss() -> None:
    rss = resident_set()
    if not rss:
        pytest.skip("no /proc/self/status here")
    assert abs(rss["RssAnon"] + rss["RssFile"] + rss["RssShmem"] - rss["VmRSS"]) <= 4 / 1024 * 2  # two pages


def test_ledger_counts_a_storage_once() -> None:
    base = torch.zeros(1024, dtype=torch.float32)
    ledger = Ledger(ranges=[])
    ledger.add("a", base)
    ledger.add("a", base[:10])  # a view
    ledger.add("b", base.view(32, 32))
    assert ledger.bytes == {"a": {"float32": 4096}}


def test_nf4_weights_are_half_a_byte_per_quantized_parameter_plus_state() -> None:
    model = _prepared("tiny-qwen2", "nf4")
    linear = _linear_params(architecture_config("tiny-qwen2"))
    ledger = weight_ledger(model)
    assert ledger.bytes["frozen weights"][PACKED_4BIT] == linear // 2
    state = ledger.bytes["quantization state"]
    assert state["absmax"] == linear // 64  # one 8-bit absmax per 64 weights (double quantization)
    assert state["nested absmax"] == pytest.approx(4 * linear / 64 / 256, abs=4 * 7 * 2)  # fp32 per 256 absmax
    # the tied embedding and the q/k/v biases in bf16 (the norms in fp32)
    assert ledger.bytes["frozen weights"]["bfloat16"] == 49152 * 64 * 2 + 2 * (64 + 32 + 32) * 2


def test_adapter_bytes_are_peft_trainable_count_times_bf16() -> None:
    model = _prepared("tiny-qwen3", "nf4")
    ledger = weight_ledger(model)
    assert ledger.bytes["adapters"] == {"bfloat16": 2 * parameter_report(model).trainable}
    assert "trainable weights" not in ledger.bytes


def test_adamw_states_are_two_moments_in_the_parameters_dtype() -> None:
    model = _prepared("tiny-qwen2", "full")
    trainable = parameter_report(model).trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model(**_batch()).loss.backward()
    optimizer.step()
    assert optimizer_ledger(optimizer, Ledger(ranges=[])).bytes["optimizer states"] == {"float32": 2 * 4 * trainable}


def test_16bit_weights_stay_memory_mapped_in_both_lora_modes() -> None:
    """Why anonymous RSS is no measure of the weights: the 16-bit weights of both LoRA modes are pages of the
    memory-mapped safetensors file, not allocations (only NF4's quantized weights and the fp32 norms are)."""
    for mode in ("bf16", "nf4"):
        ledger = weight_ledger(_prepared("tiny-qwen2", mode))
        assert ledger.mapped["frozen weights"] == ledger.bytes["frozen weights"]["bfloat16"]  # norms: fp32 copies


def test_saved_tensor_hooks_change_nothing_and_count_what_backward_keeps() -> None:
    model = _prepared("tiny-qwen2", "bf16")
    batch = _batch()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs it (the norms are fp32)
        loss = model(**batch).loss
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with SavedForBackward() as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.grad, plain[name])
    # at least the fp32 logits the loss saves: 2 x 16 positions x 49,152 words x 4 bytes
    assert saved.tensors > 0 and saved.ledger.bytes["saved for backward"]["float32"] >= 2 * 16 * 49152 * 4


def test_allocation_peak_sees_a_freed_tensor() -> None:
    with allocation_peak() as peak:
        big = torch.ones(4 * 1024 ** 2 // 4)  # 4 MiB
        del big
        small = torch.ones(1024 ** 2 // 4)  # 1 MiB
    assert peak["peak_above_start_mib"] == pytest.approx(4.0, abs=0.5)
    if "end_above_start_mib" in peak:
        assert peak["end_above_start_mib"] == pytest.approx(1.0, abs=0.5)
    del small


def test_step_components_of_full_fine_tuning() -> None:
    model = _prepared("tiny-qwen2", "full")
    trainable = parameter_report(model).trainable
    step = step_components(model, _batch())
    assert step["gradients"]["float32"] == pytest.approx(4 * trainable / 1024 ** 2, abs=0.01)
    # bf16 autocast saves a bf16 copy of the fp32 embedding it multiplies by as the LM head
    assert step["saved_for_backward"]["bfloat16"] >= 49152 * 64 * 2 / 1024 ** 2 - 0.01
    assert step["peak"]["peak_above_start_mib"] >= step["gradients"]["total"]
    assert all(p.grad is None for p in model.parameters())


def test_efficiency_run_records_components_and_planner_compares_them(tmp_path: Path) -> None:
    from qlora_utils.study.experiments import EfficiencyRun, run_efficiency
    from qlora_utils.study.planner import component_rows

    record = run_efficiency(EfficiencyRun(preset="tiny-qwen3", mode="nf4", lora=LoraSettings(4), batch_size=2,
                                          seq_len=16, steps=2, gradient_checkpointing=False), tmp_path)
    components = json.loads((tmp_path / "metrics.json").read_text())["memory_components"]
    assert {"before_load", "after_load", "after_prepare", "train_begin", "first_optimizer_step", "train_end"} <= set(
        components["resident_set"])
    trainable = record["parameters"]["trainable"]
    assert components["totals"]["adapters"] == pytest.approx(2 * trainable / 1024 ** 2, abs=0.01)
    # torch's AdamW keeps its moments in the parameters' dtype: bf16 adapters, 2 x 2 bytes each
    assert components["weights"]["optimizer states"]["bfloat16"] == pytest.approx(4 * trainable / 1024 ** 2,
                                                                                  abs=0.01)
    rows = {row["component"]: row for row in component_rows(record)}
    assert rows["quantized weights"]["measured MiB"] == pytest.approx(rows["quantized weights"]["predicted MiB"],
                                                                      rel=0.01)
    assert rows["adapters"]["measured MiB"] == pytest.approx(rows["adapters"]["predicted MiB"], abs=0.01)
    assert all(math.isfinite(row["predicted MiB"]) for row in rows.values())
    (row,) = memory_table([record])
    assert row["mode"] == "nf4" and row["frozen 4-bit packed"] > 0
    assert row["frozen file-backed"] == pytest.approx(row["frozen bf16"], abs=0.01)  # embedding and head: mapped
    assert row["tensor total"] >= row["frozen 4-bit packed"] + row["frozen bf16"] + row["step peak"] - 0.1
    assert row["VmRSS after step 1"] == pytest.approx(row["RssAnon after step 1"] + row["RssFile after step 1"],
                                                      abs=0.3)  # RssShmem and rounding
    assert row["RssAnon in no tensor after step 1"] is not None
    table = {r["component (MiB)"]: r["QLoRA"] for r in components_by_arm({"QLoRA": record})}
    assert table["frozen weights"] == round(row["frozen 4-bit packed"] + row["frozen bf16"] + row["frozen fp32"])
    step = components["resident_set"]["first_optimizer_step"]
    assert table["trained weights or adapters"] == round(row["adapters"]) and table["process after step 1 (VmRSS)"] \
        == round(step["VmRSS"]), "each row is the sum of its memory_table columns, or the process's, in whole MiB"


def test_experiment_record_has_components_from_the_first_optimizer_step(data_dir: Path, tmp_path: Path) -> None:
    from qlora_utils.study.experiments import Experiment, run_experiment
    from qlora_utils.core.training import TrainSettings

    exp = Experiment(task="sst2", preset="tiny-qwen2", mode="bf16", lora=LoraSettings(4), train_examples=8,
                     eval_examples=4, selection_examples=0, zero_shot=False, data_dir=str(data_dir),
                     train=TrainSettings(learning_rate=1e-3, batch_size=4))
    record = run_experiment(exp, tmp_path / "run")
    components = record["memory_components"]
    trainable = record["parameters"]["trainable"]
    assert components["weights"]["gradients"]["bfloat16"] == pytest.approx(2 * trainable / 1024 ** 2, abs=1e-3)
    assert components["totals"]["optimizer_states"] == pytest.approx(4 * trainable / 1024 ** 2, abs=1e-3)
    assert components["weights"]["frozen weights"]["file_backed"] > 0  # the bf16 base stays memory-mapped
    (row,) = memory_table([record])
    assert row["VmRSS after step 1"] is not None, "before_load is recorded: the resident set above it is known"
    assert "step" not in components  # no extra step in an accuracy run


def test_kbit_preparation_keeps_the_embedding_mapped_and_changes_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_kbit against peft's prepare_model_for_kbit_training (which copied the embedding to fp32 and back):
    the same dtypes after a step, the same loss and the same adapter gradients, and no copy of the embedding."""
    import peft

    from qlora_utils.core import adapters

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.dtype]]:
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**_batch()).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads, {n: p.dtype for n, p in model.named_parameters()}

    for preset in ("tiny-qwen2", "tiny-qwen3"):
        torch.manual_seed(0)
        ours = _prepared(preset, "nf4")
        assert weight_ledger(ours).mapped["frozen weights"] >= 49152 * 64 * 2  # the embedding: file pages, no copy
        with monkeypatch.context() as patch:
            patch.setattr(adapters, "prepare_kbit", lambda model, checkpointing, kwargs:
                          peft.prepare_model_for_kbit_training(model, checkpointing, kwargs))
            torch.manual_seed(0)
            peft_prepared = _prepared(preset, "nf4")
        assert weight_ledger(peft_prepared).mapped.get("frozen weights", 0) == 0
        (loss, grads, dtypes), (loss_p, grads_p, dtypes_p) = run(ours), run(peft_prepared)
        assert dtypes == dtypes_p and torch.equal(loss, loss_p)
        assert grads.keys() == grads_p.keys() and all(torch.equal(grads[k], grads_p[k]) for k in grads)


def test_release_free_heap_hands_freed_memory_back() -> None:
    from qlora_utils.core.memory import release_free_heap

    if not resident_set() or not release_free_heap():
        pytest.skip("no /proc or no glibc here")
    chunks = [bytearray(64 * 1024) for _ in range(2000)]  # 125 MiB of small blocks: heap, not mmap
    for chunk in chunks:
        chunk[::4096] = b"x" * len(chunk[::4096])
    keep = chunks[-1]
    del chunks
    before = resident_set()["RssAnon"]
    assert release_free_heap()
    assert resident_set()["RssAnon"] < before - 50  # most of the freed 125 MiB back to the system
    del keep


def test_resident_set_is_in_mib() -> None:
    import psutil

    from qlora_utils.core.memory import resident_set

    assert abs(resident_set()["VmRSS"] - psutil.Process().memory_info().rss / 1024 ** 2) < 64, "MiB, as psutil sees it"
