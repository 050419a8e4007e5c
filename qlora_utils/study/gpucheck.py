"""The CUDA code paths, measured on a GPU: the memory planner's verdict rows trained for real on random weights of the
same architectures (the CUDA allocator's and the device's peak memory against the prediction, paged optimizer states
counted), and SST-2 and SQuAD end to end on CUDA (4-bit loading, paged AdamW, scoring and generation)."""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..core.adapters import LoraSettings
from ..core.design import MODE_NAMES
from ..core.records import REPO, read_json
from ..core.training import TrainSettings
from ..errors import QLoraError
from . import planner
from .experiments import EfficiencyRun, Experiment, run_efficiency, run_experiment
from .planner import PLAN_GPU_SETTINGS, PLAN_LORA, plan_for_record
from .protocol import GPU_GIB

RESULTS = "gpu-check"  # runs/gpu-check/<commit>-<gpu>/<check>/: the committed GPU checks the book reads
STEPS = 8  # training steps per efficiency check: the peak is reached in the first; the rest time throughput
END_TO_END_PRESET = "random-qwen2.5-0.5b"  # the architecture of Qwen2.5-Coder-0.5B-Instruct, the CPU study's model


@dataclass(frozen=True)
class Check:
    """One measurement: a fixed-shape efficiency run or an end-to-end experiment, under a folder name."""

    name: str
    work: EfficiencyRun | Experiment

    @property
    def seed(self) -> int:
        """The seed of the model the check loads (experiments load seed 0's random weights)."""
        return self.work.seed if isinstance(self.work, EfficiencyRun) else 0


def plan_check(preset: str, mode: str, gradient_checkpointing: bool = True) -> Check:
    """A planner verdict row (`planner.gpu_verdicts`: the plan's adapters, batch and sequence length) on random
    weights of the preset's architecture; optionally without gradient checkpointing."""
    work = EfficiencyRun(preset=f"random-{preset}", mode=mode, lora=None if mode == "full" else PLAN_LORA,
                         batch_size=PLAN_GPU_SETTINGS["batch_size"], seq_len=PLAN_GPU_SETTINGS["seq_len"], steps=STEPS,
                         gradient_checkpointing=gradient_checkpointing and PLAN_GPU_SETTINGS["gradient_checkpointing"],
                         optim=PLAN_GPU_SETTINGS["optimizer"])
    return Check(f"plan-{preset}-{mode}" + ("" if gradient_checkpointing else "-no-checkpointing"), work)


def default_checks() -> list[Check]:
    """The GPU check, most important first: the plan's 8B model in each mode (and QLoRA without checkpointing), SST-2
    end to end (QLoRA and full fine-tuning, whose large optimizer states are the ones bitsandbytes pages), the 4B
    model, SQuAD end to end, the third verdict model (Qwen2.5-7B)."""
    sst2 = dict(task="sst2", preset=END_TO_END_PRESET, train_examples=1000, eval_examples=None,
                train=TrainSettings(learning_rate=2e-4, batch_size=16, scheduler="cosine"))
    return [plan_check("qwen3-8b", "nf4"), plan_check("qwen3-8b", "nf4", gradient_checkpointing=False),
            *(plan_check("qwen3-8b", m) for m in ("bf16", "full")),
            Check("sst2-qlora", Experiment(mode="nf4", lora=LoraSettings(), **sst2)),
            Check("sst2-full", Experiment(mode="full", lora=None, **{**sst2, "train": TrainSettings(
                learning_rate=2e-5, batch_size=16, scheduler="cosine")})),
            *(plan_check("qwen3-4b", m) for m in ("nf4", "bf16", "full")),
            Check("squad-qlora", Experiment(task="squad", preset=END_TO_END_PRESET, mode="nf4",
                                            lora=LoraSettings(placement="attention_mlp"), train_examples=200,
                                            eval_examples=50, train=TrainSettings(batch_size=8))),
            *(plan_check("qwen2.5-7b", m) for m in ("nf4", "bf16", "full"))]


def run_checks(output: str | os.PathLike[str], checks: Sequence[Check] | None = None, only: str | None = None,
               budget_seconds: float | None = None, require_cuda: bool = True,
               drop_models: bool = False, isolate: bool = True) -> list[dict[str, Any]]:
    """Run each check into output/NAME (resumable: a check with metrics.json is done; an attempt runs in a staging
    folder renamed into place when it finishes). A failing check leaves NAME.error.txt and the others still run;
    checks that would start after `budget_seconds` are skipped; with `drop_models`, each random-weight model leaves
    the cache after its last check (an 8B model is 16 GB on disk). Each check runs in a process of its own unless
    `isolate` is off (`run_check`). Returns one summary row per check."""
    import torch

    if require_cuda and not torch.cuda.is_available():
        raise QLoraError("gpu-check measures the CUDA code paths and this machine has no CUDA device; run it on a GPU "
                         "machine (make setup there installs the CUDA build of torch)")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in (default_checks() if checks is None else checks) if only is None or only in c.name]
    if not chosen:
        raise QLoraError(f"no check matches {only!r}; the checks are: {', '.join(c.name for c in default_checks())}")
    started, rows = time.perf_counter(), []
    for number, check in enumerate(chosen, 1):
        if budget_seconds is not None and time.perf_counter() - started > budget_seconds \
                and not (output / check.name / "metrics.json").is_file():
            rows.append({"check": check.name, "state": "skipped: over the time budget"})
            continue
        row = run_check(check, output, isolate)
        if drop_models and all(later.work.preset != check.work.preset for later in chosen[number:]):
            drop_model(check)
        rows.append(row)
        print(f"[{number}/{len(chosen)}] {check.name}: {row['state']} "
              f"({time.perf_counter() - started:.0f} s so far) {row}", flush=True)
    return rows


