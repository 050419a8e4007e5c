"""Speed measured side by side: this project's QLoRA training and SST-2 scoring against an independent reference
recipe on identical work (the same model files, tokenized examples, batches, LoRA, steps and seed), alternated and
repeated, with the per-step losses of both (which must agree, or the work was not identical) and the machine's load.

The reference is written plainly, as the QLoRA paper's code does it: transformers' `Trainer`, peft's
`prepare_model_for_kbit_training` and `LoraConfig`, bitsandbytes NF4 with double quantization, paged AdamW 32-bit
(on CPU, where nothing pages, the same AdamW update as the project's: `training.runtime_optimizer`),
padding to the longest sequence of each batch, `group_by_length`; its scorer runs every prompt with each candidate
through the whole model in dataset order."""

from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core.adapters import LoraSettings, prepare_for_training
from ..core.data import TaskData, load_task, split_for_selection, subsample
from ..core.metrics import sst2_accuracy
from ..core.models import get_preset, load_model, materialize, quantization_config
from ..core.prompts import SST2_LABELS, answer_ids, messages_for, prompt_ids, tokenize_for_training
from ..core.training import TrainSettings, runtime_optimizer, train
from ..errors import QLoraError
from ..speed import cpu_bf16


@dataclass(frozen=True)
class BenchSettings:
    """The identical work both sides do."""

    preset: str = "smollm2-135m-instruct"
    train_examples: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    rank: int = 8
    seed: int = 0
    repeats: int = 2
    max_steps: int = -1  # -1: one epoch
    eval_examples: int = 0  # SST-2 dev sentences scored by both scorers (0: all 872)
    lora_dropout: float = 0.0  # 0 on both sides: the shared prefix draws one dropout mask for the rows' common
    # opening, so with dropout two correct recipes differ by their random masks, not only by rounding
    first_step_tolerance: float = 1e-2  # the first step's loss (the same weights on the same batch) may differ by
    # rounding only: bf16 keeps ~3 significant digits, and a row run alone or in a batch moves its hidden states ~1 %
    loss_tolerance: float = 5e-2  # the mean relative difference over all steps: later steps follow weights that
    # rounding has moved apart, and a classifier's small late losses (0.1-0.3) magnify that in relative terms
    noise_floor: bool = True  # also train a second correct reference that differs from the first by rounding only
    # (the other attention kernel); the project's per-step losses may then be as far from the reference as it is
    variants: tuple[str, ...] = ("project",)  # which of VARIANTS to time against the reference


VARIANTS: dict[str, dict[str, bool]] = {  # the project's training with its speed-ups switched on one at a time
    "plain": {"head_on_labels_only": False, "share_prefix": False},  # the reference's computation, project code
    "head on labels": {"head_on_labels_only": True, "share_prefix": False},
    "project": {},  # TrainSettings' defaults: every speed-up
}


def load_average() -> float:
    """The machine's 1-minute load average (the benchmark records it beside every timing)."""
    return os.getloadavg()[0]


def _examples(settings: BenchSettings, tokenizer: Any) -> Any:
    pool, _ = split_for_selection(load_task("sst2", "train"))
    data = subsample(pool, settings.train_examples, settings.seed)
    return tokenize_for_training(data, tokenizer, add_eos=False)


def _train_settings(settings: BenchSettings, variant: str = "project") -> TrainSettings:
    if variant not in VARIANTS:
        raise QLoraError(f"unknown bench variant {variant!r}; choose from: {', '.join(VARIANTS)}")
    return TrainSettings(learning_rate=settings.learning_rate, batch_size=settings.batch_size, seed=settings.seed,
                         max_steps=settings.max_steps, scheduler="constant_with_warmup", **VARIANTS[variant])


def _lora(settings: BenchSettings) -> LoraSettings:
    return LoraSettings(rank=settings.rank, dropout=settings.lora_dropout)


def project_training(settings: BenchSettings, checkpointing: bool, output_dir: str, variant: str = "project"
                     ) -> tuple[float, list[float]]:
    """This project's path: load_model, prepare_for_training, training.train (seconds, per-step losses)."""
    from transformers import set_seed

    set_seed(settings.seed)
    loaded = load_model(settings.preset, "nf4")
    examples = _examples(settings, loaded.tokenizer)
    set_seed(settings.seed)
    model = prepare_for_training(loaded, _lora(settings), gradient_checkpointing=checkpointing)
    result = train(model, loaded.tokenizer, examples, _train_settings(settings, variant), output_dir,
                   show_progress=False)
    return result.seconds, result.train_losses()


NOISE_FLOOR = "reference, other attention"  # the noise floor's side: the same recipe, the other attention kernel


def is_noise_floor(variant: str) -> bool:
    """Whether a bench row is the noise floor's (records before 2026-12-02 name it "reference, eager attention")."""
    return variant in (NOISE_FLOOR, "reference, eager attention")


