"""qlora_utils: quantized loading, LoRA adapters, data, training and evaluation for the QLoRA-on-Qwen report.

Modules: models (presets, load modes), adapters (LoRA, parameter counts), data (loaders), prompts (chat templates,
answer-only labels), training (Trainer), metrics (label scoring, SQuAD), efficiency (memory, throughput),
environment (provenance), experiments (end-to-end runs)."""

__version__ = "0.1.0"
