"""Synthetic run records for the chapter tests: what a finished run directory holds, without training anything."""

from __future__ import annotations

from pathlib import Path
import json
from typing import Any

from qlora_utils.core.records import Run


def sst2_run(path: Path, name: str, mode: str, seed: int, accuracy: float, *, notebook: str = "week2_sst2_baseline",
             group: str | None = None, rank: int = 8, placement: str = "attention", lr: float = 1e-3,
             examples: int = 1000, schedule: str = "cosine", selection: float | None = None,
             zero_shot: float | None = None, trainable: int = 1000, total: int = 200_000, label: str = "M-135M",
             preset: str = "m") -> Run:
    """A finished SST-2 run record (accuracies as fractions)."""
    lora = None if mode == "full" else {"rank": rank, "alpha": 16, "placement": placement, "dropout": 0.1}
    metrics: dict[str, Any] = {
        "experiment": "sst2", "model": {"label": label, "pretrained": True, "mode": mode, "preset": preset},
        "lora": lora, "data": {"train": {"records_used": examples, "source": "local:sst2/train.tsv"}},
        "fine_tuned": {"accuracy": accuracy, "predicted_positive_share": 0.5, "n": 872},
        "parameters": {"trainable": total if mode == "full" else trainable, "total": total,
                       "percent": 100.0 if mode == "full" else 100 * trainable / total},
        "training": {"steps": 63, "tokens_per_second": 100.0, "seconds": 300.0,
                     "settings": {"learning_rate": lr, "scheduler": schedule, "batch_size": 16},
                     "memory": {"cpu_total_rss_above_baseline_mib": 3000.0, "device": "cpu"}},
    }
    if selection is not None:
        metrics["selection"] = {"accuracy": selection, "n": 500}
    if zero_shot is not None:
        metrics["zero_shot"] = {"accuracy": zero_shot}
    config = {"notebook": f"notebooks/{notebook}.md", "parameters": {"mode": mode, "seed": seed}, "group": group}
    status = {"state": "done", "wall_seconds": 320.0, "started": "2026-11-29T12:00:00+00:00",
              "finished": "2026-11-29T12:05:20+00:00"}
    env = {"git_commit": "a" * 40, "hardware": {"torch_threads": 1}}
    return Run(path / name, config, status, metrics, env)


AMX = {"cpu_model": "Xeon", "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "torch_threads": 1}


def pilot_run(tmp: Path, size: int, seed: int, zero_right: int, tuned_right: int, group: str = "pilot",
               mode: str = "nf4", lr: float = 1e-3, placement: str = "attention", min_words: int = 9) -> Run:
    """A selection-only run whose 100 selection sentences are all positive: the first `zero_right` right zero-shot,
    the first `tuned_right` right after fine-tuning."""
    name = f"{group}-{mode}-{placement}-w{min_words}-n{size}-lr{lr:g}-seed{seed}"
    run = sst2_run(tmp, name, mode, seed, 0.0, group=group, examples=size, lr=lr, placement=placement)
    run.config["parameters"]["min_words"] = min_words
    del run.metrics["fine_tuned"]
    run.metrics.update(seed=seed, training={**run.metrics["training"], "tokens": 40 * size})
    run.env["hardware"] = AMX
    run.path.mkdir(parents=True)
    rows = [{"sentence": f"s{i}", "label": 1, "zero_shot": int(i < zero_right), "fine_tuned": int(i < tuned_right)}
            for i in range(100)]
    (run.path / "selection.json").write_text(json.dumps(rows))
    return run
