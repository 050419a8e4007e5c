"""End-to-end experiments that notebooks and the command line call: load, (zero-shot) evaluate, fine-tune, evaluate,
and write a metrics record."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from peft import PeftModel

from .adapters import LoraSettings, parameter_report, prepare_for_training
from .data import load_task
from .efficiency import PeakMemory
from .environment import environment
from .io import atomic_write_json
from .metrics import sst2_accuracy
from .models import load_model
from .prompts import tokenize_for_training
from .training import TrainSettings, train


@dataclass
class Sst2Experiment:
    """An SST-2 fine-tuning run: model and mode, adapters (None = full fine-tuning), data sizes and optimiser."""

    preset: str = "smollm2-135m-instruct"
    mode: str = "nf4"
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    train_examples: int = 1000
    eval_examples: int | None = None  # None: the whole validation set (872 sentences)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-3))
    add_eos: bool = False  # the label word alone is the target, as label scoring compares label words
    zero_shot: bool = True
    eval_batch_size: int = 32
    data_dir: str | None = None


def run_sst2(exp: Sst2Experiment, output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one SST-2 experiment and write metrics.json and history.json into output_dir (adapters as safetensors)."""
    output_dir = Path(output_dir)
    started = time.perf_counter()
    baseline_rss = psutil.Process().memory_info().rss
    with PeakMemory("load", baseline_rss=baseline_rss) as load_mem:
        loaded = load_model(exp.preset, exp.mode)
    train_data = load_task("sst2", "train", n=exp.train_examples, seed=exp.train.seed, data_dir=exp.data_dir)
    eval_data = load_task("sst2", "validation", data_dir=exp.data_dir)
    if exp.eval_examples is not None:
        eval_data = load_task("sst2", "validation", n=exp.eval_examples, seed=0, data_dir=exp.data_dir)
    record: dict[str, Any] = {"experiment": "sst2", "model": loaded.describe(),
                              "lora": exp.lora.to_dict() if exp.lora else None,
                              "data": {"train": train_data.describe(), "eval": eval_data.describe()}}
    if exp.zero_shot:
        with PeakMemory("zero_shot_eval", baseline_rss=baseline_rss) as mem:
            zero = sst2_accuracy(loaded.model, loaded.tokenizer, eval_data, exp.eval_batch_size)
        record["zero_shot"] = {"accuracy": zero["accuracy"], "n": zero["n"], "memory": mem.result,
                               "predicted_positive_share": zero["predicted_positive_share"]}
    model = prepare_for_training(loaded, exp.lora)
    params = parameter_report(model)
    examples = tokenize_for_training(train_data, loaded.tokenizer, add_eos=exp.add_eos)
    result = train(model, loaded.tokenizer, examples, exp.train, output_dir, baseline_rss=baseline_rss)
    with PeakMemory("eval", baseline_rss=baseline_rss) as mem:
        tuned = sst2_accuracy(model, loaded.tokenizer, eval_data, exp.eval_batch_size)
    if isinstance(model, PeftModel):
        model.save_pretrained(output_dir / "adapter", safe_serialization=True)
    record.update({
        "fine_tuned": {"accuracy": tuned["accuracy"], "n": tuned["n"], "memory": mem.result,
                       "predicted_positive_share": tuned["predicted_positive_share"]},
        "parameters": params.to_dict(), "training": result.summary(), "load_memory": load_mem.result,
        "environment": environment(), "wall_seconds": round(time.perf_counter() - started, 1),
    })
    atomic_write_json(output_dir / "history.json", result.history)
    atomic_write_json(output_dir / "metrics.json", record)
    return record