def attention_kernels() -> dict[str, str]:
    """The reference trains with the project's attention kernel (`models.attention_implementation`: the same work),
    the noise floor with the other one (the same mathematics, other rounding)."""
    from ..core.models import attention_implementation

    ours = attention_implementation()
    return {"reference": ours, "noise floor": "sdpa" if ours == "eager" else "eager"}


def reference_training(settings: BenchSettings, checkpointing: bool, output_dir: str, attention: str | None = None
                       ) -> tuple[float, list[float]]:
    """The textbook recipe on the same files and examples (seconds, per-step losses); `attention` is transformers'
    attn_implementation (default: the project's kernel; the noise floor runs it with the other)."""
    attention = attention or attention_kernels()["reference"]
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    path = str(materialize(get_preset(settings.preset)))
    cpu_bf16.install()  # a fix of the platform, not of the recipe: both sides get it
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization_config("nf4"),
                                                 dtype=torch.bfloat16, use_safetensors=True,
                                                 attn_implementation=attention)
    examples = _examples(settings, tokenizer)
    set_seed(settings.seed)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = _lora(settings)
    model = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
                           autocast_adapter_dtype=False)
    for name, module in model.named_modules():  # as the paper's qlora.py: adapters bf16, norms fp32, and the
        if "lora_" in name:  # embeddings and LM head back to bf16 (prepare_model_for_kbit_training made them fp32)
            module.to(torch.bfloat16)
        elif "norm" in name.rsplit(".", 1)[-1]:
            module.to(torch.float32)
        elif name.endswith(("embed_tokens", "lm_head")) and getattr(module, "weight", None) is not None:
            if module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)
    train_settings = _train_settings(settings)
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, num_train_epochs=1, max_steps=settings.max_steps,
                             lr_scheduler_type="constant_with_warmup", warmup_steps=train_settings.warmup_ratio,
                             max_grad_norm=0.3, optim=runtime_optimizer("paged_adamw_32bit"), bf16=True,
                             logging_steps=1,
                             save_strategy="no", report_to="none", seed=settings.seed, data_seed=settings.seed,
                             use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
                             train_sampling_strategy="group_by_length", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return seconds, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def reference_scoring(model: Any, tokenizer: Any, data: TaskData, batch_size: int = 16) -> dict[str, Any]:
    """The textbook scorer: every prompt with each label word, right-padded in dataset order, the whole model and an
    fp32 log-softmax over every position; the label with the higher log-likelihood wins."""
    prompts = [prompt_ids(tokenizer, messages_for("sst2", r)) for r in data.dataset]
    labels = [answer_ids(tokenizer, word, add_eos=False) for word in SST2_LABELS]
    predictions = []
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                                                dtype=torch.bfloat16):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            sequences = [p + c for p in chunk for c in labels]
            batch = tokenizer.pad({"input_ids": sequences}, return_tensors="pt", padding_side="right")
            logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)
            scores = [sum(logprobs[i, len(p) - 1 + k, t].item() for k, t in enumerate(c))
                      for i, (p, c) in enumerate((p, c) for p in chunk for c in labels)]
            predictions += [max(range(len(labels)), key=lambda j: scores[i * len(labels) + j])
                            for i in range(len(chunk))]
    gold = list(data.dataset["label"])
    return {"accuracy": sum(p == y for p, y in zip(predictions, gold)) / len(gold), "predictions": predictions}


def _timed(function: Callable[[], Any]) -> tuple[float, Any, float]:
    load = load_average()
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result, load


def compare_losses(a: Sequence[float], b: Sequence[float], how: Callable[[list[float]], float] = max) -> float:
    """The largest (or, with how=statistics.fmean, the mean) relative difference between two per-step loss curves
    (inf when their lengths differ)."""
    if len(a) != len(b) or not a:
        return float("inf")
    return how([abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)])


