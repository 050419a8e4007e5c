"""Chat-templated prompts, answer-only labels and token-length statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_utils.core.data import load_task
from qlora_utils.core.models import load_model
from qlora_utils.core.prompts import (
    IGNORE_INDEX, build_example, length_stats, messages_for, token_length_stats, tokenize_for_training,
)
from qlora_utils.errors import QLoraError


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-qwen2", "bf16").tokenizer


def test_prompt_tokens_are_masked_out_of_the_labels(tokenizer) -> None:
    example = build_example(tokenizer, [{"role": "user", "content": "Say yes."}], "yes", add_eos=True)
    answer = tokenizer("yes", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(example["input_ids"]) - len(answer)
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:] == answer
    prompt_text = tokenizer.decode(example["input_ids"][:n_prompt])
    assert "<|im_start|>user\nSay yes.<|im_end|>" in prompt_text and prompt_text.endswith("assistant\n")


def test_eos_is_optional(tokenizer) -> None:
    example = build_example(tokenizer, [{"role": "user", "content": "Say yes."}], "yes", add_eos=False)
    assert example["input_ids"][-1] != tokenizer.eos_token_id


def test_task_prompts_carry_the_record(data_dir: Path, tokenizer) -> None:
    record = load_task("squad", "validation", n=1, seed=0, data_dir=data_dir).dataset[0]
    system, user = messages_for("squad", record)
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert record["context"] in text and record["question"] in text
    with pytest.raises(QLoraError, match="no prompt for task 'mnli'"):
        messages_for("mnli", record)


def test_training_examples_drop_overlong_ones(data_dir: Path, tokenizer) -> None:
    data = load_task("squad", "train", n=20, seed=0, data_dir=data_dir)
    full = tokenize_for_training(data, tokenizer)
    limit = sorted(len(ids) for ids in full["input_ids"])[10]
    short = tokenize_for_training(data, tokenizer, max_length=limit)
    assert 10 <= len(short) < 20 and max(len(ids) for ids in short["input_ids"]) <= limit


def test_length_stats_on_a_hand_checked_case() -> None:
    stats = length_stats([1, 2, 3, 4, 100])
    assert stats == {"n": 5, "mean": 22.0, "median": 3.0, "p95": pytest.approx(80.8), "max": 100}


def test_token_length_stats_per_part(data_dir: Path, tokenizer) -> None:
    stats = token_length_stats(load_task("sst2", "validation", n=20, seed=0, data_dir=data_dir), tokenizer)
    assert stats["answer"]["max"] == 2  # one label token plus eos
    assert stats["total"]["mean"] == pytest.approx(stats["prompt"]["mean"] + stats["answer"]["mean"])


def test_an_alpaca_input_follows_its_instruction() -> None:
    assert messages_for("alpaca", {"instruction": "Add the numbers.", "input": "2 3"}) == [
        {"role": "user", "content": "Add the numbers.\n\n2 3"}]
    assert messages_for("alpaca", {"instruction": "Say hi.", "input": ""}) == [{"role": "user", "content": "Say hi."}]
