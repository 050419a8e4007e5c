"""Prompts under the tokenizer's chat template, training examples with the loss on answer tokens only, and token-length
statistics."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from ..errors import QLoraError
from .data import TaskData

SST2_LABELS = ("negative", "positive")  # index = SST-2 label id
IGNORE_INDEX = -100


SYSTEM_PROMPTS = {  # short task instructions replace the chat template's default system prompt (fewer tokens)
    "sst2": "Classify the sentiment of the movie review as positive or negative.",
    "squad": "Answer the question with a short span copied from the passage.",
}


def messages_for(task: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation (system instruction where the task has one, then the user turn) for one record of a task."""
    if task == "sst2":
        user = record["sentence"]
    elif task == "squad":
        user = f"Passage: {record['context']}\n\nQuestion: {record['question']}"
    elif task in ("alpaca", "alpaca_eval"):
        extra = record.get("input") or ""
        user = f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]
    else:
        raise QLoraError(f"no prompt for task {task!r}; known: sst2, squad, alpaca, alpaca_eval")
    system = SYSTEM_PROMPTS.get(task)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def answer_for(task: str, record: dict[str, Any]) -> str:
    """The training target of one record."""
    if task == "sst2":
        return SST2_LABELS[record["label"]]
    if task == "squad":
        return record["answers"]["text"][0]
    return record["output"]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat-templated prompt, ending where the assistant's answer starts."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, add_eos: bool) -> list[int]:
    """Token ids of an answer, optionally closed with the end-of-turn (eos) token."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if add_eos else ids


def build_example(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], answer: str,
                  add_eos: bool = True) -> dict[str, list[int]]:
    """input_ids = prompt + answer; labels copy the answer and mask the prompt with -100."""
    prompt, target = prompt_ids(tokenizer, messages), answer_ids(tokenizer, answer, add_eos)
    return {"input_ids": prompt + target, "attention_mask": [1] * (len(prompt) + len(target)),
            "labels": [IGNORE_INDEX] * len(prompt) + target}


def tokenize_for_training(data: TaskData, tokenizer: PreTrainedTokenizerBase, *, add_eos: bool = True,
                          max_length: int | None = None) -> datasets.Dataset:
    """Tokenized training examples of a task; examples longer than max_length are dropped (and counted)."""
    ds = data.dataset.map(lambda r: build_example(tokenizer, messages_for(data.task, r), answer_for(data.task, r),
                                                  add_eos), remove_columns=data.dataset.column_names,
                          desc=f"tokenizing {data.task}")
    if max_length is not None:
        before = len(ds)
        ds = ds.filter(lambda r: len(r["input_ids"]) <= max_length)
        if len(ds) < before:
            print(f"dropped {before - len(ds)} of {before} {data.task} examples longer than {max_length} tokens")
        if len(ds) == 0:
            raise QLoraError(f"every {data.task} example is longer than max_length={max_length}; raise it")
    return ds


def length_stats(lengths: list[int] | np.ndarray) -> dict[str, float]:
    """Count, mean, median, 95th percentile and maximum of token lengths."""
    arr = np.asarray(lengths)
    return {"n": int(arr.size), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "p95": float(np.percentile(arr, 95)), "max": int(arr.max())}


def token_length_stats(data: TaskData, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
    """Token lengths of a task under the chat template: prompt, answer and whole example."""
    prompts, answers = [], []
    for record in data.dataset:
        prompts.append(len(prompt_ids(tokenizer, messages_for(data.task, record))))
        answers.append(len(answer_ids(tokenizer, answer_for(data.task, record), add_eos=True)))
    totals = [p + a for p, a in zip(prompts, answers)]
    return {"prompt": length_stats(prompts), "answer": length_stats(answers), "total": length_stats(totals)}
