"""The landing page: the build's profile and time, the headline numbers of week 2 and the protocol's verdicts, read
from the week 2 and week 8 pages themselves (which the caller builds and passes in: a chapter imports no other), so
the pages agree."""

from __future__ import annotations

import os
from pathlib import Path

from ...core.records import Run, busy_seconds, summed_seconds
from ...errors import QLoraError
from ...grid.profiles import load_profile
from ...study.headline import NOTEBOOK
from ..report import MISSING_ENV, placeholder_chart
from . import NA, Page


def page(runs: list[Run], profile: str, baseline: Page, report: Page) -> Page:
    """Everything the landing page shows, from every finished run of the profile and from the week 2 (`baseline`)
    and week 8 (`report`) pages of the same runs."""
    out = Page("intro")
    out.value("profile", profile, "{}")
    out.value("runs", len(runs), "{:d}")
    out.value("hours", busy_seconds(runs) / 3600, "{:.2f}")
    out.value("run_hours", summed_seconds(runs) / 3600, "{:.2f}")
    for key in ("nf4_mean", "nf4_std", "bf16_mean", "bf16_std", "full_mean", "full_std", "nf4_peak_mib",
                "bf16_peak_mib", "full_peak_mib", "nf4_zero_shot", "bf16_zero_shot", "nf4_trainable_pct", "nf4_seeds",
                "train_examples", "model", "gain_sentence", "moved", "pilot_size", "pilot_gain", "pilot_p",
                "pilot_zero", "pilot_tuned", "min_words", "steps", "first_train_examples", "first_steps",
                "first_moved", "design"):
        out.text[key] = baseline.text[key]
    t = baseline.text
    source = next((r.metrics["model"].get("source") for r in runs if r.metrics.get("model", {}).get("label")
                   == t["model"] and r.metrics["model"].get("source")), None)
    out.value("model_source", source, "{}")
    out.value("second", f"It repeats the comparisons on {t['second_model']} as a second model family, which goes "
              f"from {t['second_nf4_zero_shot']} % zero-shot in NF4 ({t['second_bf16_zero_shot']} % in 16 bits) to "
              f"{t['second_nf4_mean']} % (QLoRA), "
              f"{t['second_bf16_mean']} % (16-bit LoRA) and {t['second_full_mean']} % (full fine-tuning); its verdicts "
              f"on the first two expectations read {t['second_full_verdict']} and {t['second_lora_verdict']}."
              if t["second_model"] != NA else "", "{}")
    for key in ("full", "full_sentence", "lora", "trainable", "gpu", "gpu_sentence"):
        out.text[f"verdict_{key}"] = report.text[key]
    out.figures["accuracy"] = baseline.figures["accuracy"] if any(Path(r.notebook).stem == NOTEBOOK for r in runs) \
        else placeholder_chart("no SST-2 runs in this profile")
    models = sorted({r.metrics["model"]["label"] for r in runs if r.metrics.get("model", {}).get("pretrained")
                     and r.metrics.get("experiment") == "sst2"})
    out.value("models", ", ".join(models) or None, "{}")
    missing = os.environ.get(MISSING_ENV, "")
    planned = planned_runs(profile)
    later = (f" {len(planned)} more are planned (committed before they run, as the protocol asks) and not yet run; "
             "no number below includes them.") if planned else ""
    out.value("completeness", f"This is a partial build: these runs of the profile are not finished, and every "
                              f"number and figure leaves them out: {missing}.{later}" if missing else
              f"Every started run of the profile finished; the numbers below are read from all {len(runs)} of "
              f"them.{later}", "{}")
    return out


def planned_runs(profile: str) -> list[str]:
    """The profile's runs marked `planned` (committed, not yet run); none for a profile this checkout lacks."""
    try:
        return [entry.name for entry in load_profile(profile).entries if entry.planned]
    except QLoraError:
        return []
