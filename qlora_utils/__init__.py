"""qlora_utils: quantized loading, LoRA adapters, data, training and evaluation for the QLoRA-on-Qwen report.

Modules: models (presets, load modes), adapters (LoRA, parameter counts), data (loaders), prompts (chat templates,
answer-only labels), training (Trainer), metrics (label scoring, SQuAD), efficiency (memory, throughput),
environment (provenance), experiments (end-to-end runs)."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (CPU, AVX512-BF16) looks for a fused 4-bit kernel on the Hub's kernels-community through the optional
# `kernels` package and, without it, warns on import that it falls back to its own CPU kernels. Every measurement in
# this project used those, and the project does not need the package: the warning is dropped, nothing else.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
