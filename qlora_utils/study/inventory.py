"""What the study works with: data set summaries (sizes, label balance, token lengths under the chat template) and
LoRA parameter tables (analytic from configurations, checked against peft on instantiated models)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from ..core.adapters import PLACEMENTS, LoraSettings, analytic_parameter_count, parameter_report, prepare_for_training
from ..core.data import load_task
from ..core.models import QWEN_ARCHITECTURES, architecture_config, get_preset, load_model
from ..core.prompts import token_length_stats

TASK_SPLITS: tuple[tuple[str, str], ...] = (
    ("sst2", "train"), ("sst2", "validation"), ("squad", "train"), ("squad", "validation"), ("alpaca", "train"),
    ("alpaca_eval", "text_davinci_003"), ("alpaca_eval", "gpt4_turbo"))


def dataset_summary(tokenizer: PreTrainedTokenizerBase, sample: int = 200, seed: int = 0,
                    splits: Sequence[tuple[str, str]] = TASK_SPLITS) -> list[dict[str, Any]]:
    """One row per split: source, records, label balance, and token lengths of a seeded sample of `sample` records."""
    rows = []
    for task, split in splits:
        data = load_task(task, split)
        row: dict[str, Any] = {"task": task, "split": split, "source": data.source, "records": data.n_available}
        if task == "sst2":
            counts = Counter(data.dataset["label"])
            row["positive share"] = counts[1] / data.n_available
        if task == "alpaca_eval":
            row["groups"] = len(set(data.dataset["dataset"]))
        stats = token_length_stats(load_task(task, split, n=min(sample, data.n_available), seed=seed), tokenizer)
        for part in ("prompt", "answer", "total"):
            row[f"{part} tokens mean"] = round(stats[part]["mean"], 1)
        row["total tokens p95"] = stats["total"]["p95"]
        row["total tokens max"] = stats["total"]["max"]
        row["length sample"] = stats["total"]["n"]
        rows.append(row)
    return rows


def config_of(name: str) -> PretrainedConfig:
    """The configuration of a preset without loading weights: built-in for random/tiny presets and for Hub Qwen
    presets whose size the design notes list (base, -Instruct and -Base share an architecture), else from the Hub."""
    preset = get_preset(name)
    if preset.architecture:
        return architecture_config(preset)
    base_name = preset.source.split("/")[-1].removesuffix("-Instruct").removesuffix("-Base")
    if preset.kind == "hub" and base_name in QWEN_ARCHITECTURES:
        return architecture_config(f"random-{base_name.lower()}")
    if preset.kind == "gguf":
        from ..core.models import materialize

        return AutoConfig.from_pretrained(materialize(preset))
    return AutoConfig.from_pretrained(preset.source)


def lora_parameter_table(presets: Sequence[str], ranks: Sequence[int] = (4, 8, 16),
                         placements: Sequence[str] = tuple(PLACEMENTS), alpha: int = 16) -> list[dict[str, Any]]:
    """Analytic trainable LoRA parameters (count and % of all) for every preset x rank x placement."""
    rows = []
    for name in presets:
        config = config_of(name)
        base = analytic_parameter_count(config).total
        for placement in placements:
            for rank in ranks:
                report = analytic_parameter_count(config, LoraSettings(rank, alpha, 0.0, placement))
                rows.append({"model": get_preset(name).label, "base parameters": base, "placement": placement,
                             "rank": rank, "trainable": report.trainable, "trainable %": report.percent})
    return rows


def check_against_peft(preset: str, mode: str = "nf4", ranks: Sequence[int] = (4, 8, 16),
                       placements: Sequence[str] = tuple(PLACEMENTS)) -> list[dict[str, Any]]:
    """Instantiate a preset, attach each LoRA configuration with peft, and compare peft's count with the analytic one."""
    rows = []
    for placement in placements:
        for rank in ranks:
            loaded = load_model(preset, mode)
            lora = LoraSettings(rank, 16, 0.0, placement)
            analytic = analytic_parameter_count(loaded.model.config, lora)
            measured = parameter_report(prepare_for_training(loaded, lora, gradient_checkpointing=False))
            rows.append({"model": loaded.preset.label, "mode": mode, "placement": placement, "rank": rank,
                         "peft trainable": measured.trainable, "analytic trainable": analytic.trainable,
                         "peft total": measured.total, "analytic total": analytic.total,
                         "agree": measured == analytic})
            del loaded
    return rows
