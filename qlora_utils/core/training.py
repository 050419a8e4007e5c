"""Training with transformers' Trainer, configured as in the QLoRA paper, with a per-step history."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from transformers import (DataCollatorForSeq2Seq, PreTrainedTokenizerBase, SchedulerType, Trainer, TrainerCallback,
                          TrainerControl, TrainerState, TrainingArguments)

from ..errors import QLoraError
from ..speed.efficiency import PeakMemory, tokens_per_second
from ..speed.prefix import decoder_hidden, shared_length
from ..speed.threads import follow


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule; the defaults follow the QLoRA paper (paged AdamW 32-bit, constant LR, 3 % warmup,
    max grad norm 0.3)."""

    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: str = "constant_with_warmup"
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    optim: str = "paged_adamw_32bit"
    eval_steps: int | None = None
    seed: int = 0
    bf16: bool = True
    group_by_length: bool = True  # batches of similar length: less padding, same data
    head_on_labels_only: bool = True  # the LM head only where a label is set: the same loss up to rounding
    share_prefix: bool = True  # the opening all rows of a batch share runs once (prefix.py): the same loss up to
    # rounding without dropout; with LoRA dropout the shared rows share one mask

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise QLoraError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise QLoraError(f"batch_size and grad_accum must be positive, got {self.batch_size}, {self.grad_accum}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise QLoraError("give a positive epochs or max_steps")
        if self.scheduler not in {t.value for t in SchedulerType}:
            raise QLoraError(f"unknown scheduler {self.scheduler!r}; use one of transformers' SchedulerType values, "
                             "e.g. constant_with_warmup (the QLoRA paper's), cosine or linear")
        if not 0 <= self.warmup_ratio < 1:
            raise QLoraError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


CPU_OPTIMIZERS = {"paged_adamw_32bit": "adamw_torch_fused"}  # without CUDA, the same 32-bit AdamW update from torch:
# bitsandbytes pages only on CUDA, and its CPU fallback runs the update as many small tensor operations (measured:
# full fine-tuning of SmolLM2-135M 1.30x faster per step with torch's fused AdamW, the same losses up to rounding)


def runtime_optimizer(optim: str) -> str:
    """The optimizer the Trainer is given: the configured one on CUDA; its plain equivalent on CPU, where paging
    does not exist (CPU_OPTIMIZERS); 8-bit optimizers stay bitsandbytes' (torch has none)."""
    return optim if torch.cuda.is_available() else CPU_OPTIMIZERS.get(optim, optim)


def effective_optimizer(optim: str) -> str:
    """What actually runs, in words: on CPU paged optimizers do not page (bitsandbytes pages only on CUDA)."""
    if runtime_optimizer(optim) != optim:
        return f"{optim} (no GPU, so no paging: the same AdamW update from torch's fused {runtime_optimizer(optim)})"
    if optim.startswith("paged_") and not torch.cuda.is_available():
        return f"{optim} (no GPU: bitsandbytes falls back to non-paged {optim.removeprefix('paged_')})"
    return optim


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal language model inside a peft wrapper (its layers carry the adapters), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class AnswerLossTrainer(Trainer):
    """transformers' Trainer with a leaner loss: the LM head runs only at the positions that have a label (for SST-2,
    the answer token; the prompt's logits are never used), and the opening every row of a batch shares runs once
    (`prefix.decoder_hidden`). The same cross-entropy as the model's own loss, up to floating-point summation order."""

    def __init__(self, *args: Any, head_on_labels_only: bool = True, share_prefix: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_on_labels_only, self.share_prefix = head_on_labels_only, share_prefix

    @property
    def rewrites_apply(self) -> bool:
        """Whether the lean loss runs: not under several processes, where the rewrites would call the decoder
        directly, around DDP's and FSDP's forward; there the Trainer's own loss runs instead."""
        return self.accelerator.num_processes == 1

    def settings_as_run(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The recorded settings, saying what really ran: both rewrites off where the plain loss ran."""
        return settings if self.rewrites_apply else {**settings, "head_on_labels_only": False, "share_prefix": False}

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        if not self.rewrites_apply:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        lm = causal_lm(model)
        ids, mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"]
        prefix = shared_length(ids, mask, labels) if self.share_prefix else 0
        labels = labels[:, prefix + 1:]  # hidden state i predicts token i + 1
        keep = labels != -100
        with self.accelerator.autocast():  # as the model's own forward runs under the Trainer (bf16 autocast)
            hidden = decoder_hidden(lm.get_decoder(), ids, mask, prefix)[:, :-1]
            if self.head_on_labels_only:
                logits = lm.get_output_embeddings()(hidden[keep]).float()
            else:
                logits = lm.get_output_embeddings()(hidden).float()[keep]
        loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
        return (loss, {"logits": logits}) if return_outputs else loss


def non_finite(entry: dict[str, Any]) -> tuple[str, float] | None:
    """The first of a log entry's training loss and gradient norm that is not a finite number (what, value), or None.
    The Trainer logs a non-finite loss as 0.0 unless told not to (`logging_nan_inf_filter`); the gradient norm it
    logs as it is."""
    for key, what in (("loss", "training loss"), ("grad_norm", "gradient norm")):
        if key in entry and not math.isfinite(entry[key]):
            return what, entry[key]
    return None


class HistoryCallback(TrainerCallback):
    """Collects every log entry (train/eval loss, learning rate, tokens seen) with the elapsed seconds and the threads
    in use; before each step, adopts the thread count a parallel grid assigned (`threads.follow`). Training stops at
    the first step whose loss or gradient norm is not a finite number (`broken`: step, what, value)."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.broken: tuple[int, str, float] | None = None

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        follow()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self.start = time.perf_counter()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **_: Any) -> None:
        if not logs or "train_loss" in logs:  # the closing summary is not a step
            return
        entry = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(time.perf_counter() - self.start, 3),
                 "tokens_seen": int(state.num_input_tokens_seen), "threads": torch.get_num_threads()}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                entry[key] = float(logs[key])
        self.history.append(entry)
        if self.broken is None and (bad := non_finite(entry)):
            self.broken = (state.global_step, *bad)
            control.should_training_stop = True  # every later step would only carry the NaN on


@dataclass
class TrainResult:
    """What a training run produced: per-step history, throughput and memory."""

    history: list[dict[str, Any]]
    steps: int
    tokens: int
    seconds: float
    memory: dict[str, Any]
    optimizer: str
    settings: dict[str, Any] = field(default_factory=dict)
    optimizer_states: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        """Non-padding training tokens per second of training wall time."""
        return tokens_per_second(self.tokens, self.seconds)

    def train_losses(self) -> list[float]:
        """Training loss per logged step."""
        return [h["loss"] for h in self.history if "loss" in h]

    def summary(self) -> dict[str, Any]:
        """Scalars for a run record (the history is stored separately)."""
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "threads": sorted({h["threads"] for h in self.history if "threads" in h}),
                "tokens_per_second": round(self.tokens_per_second, 1), "optimizer": self.optimizer,
                "memory": self.memory, "settings": self.settings, "optimizer_states": self.optimizer_states}


