"""LoRA placement, k-bit preparation and parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_utils.core.adapters import (
    PLACEMENTS, LoraSettings, adapted_modules, analytic_parameter_count, parameter_report, prepare_for_training,
)
from qlora_utils.core.models import load_model
from qlora_utils.errors import QLoraError


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_lora_sits_on_exactly_the_chosen_modules(placement: str) -> None:
    loaded = load_model("tiny-qwen3", "nf4")
    model = prepare_for_training(loaded, LoraSettings(rank=4, placement=placement))
    layers = loaded.model.config.num_hidden_layers
    names = adapted_modules(model)
    assert len(names) == layers * len(PLACEMENTS[placement])
    assert {n.rsplit(".", 1)[-1] for n in names} == set(PLACEMENTS[placement])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3"])
@pytest.mark.parametrize("mode", ["nf4", "bf16"])
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_parameter_report_equals_analytic_count(preset: str, mode: str, placement: str) -> None:
    loaded = load_model(preset, mode)
    lora = LoraSettings(rank=8, placement=placement)
    config = loaded.model.config
    report = parameter_report(prepare_for_training(loaded, lora))
    assert report == analytic_parameter_count(config, lora)
    assert 0 < report.percent < 100


def test_placements_and_counts_by_hand() -> None:
    """The placements and the analytic count checked against hand-worked numbers, not against themselves."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_utils.study.planner import llama_7b_config

    assert PLACEMENTS["attention"] == ("q_proj", "k_proj", "v_proj")  # the plan's: q, k, v
    assert set(PLACEMENTS["attention_mlp"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}
    # LLaMA-7B, r = 8 on every linear layer: 32 x 8 x (4 x (4096 + 4096) + 2 x (4096 + 11008) + (11008 + 4096))
    assert analytic_parameter_count(llama_7b_config(), LoraSettings(8, placement="attention_mlp")).trainable \
        == 19_988_480
    # attention biases on q, k, v and o: embeddings 80 + head 80 + q 72 + k 36 + v 36 + o 72 + MLP 384 + norms 24
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=10, attention_bias=True, tie_word_embeddings=False)
    assert analytic_parameter_count(config).total == 784 == sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    loaded = load_model("tiny-qwen2", "nf4")  # packed 4-bit weights hold two values a byte
    assert parameter_report(loaded.model).total == analytic_parameter_count(loaded.model.config).total


def test_full_fine_tuning_trains_everything() -> None:
    loaded = load_model("tiny-qwen2", "full")
    report = parameter_report(prepare_for_training(loaded, None))
    assert report.trainable == report.total == analytic_parameter_count(loaded.model.config).total


@pytest.mark.slow
def test_offline_model_lora_is_under_one_percent() -> None:
    loaded = load_model("smollm2-135m-instruct", "nf4")
    lora = LoraSettings(rank=8, placement="attention")
    report = parameter_report(prepare_for_training(loaded, lora))
    assert report == analytic_parameter_count(loaded.model.config, lora)
    assert report.trainable == 30 * 8 * ((576 + 576) + 2 * (576 + 192))  # 30 layers, hand-computed
    assert report.percent < 1.0


def test_kbit_preparation_enables_checkpointing_and_input_grads() -> None:
    loaded = load_model("tiny-qwen2", "nf4")
    model = prepare_for_training(loaded, LoraSettings(rank=4))
    assert model.base_model.model.is_activation_checkpointing
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]
    assert lora_a.weight.dtype == torch.bfloat16
    norm = model.base_model.model.model.layers[0].input_layernorm
    assert norm.weight.dtype == torch.float32
    # ten tokens: with two, the query projection's gradient is zero up to rounding (the first query attends to one
    # key, so its softmax has no gradient), and the check would pass or fail by the attention kernel's rounding
    batch = loaded.tokenizer(["hello there, how are you doing today my friend"], return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs it (bf16=True)
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    lora_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"]
    assert lora_b.weight.grad is not None and lora_b.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,message", [({"rank": 0}, "rank must be a positive integer"),
                                            ({"rank": -4}, "rank must be a positive integer"),
                                            ({"placement": "mlp_only"}, "unknown LoRA placement 'mlp_only'"),
                                            ({"dropout": 1.5}, "dropout must be in")])
def test_bad_lora_settings_raise_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(QLoraError, match=message):
        LoraSettings(**kwargs)


def test_mode_and_adapters_must_agree() -> None:
    with pytest.raises(QLoraError, match="full fine-tuning needs load mode 'full'"):
        prepare_for_training(load_model("tiny-qwen2", "nf4"), None)
    with pytest.raises(QLoraError, match="LoRA on a 'full'"):
        prepare_for_training(load_model("tiny-qwen2", "full"), LoraSettings())


def test_evaluating_first_does_not_break_training() -> None:
    """A zero-shot evaluation before fine-tuning must leave the NF4 + DQ layout trainable (bitsandbytes on CPU would
    otherwise repack it into an inference-only layout with no backward)."""
    loaded = load_model("tiny-qwen2", "nf4")
    batch = loaded.tokenizer(["a fine film", "a dull film"], return_tensors="pt", padding=True)
    loaded.model.eval()
    with torch.inference_mode():
        loaded.model(**batch)
    o_proj = loaded.model.model.layers[0].self_attn.o_proj
    assert o_proj.weight.quant_state.nested and not getattr(o_proj.weight.quant_state, "packing_format_for_cpu", False)
    model = prepare_for_training(loaded, LoraSettings(rank=4, placement="attention"))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    lora_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"]
    assert lora_b.weight.grad is not None and lora_b.weight.grad.abs().sum() > 0  # reached through the 4-bit o_proj


def test_saved_adapters_name_their_base_by_preset_and_hold_no_machine_path(tmp_path) -> None:
    from peft import PeftModel

    from qlora_utils.core.adapters import save_adapter
    from qlora_utils.scrub import absolute_paths

    loaded = load_model("tiny-qwen2", "bf16")
    model = prepare_for_training(loaded, LoraSettings(rank=4), gradient_checkpointing=False)
    folder = save_adapter(model, tmp_path / "adapter", base="tiny-qwen2")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-qwen2"
    for file in folder.iterdir():
        if file.suffix in (".json", ".md"):
            assert not absolute_paths(file.read_text()), file.name
    reloaded = PeftModel.from_pretrained(load_model("tiny-qwen2", "bf16").model, folder)
    assert parameter_report(reloaded).trainable == 0 < parameter_report(model).trainable  # loaded for inference
