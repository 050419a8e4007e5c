"""qlora_utils: quantized loading, LoRA adapters, data, training and evaluation for the QLoRA-on-Qwen report.

Subpackages, each importing only those below it (a contract in pyproject.toml, checked by tests/test_layers.py):
cli (the command line) > book (the Jupyter Book) > grid (profiles, the runner, re-runs) > study (experiments,
statistics, planner, judge, analysis) > core (models, adapters, data, prompts, training, metrics, run records) > speed
(CPU fast paths, memory and throughput probes) > the top-level modules errors, locations (this checkout, data, cache,
atomic writes) and scrub (machine paths out of committed files)."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (CPU, AVX512-BF16) looks for a fused 4-bit kernel on the Hub's kernels-community through the optional
# `kernels` package and, without it, warns on import that it falls back to its own CPU kernels. Every measurement in
# this project used those, and the project does not need the package: the warning is dropped, nothing else.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
