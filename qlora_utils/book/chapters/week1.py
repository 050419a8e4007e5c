"""Week 1, setup: the environment, the data as the model sees it, and the LoRA parameter budget, from the setup
run's record (the last `week1_setup` run)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...core.records import Run
from .. import figures
from ..report import chart_or_note
from . import NA, Page

DATA_COLUMNS = {"task": "task", "split": "split", "source": "source", "records": "records",
                "positive share": "positive (%)", "prompt tokens mean": "prompt tokens (mean)",
                "answer tokens mean": "answer tokens (mean)", "total tokens mean": "example tokens (mean)",
                "total tokens p95": "example tokens (95th percentile)", "total tokens max": "example tokens (max)",
                "length sample": "examples measured", "groups": "source subsets"}
PEFT_COLUMNS = {"model": "model", "mode": "mode", "placement": "adapters on", "rank": "rank r",
                "peft trainable": "trainable (peft)", "analytic trainable": "trainable (analytic)",
                "peft total": "all parameters (peft)", "analytic total": "all parameters (analytic)",
                "agree": "agree"}


def hardware_table(env: dict[str, Any]) -> pd.DataFrame:
    """The machine and commit of the setup run as (setting, value) rows; absent fields are left out."""
    hardware = env.get("hardware", {})
    fields = (("platform", "platform"), ("processor", "processor"), ("cpu_model", "CPU model"),
              ("cpu_capability", "torch's CPU kernels"), ("bf16_products", "bf16 products"),
              ("eval_weights", "weights in evaluation"), ("cpu_count", "CPU cores"),
              ("torch_threads", "torch threads"), ("memory_gib", "memory (GiB)"), ("cuda", "CUDA available"),
              ("gpu", "GPU"), ("gpu_memory_gib", "GPU memory (GiB)"))
    rows = [{"setting": name, "value": str(hardware[key])} for key, name in fields if key in hardware]
    if env.get("git_commit"):
        rows.append({"setting": "git commit", "value": str(env["git_commit"])})
    return pd.DataFrame(rows, columns=["setting", "value"])


def versions_table(env: dict[str, Any]) -> pd.DataFrame:
    """The package versions of the setup run as (package, version) rows."""
    return pd.DataFrame([{"package": k, "version": str(v)} for k, v in env.get("versions", {}).items()],
                        columns=["package", "version"])


def hardware_summary(env: dict[str, Any]) -> str:
    """One phrase for the prose: cores, threads, memory and GPU."""
    hw = env.get("hardware", {})
    if not hw:
        return NA
    gpu = f"a {hw['gpu']} GPU ({hw.get('gpu_memory_gib', '?')} GiB)" if hw.get("gpu") else "no GPU"
    return (f"{hw.get('cpu_count', '?')} CPU cores ({hw.get('torch_threads', '?')} torch threads), "
            f"{hw.get('memory_gib', '?')} GiB of memory and {gpu}")


def data_table(datasets: list[dict[str, Any]]) -> pd.DataFrame:
    """Sizes, label balance (% positive) and token lengths per split, with human column names."""
    frame = pd.DataFrame(datasets)
    if frame.empty:
        return frame
    if "positive share" in frame:
        frame["positive share"] = 100 * frame["positive share"]
    return frame[[c for c in DATA_COLUMNS if c in frame]].rename(columns=DATA_COLUMNS)


def lengths_frame(datasets: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean prompt and answer tokens per split, long (split, part, tokens), for the lengths chart."""
    frame = pd.DataFrame(datasets)
    if frame.empty or "prompt tokens mean" not in frame:
        return pd.DataFrame(columns=["split", "part", "tokens"])
    frame = frame.assign(split=frame["task"] + " / " + frame["split"]).rename(
        columns={"prompt tokens mean": "prompt", "answer tokens mean": "answer"})
    return frame.melt(id_vars=["split"], value_vars=["prompt", "answer"], var_name="part", value_name="tokens")


def lora_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Trainable share (%) per model and placement (rows) and rank (columns)."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    table = frame.pivot_table(index=["model", "placement"], columns="rank", values="trainable %").round(4)
    table.columns = [f"r = {rank} (% trainable)" for rank in table.columns]
    return table.reset_index().rename(columns={"placement": "adapters on"})


def peft_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """peft's trainable and total counts next to the analytic ones, per instantiated configuration."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    if "agree" in frame:
        frame["agree"] = frame["agree"].map({True: "yes", False: "no"})
    return frame[[c for c in PEFT_COLUMNS if c in frame]].rename(columns=PEFT_COLUMNS)


def _mean_prompt(datasets: list[dict[str, Any]], task: str) -> float | None:
    """Mean prompt tokens of a task's validation split (its first split if it has none)."""
    rows = [d for d in datasets if d.get("task") == task]
    rows = [d for d in rows if d.get("split") == "validation"] or rows
    return rows[0].get("prompt tokens mean") if rows else None


def page(runs: list[Run]) -> Page:
    """Everything the setup page shows, from the last setup run (empty tables and "n/a" without one)."""
    result = Page("week1")
    setup = runs[-1].metrics if runs else {}
    env = runs[-1].env if runs else {}
    datasets = setup.get("datasets", [])
    result.tables["hardware"] = hardware_table(env)
    result.tables["versions"] = versions_table(env)
    result.tables["data"] = data_table(datasets)
    result.tables["lora"] = lora_table(setup.get("lora_parameters", []))
    result.tables["peft"] = peft_table(setup.get("peft_check", []))
    result.figures["lengths"] = chart_or_note(lengths_frame(datasets), figures.token_lengths,
                                              "no setup run in this profile")
    result.value("machine", hardware_summary(env))
    result.value("commit", (env.get("git_commit") or NA)[:12])
    versions = env.get("versions", {})
    result.value("torch", versions.get("torch"))
    result.value("transformers", versions.get("transformers"))
    result.value("splits", len(datasets), "{:d}")
    result.value("sst2_prompt", _mean_prompt(datasets, "sst2"), "{:.0f}")
    result.value("squad_prompt", _mean_prompt(datasets, "squad"), "{:.0f}")
    lora = setup.get("lora_parameters", [])
    result.value("lora_models", len({r["model"] for r in lora}), "{:d}")
    checks = setup.get("peft_check", [])
    result.value("peft_checked", len(checks), "{:d}")
    result.value("peft_agree", sum(bool(r.get("agree")) for r in checks), "{:d}")
    result.value("peft_models", ", ".join(dict.fromkeys(r["model"] for r in checks)) or NA)
    return result
