"""Frozen weights prepared once per evaluation: the same bits out, the layers restored (and really 4-bit) afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from qlora_utils.errors import QLoraError
from qlora_utils.speed import dequant
from qlora_utils.speed.cpu_bf16 import SWITCH_ENV as ROUTE_ENV

# Every evaluation path (a forward, label scoring with the LM head, greedy generation) of a 4-bit model with LoRA
# adapters, a bf16 model and an fp32 ("full") model, with the preparation off ("0") and on ("1") in one process.
CHECK = r"""
import json, os, torch
from qlora_utils.speed import dequant
from qlora_utils.core.adapters import LoraSettings, prepare_for_training
from qlora_utils.core.metrics import evaluating, generate, score_candidates
from qlora_utils.core.models import load_model

torch.manual_seed(0)
prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [9, 10, 11, 12]]
report = {}
for mode in ("nf4", "bf16", "full"):
    loaded = load_model("tiny-qwen2", mode)
    model = loaded.model
    if mode == "nf4":
        model = prepare_for_training(loaded, LoraSettings(placement="attention_mlp"), gradient_checkpointing=False)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # nonzero adapters: their products count too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):  # nonzero biases (fp32 ones, in "full", not bf16 values): their rounding counts
                p.normal_(std=0.1)
    four_bit = dequant.four_bit_layers(model)
    outputs = {}
    for switch in ("0", "1", "0"):
        os.environ[dequant.SWITCH_ENV] = switch
        with evaluating(model, loaded.tokenizer, "right"):
            logits = model(input_ids=torch.tensor([prompts[0]])).logits
        packed = sum(bool(getattr(l.weight.quant_state, "packing_format_for_cpu", False)) for l in four_bit)
        with dequant.prepared_once(model, torch.device("cpu")) as count:
            inside = (count, packed)
        scores = score_candidates(model, loaded.tokenizer, prompts, [[20], [30]], batch_size=2)
        texts = generate(model, loaded.tokenizer, prompts, max_new_tokens=6, batch_size=2)
        outputs.setdefault(switch, []).append((logits, scores, texts, inside))
    off, on = outputs["0"][0], outputs["1"][0]
    report[mode] = {"prepared": on[3][0], "cpu_packed": on[3][1], "four_bit": len(four_bit),
                    "packed": all(l.weight.dtype == torch.uint8 for l in four_bit),
                    "logits": torch.equal(off[0], on[0]), "scores": torch.equal(off[1], on[1]),
                    "texts": off[2] == on[2], "again": torch.equal(off[1], outputs["0"][1][1]),
                    "restored": not any("forward" in vars(m) for m in model.modules())}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.parametrize("route", ["1", "0"], ids=["bf16-via-fp32", "bf16-kernels-as-they-are"])
def test_prepared_weights_give_the_same_bits_and_the_layers_are_restored(route: str) -> None:
    env = {**os.environ, ROUTE_ENV: route}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.split("REPORT", 1)[1])
    for mode, row in report.items():
        assert row["logits"] and row["scores"] and row["texts"], (mode, row)  # bit for bit
        assert row["again"] and row["restored"], (mode, row)
    assert report["nf4"]["four_bit"] > 0 and report["nf4"]["packed"]  # the 4-bit layers stay 4-bit
    if route == "1":  # every linear layer prepared: 4-bit bases, LoRA A and B, the LM heads
        assert report["nf4"]["prepared"] > report["nf4"]["four_bit"]
        assert report["bf16"]["prepared"] > 0 and report["full"]["prepared"] > 0
    else:  # only the 4-bit layers, and only those bitsandbytes has not repacked for its fused CPU kernel (it does so
        # on some hosts with AVX512-BF16 at the first inference forward, not on others)
        assert report["nf4"]["prepared"] == report["nf4"]["four_bit"] - report["nf4"]["cpu_packed"]
        if not dequant.has_fused_kernel():
            assert report["nf4"]["cpu_packed"] == 0
        assert report["bf16"]["prepared"] == 0 and report["full"]["prepared"] == 0


def test_the_expansion_is_bitsandbytes_own() -> None:
    import bitsandbytes.functional as bnbf

    from qlora_utils.core.models import load_model

    layer = dequant.four_bit_layers(load_model("tiny-qwen2", "nf4").model)[0]
    mine = dequant.dequantize(layer, torch.bfloat16)
    theirs = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    assert mine.shape == tuple(layer.weight.quant_state.shape)
    assert torch.equal(mine, theirs)


def test_nothing_is_prepared_on_cuda_or_past_the_memory_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_utils.core.models import load_model

    model = load_model("tiny-qwen2", "nf4").model
    monkeypatch.setenv(dequant.SWITCH_ENV, "1")
    with dequant.prepared_once(model, torch.device("cuda")) as count:
        assert count == 0
    with dequant.prepared_once(model, torch.device("cpu")) as count:
        assert count > 0
        with dequant.prepared_once(model, torch.device("cpu")) as inner:  # nested: nothing done twice
            assert inner == 0
    monkeypatch.setattr(dequant, "MEMORY_SHARE", 0.0)
    with dequant.prepared_once(model, torch.device("cpu")) as count:
        assert count == 0


def test_the_memory_cap_counts_every_prepared_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarter of the available memory holds exactly the first two bf16 copies, or one byte less than them."""
    from types import SimpleNamespace

    from qlora_utils.core.models import load_model

    model = load_model("tiny-qwen2", "nf4").model
    monkeypatch.setenv(dequant.SWITCH_ENV, "1")
    monkeypatch.setattr(dequant.cpu_bf16, "installed", lambda: False)  # bf16 copies: 2 bytes a weight
    first, second = [layer.weight.quant_state.shape.numel() * 2 for layer in dequant.four_bit_layers(model)[:2]]
    for available, expected in ((4 * (first + second - 1), 1), (4 * (first + second), 2)):
        monkeypatch.setattr(dequant.psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
        with dequant.prepared_once(model, torch.device("cpu")) as count:
            assert count == expected


def test_a_bad_switch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dequant.SWITCH_ENV, "yes")
    with pytest.raises(QLoraError, match="QLORA_DEQUANTIZE_ONCE='yes'"):
        dequant.wanted(torch.device("cpu"))
    monkeypatch.setenv(dequant.SWITCH_ENV, "0")
    assert not dequant.wanted(torch.device("cpu"))
    assert dequant.route() == "converted in every forward"
    monkeypatch.delenv(dequant.SWITCH_ENV)
    assert dequant.wanted(torch.device("cpu")) == (not dequant.has_fused_kernel())
