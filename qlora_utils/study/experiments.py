"""End-to-end experiments that notebooks and the command line call: load, evaluate zero-shot, fine-tune, evaluate,
and record metrics, history and per-example outputs in a run directory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from peft import PeftModel
from transformers import set_seed

from ..core.adapters import LoraSettings, parameter_report, prepare_for_training, save_adapter
from ..core.data import SELECTION_SIZE, TASKS, TaskData, at_least_words, load_task, split_for_selection, subsample
from ..core.environment import environment
from ..core.memory import component_totals, components_callback, resident_set, step_components
from ..core.metrics import SCORE_BATCH, generate, squad_evaluate, sst2_accuracy
from ..core.models import LoadedModel, get_preset, load_model
from ..core.prompts import messages_for, prompt_ids, tokenize_for_training
from ..core.records import RunRecorder
from ..core.training import TrainSettings, train
from ..errors import QLoraError
from ..speed.efficiency import PeakMemory, process_memory, total_rss

EVAL_SPLITS = {"sst2": ("sst2", "validation"), "squad": ("squad", "validation"),
               "alpaca": ("alpaca_eval", "text_davinci_003")}
EVAL_SEED = 0  # the evaluation subset is the same for every model and training seed


@dataclass
class Experiment:
    """A fine-tuning run: task, model and mode, adapters (None = full fine-tuning), data sizes and optimiser."""

    task: str = "sst2"
    preset: str = "smollm2-135m-instruct"
    mode: str = "nf4"
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    train_examples: int = 1000
    eval_examples: int | None = None  # None or 0: the whole validation split
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-3))
    add_eos: bool | None = None  # None: not for SST-2 (the label word alone is scored), yes for generation tasks
    max_length: int | None = None  # training examples longer than this are dropped (and counted)
    max_new_tokens: int = 32
    zero_shot: bool = True
    eval_batch_size: int = SCORE_BATCH  # scoring; generation uses a quarter of it (metrics.GENERATE_BATCH)
    data_dir: str | None = None
    gradient_checkpointing: bool = True  # same gradients either way: it trades compute for activation memory
    selection_examples: int | None = None  # training items set aside to choose configurations on; None: the task's
    # default (SST-2 SELECTION_SIZE; 0 for the others, whose earlier runs drew from the whole training split)
    score_dev: bool = True  # False: only the selection split is scored (pilot and learning-rate runs never see dev)
    min_words: int = 0  # SST-2: train and choose only on training items of at least this many words (0: all items)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise QLoraError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.train_examples <= 0:
            raise QLoraError(f"train_examples must be positive, got {self.train_examples}")
        if self.selection_examples is None:
            self.selection_examples = SELECTION_SIZE if self.task == "sst2" else 0
        if self.selection_examples and self.task == "alpaca":
            raise QLoraError("instruction tuning has no selection split (its judge scores the dev outputs); set "
                             "selection_examples to 0")
        if not self.score_dev and not self.selection_examples:
            raise QLoraError(f"score_dev=False scores only the selection split, and this {self.task} experiment has "
                             "none: set selection_examples (SST-2 has 500 by default), or score_dev to True")
        if self.min_words < 0 or (self.min_words and self.task != "sst2"):
            raise QLoraError(f"min_words applies to SST-2's phrases and must be 0 or more, got {self.min_words} for "
                             f"{self.task}; leave it at 0")
        if self.eval_examples is not None and self.eval_examples < 0:
            raise QLoraError(f"eval_examples must be positive, or 0 (or None) for the whole validation split; got "
                             f"{self.eval_examples}")
        self.eval_examples = self.eval_examples or None  # the profiles' and the command line's 0 means all


def evaluate(exp: Experiment, loaded: LoadedModel, model: Any, data: TaskData) -> dict[str, Any]:
    """The task's metric on the evaluation data, with per-example predictions."""
    if exp.task == "sst2":
        return sst2_accuracy(model, loaded.tokenizer, data, exp.eval_batch_size)
    if exp.task == "squad":
        return squad_evaluate(model, loaded.tokenizer, data, exp.max_new_tokens, max(1, exp.eval_batch_size // 4))
    prompts = [prompt_ids(loaded.tokenizer, messages_for("alpaca_eval", r)) for r in data.dataset]
    outputs = generate(model, loaded.tokenizer, prompts, exp.max_new_tokens, max(1, exp.eval_batch_size // 4),
                       desc="AlpacaEval generation")
    return {"n": len(outputs), "outputs": outputs, "mean_output_chars": sum(map(len, outputs)) / max(1, len(outputs))}


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's scores without its per-item outputs (those go to generations.json or selection.json)."""
    return {k: v for k, v in result.items() if k not in ("predictions", "examples", "outputs")}


def _summary(result: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    return {**_scores(result), "memory": memory}


def _per_example(exp: Experiment, data: TaskData, zero: dict[str, Any] | None,
                 tuned: dict[str, Any]) -> list[dict[str, Any]]:
    if exp.task == "sst2":
        zero_p = zero["predictions"] if zero else [None] * len(data)
        return [{"sentence": r["sentence"], "label": r["label"], "zero_shot": z, "fine_tuned": f}
                for r, z, f in zip(data.dataset, zero_p, tuned["predictions"])]
    if exp.task == "alpaca":
        zero_o = zero["outputs"] if zero else [None] * len(data)
        return [{"instruction": r["instruction"], "dataset": r["dataset"], "reference": r["output"],
                 "zero_shot": z, "fine_tuned": f} for r, z, f in zip(data.dataset, zero_o, tuned["outputs"])]
    zero_e = zero["examples"] if zero else [{}] * len(data)
    return [{"id": t["id"], "question": t["question"], "answers": t["answers"],
             "zero_shot": z.get("prediction"), "zero_shot_f1": z.get("f1"),
             "fine_tuned": t["prediction"], "fine_tuned_f1": t["f1"], "fine_tuned_em": t["exact_match"]}
            for z, t in zip(zero_e, tuned["examples"])]


def _record_model_outputs(exp: Experiment, data: TaskData, zero: dict[str, Any] | None, tuned: dict[str, Any],
                          output_dir: Path) -> None:
    """AlpacaEval-format outputs of the tuned model (and of the base model when it answered too)."""
    from ..locations import atomic_write_json
    from .winrate import BASE_OUTPUTS, MODEL_OUTPUTS, model_outputs

    rows = list(data.dataset)
    atomic_write_json(output_dir / MODEL_OUTPUTS, model_outputs(rows, tuned["outputs"], f"{exp.preset}-{exp.mode}"))
    if zero:
        atomic_write_json(output_dir / BASE_OUTPUTS, model_outputs(rows, zero["outputs"], f"{exp.preset}-base"))


def training_data(exp: Experiment) -> tuple[TaskData, TaskData | None]:
    """The experiment's training sample (drawn by its seed) and the selection split (SST-2 by default, SQuAD when
    asked): items of the training set set aside once by a fixed seed, never trained on, to choose configurations
    without the dev set; with `min_words`, both come from the training items of at least that many words."""
    if exp.task != "sst2" and not exp.selection_examples:
        return load_task(exp.task, "train", n=exp.train_examples, seed=exp.train.seed, data_dir=exp.data_dir), None
    items = at_least_words(load_task(exp.task, "train", data_dir=exp.data_dir), exp.min_words)
    if not exp.selection_examples:
        return subsample(items, exp.train_examples, exp.train.seed), None
    pool, selection = split_for_selection(items, exp.selection_examples)
    return subsample(pool, exp.train_examples, exp.train.seed), selection


def run_experiment(exp: Experiment, output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one experiment; write metrics.json, history.json, generations.json (the dev set's per-example outputs),
    selection.json (SST-2: the selection split's per-sentence predictions) and the adapters into output_dir.

    Python, NumPy and torch are seeded with the training seed before the model loads and again before the adapters
    are created, so that the same seed gives the same adapters, data order, dropout masks and numbers."""
    recorder = RunRecorder(Path(output_dir))
    started = time.perf_counter()
    set_seed(exp.train.seed)
    baseline_rss, baseline_total = process_memory(), total_rss()  # measured above the process before loading
    before_load = resident_set()
    with PeakMemory("load", baseline_rss=baseline_rss, baseline_total=baseline_total) as load_mem:
        loaded = load_model(exp.preset, exp.mode)
    train_data, selection_data = training_data(exp)
    eval_task, eval_split = EVAL_SPLITS[exp.task]
    eval_data = load_task(eval_task, eval_split, n=exp.eval_examples, seed=EVAL_SEED, data_dir=exp.data_dir,
                          stratify_by="dataset" if eval_task == "alpaca_eval" else None)
    record: dict[str, Any] = {"experiment": exp.task, "model": loaded.describe(),
                              "lora": exp.lora.to_dict() if exp.lora else None, "seed": exp.train.seed,
                              "data": {"train": train_data.describe(), "eval": eval_data.describe()}}
    if selection_data is not None:
        record["data"]["selection"] = selection_data.describe()
    zero, zero_selection = None, None
    if exp.zero_shot:
        if exp.score_dev:
            with PeakMemory("zero_shot_eval", baseline_rss=baseline_rss, baseline_total=baseline_total) as mem:
                zero = evaluate(exp, loaded, loaded.model, eval_data)
            record["zero_shot"] = _summary(zero, mem.result)
        if selection_data is not None:
            zero_selection = evaluate(exp, loaded, loaded.model, selection_data)
            record["selection_zero_shot"] = _scores(zero_selection)
    set_seed(exp.train.seed)  # the adapters' initialisation does not depend on whether zero-shot scoring ran
    after_load = resident_set()
    model = prepare_for_training(loaded, exp.lora, gradient_checkpointing=exp.gradient_checkpointing)
    components = components_callback()
    components.record["resident_set"].update({"before_load": before_load, "after_load": after_load,
                                              "after_prepare": resident_set()})
    add_eos = exp.task != "sst2" if exp.add_eos is None else exp.add_eos
    examples = tokenize_for_training(train_data, loaded.tokenizer, add_eos=add_eos, max_length=exp.max_length)
    record["data"]["train"]["examples_after_length_filter"] = len(examples)
    result = train(model, loaded.tokenizer, examples, exp.train, Path(output_dir), baseline_rss=baseline_rss,
                   baseline_total=baseline_total, callbacks=[components])
    tuned = None
    if exp.score_dev:
        with PeakMemory("eval", baseline_rss=baseline_rss, baseline_total=baseline_total) as mem:
            tuned = evaluate(exp, loaded, model, eval_data)
        record["fine_tuned"] = _summary(tuned, mem.result)
    if selection_data is not None:
        chosen_on = evaluate(exp, loaded, model, selection_data)
        record["selection"] = _scores(chosen_on)
        recorder.selection(_per_example(exp, selection_data, zero_selection, chosen_on))
    if isinstance(model, PeftModel):
        save_adapter(model, Path(output_dir) / "adapter", base=exp.preset)
    record.update({"parameters": parameter_report(model).to_dict(),
                   "training": {**result.summary(), "gradient_checkpointing": exp.gradient_checkpointing},
                   "load_memory": load_mem.result, "environment": environment(),
                   "memory_components": {**components.record, "totals": component_totals(components.record)},
                   "wall_seconds": round(time.perf_counter() - started, 1)})
    if tuned is not None:
        recorder.generations(_per_example(exp, eval_data, zero, tuned))
    if exp.task == "alpaca":
        _record_model_outputs(exp, eval_data, zero, tuned, Path(output_dir))
        record["decoding"] = {"strategy": "greedy", "max_new_tokens": exp.max_new_tokens,
                              "batch_size": max(1, exp.eval_batch_size // 4),
                              "prompt": "chat template with the model's default system prompt"}
    recorder.history(result.history)
    recorder.metrics(record)
    return record


@dataclass
class EfficiencyRun:
    """A few training steps at a fixed batch and sequence length, to measure peak memory and throughput only."""

    preset: str = "random-qwen2.5-0.5b"
    mode: str = "nf4"
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    batch_size: int = 4
    seq_len: int = 256
    steps: int = 4
    gradient_checkpointing: bool = True
    optim: str = "paged_adamw_32bit"
    seed: int = 0


def run_efficiency(run: EfficiencyRun, output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Train on random token ids (throughput and memory do not depend on the values) and record peak memory per
    phase, tokens/s and trainable parameters."""
    import datasets
    import torch

    recorder = RunRecorder(Path(output_dir))
    started = time.perf_counter()
    fit = predicted_fit(run)
    if not fit["fits"]:  # a mode that does not fit is a result: record the prediction instead of crashing the machine
        record = {"experiment": "efficiency", "model": {"preset": run.preset, "label": get_preset(run.preset).label,
                                                        "mode": run.mode, "pretrained": get_preset(run.preset).pretrained},
                  "lora": run.lora.to_dict() if run.lora else None, "fit": fit, "environment": environment(),
                  "wall_seconds": round(time.perf_counter() - started, 1)}
        recorder.metrics(record)
        return record
    set_seed(run.seed)
    baseline_rss, baseline_total = process_memory(), total_rss()
    before_load = resident_set()
    with PeakMemory("load", baseline_rss=baseline_rss, baseline_total=baseline_total) as load_mem:
        loaded = load_model(run.preset, run.mode, seed=run.seed)
    after_load = resident_set()
    model = prepare_for_training(loaded, run.lora, gradient_checkpointing=run.gradient_checkpointing)
    components = components_callback()
    components.record["resident_set"].update({"before_load": before_load, "after_load": after_load,
                                              "after_prepare": resident_set()})
    generator = torch.Generator().manual_seed(run.seed)
    vocab = min(loaded.model.config.vocab_size, len(loaded.tokenizer))
    ids = torch.randint(0, vocab, (run.batch_size * run.steps, run.seq_len), generator=generator).tolist()
    data = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * run.seq_len] * len(ids),
                                       "labels": ids})
    settings = TrainSettings(learning_rate=1e-4, max_steps=run.steps, batch_size=run.batch_size, optim=run.optim,
                             seed=run.seed)
    result = train(model, loaded.tokenizer, data, settings, Path(output_dir), baseline_rss=baseline_rss,
                   baseline_total=baseline_total, callbacks=[components])
    record = {"experiment": "efficiency", "model": loaded.describe(), "fit": fit,
              "lora": run.lora.to_dict() if run.lora else None,
              "shape": {"batch_size": run.batch_size, "seq_len": run.seq_len, "steps": run.steps,
                        "gradient_checkpointing": run.gradient_checkpointing},
              "parameters": parameter_report(model).to_dict(), "training": result.summary(),
              "load_memory": load_mem.result, "environment": environment(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    record["memory_components"] = measured_components(model, data, run.batch_size, components.record)
    recorder.history(result.history)
    recorder.metrics(record)
    return record


def measured_components(model: Any, data: Any, batch_size: int, during_training: dict[str, Any]) -> dict[str, Any]:
    """An efficiency run's memory by component: what the Trainer's first optimizer step held (`components_callback`)
    and one more forward/backward of the run's first batch, outside the timed training, with what autograd saved
    and the allocation peak (`memory.step_components`); `wall_seconds` does not include that step."""
    import torch

    started = time.perf_counter()
    rows = data[:batch_size]
    batch = {k: torch.tensor(rows[k]) for k in ("input_ids", "attention_mask", "labels")}
    step = step_components(model, batch)
    record = {**during_training, "step": {**step, "seconds": round(time.perf_counter() - started, 2)}}
    return {**record, "totals": component_totals(record)}


def predicted_fit(run: EfficiencyRun, headroom: float = 0.85) -> dict[str, Any]:
    """The memory planner's prediction for a run against the memory this machine has free (GPU or CPU)."""
    import torch

    from .inventory import config_of
    from .planner import GiB, plan_memory

    plan = plan_memory(config_of(run.preset), run.mode, run.lora, run.batch_size, run.seq_len,
                       run.gradient_checkpointing, run.optim)
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0]
    else:
        free = psutil.virtual_memory().available
    return {"predicted_gib": round(plan.total / GiB, 2), "free_gib": round(free / GiB, 2),
            "fits": plan.total <= headroom * free, "device": "cuda" if torch.cuda.is_available() else "cpu"}