def run_check(check: Check, output: Path, isolate: bool = True) -> dict[str, Any]:
    """One check into output/NAME through a staging folder (skipped when done), in a process of its own unless
    `isolate` is off; its summary row, or the failure with its traceback in output/NAME.error.txt.

    A process per check because some memory outlives a check's objects: bitsandbytes' page manager keeps every paged
    optimizer state of the process (measured on an H200: the 30 GiB of Qwen3-4B's full fine-tuning stayed on the
    device for the checks after it)."""
    target, staging = output / check.name, output / f".{check.name}.staging"
    error = output / f"{check.name}.error.txt"
    state = "done before"
    if not (target / "metrics.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        error.unlink(missing_ok=True)
        if isolate:
            child = multiprocessing.get_context("spawn").Process(target=execute, args=(check, staging, error))
            child.start()
            child.join()
            if child.exitcode and not error.is_file():  # killed (out of memory, a signal) before it could say why
                error.write_text(f"the check's process ended with exit code {child.exitcode}\n", encoding="utf-8")
        else:
            execute(check, staging, error)
        if error.is_file():
            return {"check": check.name, "state": "failed", "error": error.name}
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        error.unlink(missing_ok=True)
        state = "done"
    return {"check": check.name, "state": state, **summary_row(read_json(target / "metrics.json"))}


def drop_model(check: Check) -> None:
    """Delete a random-weight (or tiny) model the check materialized from the cache (GGUF and Hub models stay)."""
    from ..core.models import PRESETS, model_folder

    preset = PRESETS.get(check.work.preset.lower())
    if preset is not None and preset.kind in ("random", "tiny"):
        shutil.rmtree(model_folder(check.work.preset, seed=check.seed), ignore_errors=True)


def execute(check: Check, staging: Path, error: Path) -> None:
    """Run one check's work into the staging folder; a failure's traceback goes to `error` (one check's failure is
    a result too: the others still run)."""
    from ..core.models import get_preset, materialize

    try:
        if get_preset(check.work.preset).kind != "hub":  # built before the load phase, which measures loading only
            materialize(check.work.preset, seed=check.seed)
        if isinstance(check.work, EfficiencyRun):
            run_efficiency(check.work, staging)
        else:
            run_experiment(check.work, staging)
    except Exception:
        error.write_text(traceback.format_exc(), encoding="utf-8")


def read_records(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every committed check's metrics.json (runs/gpu-check/*/*/), each with the check's name, in name order."""
    base = Path(root) if root is not None else REPO / "runs" / RESULTS
    return [{**read_json(path), "check": path.parent.name} for path in sorted(base.glob("*/*/metrics.json"))]


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """The figures of one check's metrics.json: memory (predicted, torch's allocator, the whole device, paged
    optimizer states), throughput, and for end-to-end runs the metric and the loss's first and last values."""
    from .planner import GiB

    row: dict[str, Any] = {"model": record["model"]["preset"], "mode": record["model"]["mode"],
                           "wall_s": record.get("wall_seconds")}
    fit = record.get("fit")
    if fit:
        row.update(predicted_gib=fit["predicted_gib"], fits_this_gpu=fit["fits"])
    training = record.get("training")
    if not training:
        return row
    memory, load = training["memory"], record.get("load_memory", {})
    states = training.get("optimizer_states", {})
    if "cuda_device_used_peak_mib" in memory and "cuda_device_used_at_start_mib" in load:
        # the whole device's peak while training, less what was in use before the model was loaded (the CUDA
        # context; in records made before each check had its own process, other checks' leftovers too). Loading is
        # apart: in records made before `execute` materialized models first, the first check of each model also drew
        # its random weights on the GPU inside the load phase.
        row["device_need_gib"] = _gib(memory["cuda_device_used_peak_mib"] - load["cuda_device_used_at_start_mib"])
        row["load_allocated_gib"] = _gib(load.get("cuda_max_allocated_mib"))
    row.update(allocated_gib=_gib(memory.get("cuda_max_allocated_mib")),
               reserved_gib=_gib(memory.get("cuda_max_reserved_mib")),
               device_peak_gib=_gib(memory.get("cuda_device_used_peak_mib")),
               paged_states_gib=_gib(states.get("paged_mib")), paged_tensors=states.get("paged_tensors"),
               state_tensors=states.get("tensors"), tokens_per_s=training.get("tokens_per_second"))
    if record.get("experiment") == "efficiency":
        row["planner_gib"] = round(plan_for_record(record).total / GiB, 2)
    else:
        metrics = ("accuracy", "exact_match", "f1")
        for phase in ("zero_shot", "fine_tuned"):
            row.update({f"{phase}_{k}": v for k, v in (record.get(phase) or {}).items() if k in metrics})
    return row


def verdict_rows(records: Sequence[dict[str, Any]]) -> "pd.DataFrame":
    """The checks that speak to the plan's "8B within 24 GB" rule (`protocol.memory_verdict`): efficiency checks at
    the plan's settings with gradient checkpointing, each with the whole device's peak while training (CUDA context
    and anything else on the device included; PyTorch's peak where a record has no device figure)."""
    rows = []
    for record in records:
        memory = record.get("training", {}).get("memory", {})
        if record.get("experiment") != "efficiency" or "cuda_max_allocated_mib" not in memory \
                or not record.get("shape", {}).get("gradient_checkpointing", True):
            continue
        shape, load = record.get("shape", {}), record.get("load_memory", {})
        rows.append({"run": f"gpu-check {record['check']}" if "check" in record else "gpu-check",
                     "model": record["model"]["label"], "mode": record["model"]["mode"], "device": "cuda",
                     "gpu": record.get("environment", {}).get("hardware", {}).get("gpu"),
                     "peak MiB": memory.get("cuda_device_used_peak_mib", memory["cuda_max_allocated_mib"]),
                     "load peak MiB": load.get("cuda_device_used_peak_mib", load.get("cuda_max_allocated_mib")),
                     "pretrained": record["model"].get("pretrained"),
                     "shape": f"{shape.get('steps')} steps at batch {shape.get('batch_size')} × "
                              f"{shape.get('seq_len')} tokens" if shape else None})
    return pd.DataFrame(rows, columns=["run", "model", "mode", "device", "gpu", "peak MiB", "load peak MiB",
                                       "pretrained", "shape"])


def _gib(mib: float | None) -> float | None:
    return None if mib is None else round(mib / 1024, 2)


GPU_COLUMNS = ["model", "mode", "gradient checkpointing", "predicted (GiB)", "PyTorch's peak (GiB)",
               "paged optimizer states (GiB)", "planner error (%)", "whole device while training (GiB)",
               "fits 24 GB, measured", "tokens/s"]

FIT_GIB = GPU_GIB - planner.RESERVE_GIB  # what a 24 GB card leaves for training after the CUDA context

def gpu_table(records: Iterable[dict[str, Any]], fit_gib: float = FIT_GIB) -> pd.DataFrame:
    """The planner's verdict rows as trained on a GPU (`gpu-check`): predicted and measured peak memory (PyTorch's
    allocator plus bitsandbytes' paged states, and the whole device less what was in use before loading), whether
    that fits a 24 GB card with the planner's 1 GiB for the CUDA context, and throughput."""
    rows = []
    for record in records:
        if record.get("experiment") != "efficiency":
            continue
        row = summary_row(record)
        trained = "allocated_gib" in row
        measured = planner.measured_peak_mib(record) / 1024 if trained else math.nan
        need = row.get("device_need_gib", math.nan) if trained else math.nan
        shape = record.get("shape", {})
        rows.append({"model": record["model"]["label"], "mode": MODE_NAMES.get(row["mode"], row["mode"]),
                     "gradient checkpointing": "no" if shape.get("gradient_checkpointing") is False else "yes",
                     "predicted (GiB)": row["predicted_gib"], "PyTorch's peak (GiB)": row.get("allocated_gib"),
                     "paged optimizer states (GiB)": row.get("paged_states_gib"),
                     "planner error (%)": 100 * (row["predicted_gib"] - measured) / measured if trained else math.nan,
                     "whole device while training (GiB)": need,
                     "fits 24 GB, measured": ("yes" if need <= fit_gib else "no") if trained
                     else "not run: predicted above 85 % of the GPU's free memory",
                     "tokens/s": row.get("tokens_per_s")})
    order = {m: i for i, m in enumerate(MODE_NAMES.values())}
    frame = pd.DataFrame(rows, columns=GPU_COLUMNS)
    return frame.sort_values(["model", "mode", "gradient checkpointing"], key=lambda c: c.map(order).fillna(0)
                             if c.name == "mode" else c, ascending=[True, True, False], ignore_index=True)


def gpu_agreement(table: pd.DataFrame) -> tuple[int, int]:
    """Of the rows of `gpu_table` trained on the GPU: how many the planner's predicted 24 GB verdict got right, and
    how many there are."""
    trained = table[table["fits 24 GB, measured"].isin(["yes", "no"])]
    return int(((trained["predicted (GiB)"] <= FIT_GIB) == (trained["fits 24 GB, measured"] == "yes")).sum()), \
        len(trained)
