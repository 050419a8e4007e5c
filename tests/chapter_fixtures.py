"""Synthetic run records for the chapter tests: what a finished run directory holds, without training anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_utils.runs import Run


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