def run_bench(settings: BenchSettings, output_dir: str, checkpointing: Sequence[bool] = (False, True)
              ) -> dict[str, Any]:
    """Both trainings, alternated `repeats` times per checkpointing setting, then both scorers on the same dev
    sentences; returns the rows (wall time, loss agreement, load) and the ratio reference / project."""
    rows: list[dict[str, Any]] = []
    sides: list[tuple[str, Callable[..., tuple[float, list[float]]]]] = [("reference", reference_training)]
    if settings.noise_floor:
        sides.append((NOISE_FLOOR, functools.partial(reference_training,
                                                     attention=attention_kernels()["noise floor"])))
    sides += [(v, functools.partial(project_training, variant=v)) for v in settings.variants]
    for ckpt in checkpointing:
        for repeat in range(settings.repeats):
            for side, function in sides if repeat % 2 == 0 else sides[::-1]:
                load = load_average()
                seconds, losses = function(settings, ckpt, os.path.join(output_dir, f"{side}-{int(ckpt)}"))
                rows.append({"what": "training", "side": side, "checkpointing": ckpt, "repeat": repeat,
                             "seconds": seconds, "losses": losses, "load_before": load, "load_after": load_average()})
    summary = []
    for ckpt in checkpointing:
        theirs = [r for r in rows if r["checkpointing"] == ckpt and r["side"] == "reference"]
        tolerance = settings.loss_tolerance
        for variant in ([NOISE_FLOOR] if settings.noise_floor else []) + list(settings.variants):
            mine = [r for r in rows if r["checkpointing"] == ckpt and r["side"] == variant]
            worst = max(compare_losses(m["losses"], t["losses"]) for m, t in zip(mine, theirs))
            mean = max(compare_losses(m["losses"], t["losses"], statistics.fmean) for m, t in zip(mine, theirs))
            first = max(compare_losses(m["losses"][:1], t["losses"][:1]) for m, t in zip(mine, theirs))
            summary.append({"what": "training", "variant": variant, "checkpointing": ckpt,
                            "project s": min(r["seconds"] for r in mine),
                            "reference s": min(r["seconds"] for r in theirs),
                            "first-step loss difference": first, "mean loss difference": mean,
                            "loss difference": worst, "identical work": None if variant == NOISE_FLOOR else
                            first <= settings.first_step_tolerance and mean <= tolerance,
                            "mean loss tolerance": tolerance,
                            "load": max(r["load_before"] for r in mine + theirs)})
            if variant == NOISE_FLOOR:  # the rule, fixed before the data: as close as a second correct recipe
                tolerance = max(settings.loss_tolerance, mean)
    loaded = load_model(settings.preset, "nf4")
    dev = load_task("sst2", "validation", n=settings.eval_examples or None, seed=0)
    seconds_p, mine, load_p = _timed(lambda: sst2_accuracy(loaded.model, loaded.tokenizer, dev))
    seconds_r, theirs, load_r = _timed(lambda: reference_scoring(loaded.model, loaded.tokenizer, dev))
    differ = sum(a != b for a, b in zip(mine["predictions"], theirs["predictions"]))
    summary.append({"what": "scoring", "project s": seconds_p, "reference s": seconds_r,
                    "project accuracy": mine["accuracy"], "reference accuracy": theirs["accuracy"],
                    "predictions that differ": differ, "load": (load_p + load_r) / 2})
    for row in summary:
        row["speed-up"] = row["reference s"] / row["project s"]
    return {"settings": asdict(settings), "rows": rows, "summary": summary, "threads": torch.get_num_threads(),
            "attention": attention_kernels()}


def table(result: dict[str, Any]) -> "pd.DataFrame":
    """The side-by-side table of a benchmark result: one row per work (training per variant and checkpointing
    setting, then scoring) with both wall times (the best of the repeats), the speed-up and the agreement."""
    import pandas as pd

    rows = []
    for row in result["summary"]:
        if row["what"] == "training":
            noise = is_noise_floor(row["variant"])
            kernel = result.get("attention", {}).get("noise floor", "eager")  # older records: eager
            what = f"noise floor: the reference with {kernel} attention" if noise else row["variant"]
            work = f"training, {what}, checkpointing {'on' if row['checkpointing'] else 'off'}"
            allowed = row.get("mean loss tolerance")
            agreement = (("rounding alone: " if noise else "")
                         + f"first-step loss within {100 * row['first-step loss difference']:.2f} %, per-step "
                         f"losses {100 * row['mean loss difference']:.1f} % apart on average"
                         + (f" (allowed {100 * allowed:.1f} %)" if allowed is not None and not noise else "")
                         + f", at most {100 * row['loss difference']:.1f} %"
                         + ("" if noise or row["identical work"] else ": NOT identical work"))
        else:
            work = "SST-2 dev scoring"
            agreement = (f"{row['predictions that differ']} predictions differ; accuracy "
                         f"{100 * row['project accuracy']:.1f} vs {100 * row['reference accuracy']:.1f} %")
        rows.append({"work": work, "project s": row["project s"], "reference s": row["reference s"],
                     "speed-up": row["speed-up"], "agreement": agreement, "load average (1 min)": row["load"]})
    return pd.DataFrame(rows)


def record_bench(preset: str, train_examples: int, eval_examples: int, batch_size: int, repeats: int,
                 variants: Sequence[str], seed: int, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the benchmark for a run directory: the trainers' scratch files in a temporary folder, the result (every
    timing, per-step loss and load average) with the environment in metrics.json."""
    import tempfile

    from ..core.environment import environment
    from ..core.records import RunRecorder

    settings = BenchSettings(preset=preset, train_examples=train_examples, eval_examples=eval_examples,
                             batch_size=batch_size, repeats=repeats, variants=tuple(variants), seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as scratch:
        result = run_bench(settings, scratch)
    record = {"experiment": "bench", "model": {"preset": preset}, "seed": seed, "bench": result,
              "environment": environment(), "wall_seconds": round(time.perf_counter() - started, 1)}
    RunRecorder(Path(run_dir)).metrics(record)
    return record