def optimizer_states(optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """What the optimizer's state holds after training: tensors and MiB, and how many of them bitsandbytes paged
    (allocated in CUDA unified memory that can spill to the host). bitsandbytes pages only tensors of at least
    100,000 elements (`Optimizer8bit.get_state_buffer`): LoRA matrices of rank r are r x width, so small adapters keep
    their states in ordinary GPU memory even under paged AdamW."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer the Trainer made
    tensors = [t for state in getattr(inner, "state", {}).values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.numel() > 1]  # moments, not step counters
    paged = [t for t in tensors if getattr(t, "is_paged", False)]

    def mib(chosen: list[torch.Tensor]) -> float:
        return round(sum(t.numel() * t.element_size() for t in chosen) / 1024 ** 2, 1)

    return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}", "tensors": len(tensors),
            "mib": mib(tensors), "paged_tensors": len(paged), "paged_mib": mib(paged)}


def train(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, train_data: datasets.Dataset,
          settings: TrainSettings, output_dir: str | Path, eval_data: datasets.Dataset | None = None,
          baseline_rss: int | None = None, show_progress: bool = True,
          baseline_total: int | None = None, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train with transformers' Trainer on tokenized examples (input_ids, attention_mask, labels). Under a
    multi-process launch (accelerate launch, torchrun) the Trainer runs DDP or FSDP by itself. A loss or gradient
    norm that stops being a finite number stops training and fails it (QLoraError naming the step and the value)."""
    output_dir = Path(output_dir)
    evaluate = eval_data is not None and settings.eval_steps is not None
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"), per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        lr_scheduler_type=settings.scheduler, warmup_steps=settings.warmup_ratio, max_grad_norm=settings.max_grad_norm,
        weight_decay=settings.weight_decay, optim=runtime_optimizer(settings.optim), bf16=settings.bf16,
        eval_strategy="steps" if evaluate else "no", eval_steps=settings.eval_steps if evaluate else None,
        logging_steps=1, logging_nan_inf_filter=False,  # a non-finite loss is logged as such, not as 0.0
        save_strategy="no", report_to="none", seed=settings.seed, data_seed=settings.seed,
        include_num_input_tokens_seen="non_padding", disable_tqdm=not show_progress,
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )
    history = HistoryCallback()
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=None)
    common = {"model": model, "args": args, "train_dataset": train_data, "data_collator": collator,
              "eval_dataset": eval_data if evaluate else None, "processing_class": tokenizer, "callbacks": [history, *callbacks]}
    if settings.head_on_labels_only or settings.share_prefix:
        trainer: Trainer = AnswerLossTrainer(**common, head_on_labels_only=settings.head_on_labels_only,
                                             share_prefix=settings.share_prefix)
    else:  # transformers' own loss, as the reference recipe computes it
        trainer = Trainer(**common)
    with PeakMemory("train", baseline_rss=baseline_rss, baseline_total=baseline_total) as memory:
        output = trainer.train()
    steps = int(output.global_step)
    tokens = int(trainer.state.num_input_tokens_seen)
    if history.broken:  # a finite divergence is kept and named in the book (`analysis.divergence_step`)
        step, what, value = history.broken
        raise QLoraError(f"training diverged at step {step}: the {what} is {value}, not a finite number; lower the "
                         "learning rate (a run that diverged so is never pooled)")
    ran = asdict(settings)
    if isinstance(trainer, AnswerLossTrainer):
        ran = trainer.settings_as_run(ran)
    return TrainResult(history.history, steps, tokens, memory.result["seconds"], memory.result,
                       effective_optimizer(settings.optim), ran, optimizer_states(trainer.optimizer))
