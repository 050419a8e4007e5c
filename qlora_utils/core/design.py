"""The study's fixed vocabulary, defined here once and cheap to import (no torch): the load modes and their names, the
LoRA placements, and the plan's adapters (r = 8, α = 16, dropout 0.1 on the query, key and value projections), which
`adapters.LoraSettings` takes as its defaults and the protocol and the memory planner judge and plan with."""

from __future__ import annotations

MODE_NAMES = {"nf4": "QLoRA (NF4)", "fp4": "QLoRA (FP4)", "bf16": "16-bit LoRA", "full": "full fine-tuning"}
MODES = tuple(MODE_NAMES)  # the load modes: 4-bit NF4 or FP4 with adapters, bf16 with adapters, full fine-tuning
MODE_WORDS = {"nf4": "QLoRA", "bf16": MODE_NAMES["bf16"], "full": MODE_NAMES["full"]}  # the protocol's arms in prose

ATTENTION = ("q_proj", "k_proj", "v_proj")
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION,  # the plan's placement
    "attention_all": (*ATTENTION, "o_proj"),
    "attention_mlp": (*ATTENTION, "o_proj", "gate_proj", "up_proj", "down_proj"),  # every linear layer of a block
}

PLAN_ADAPTERS = {"rank": 8, "alpha": 16, "dropout": 0.1, "placement": "attention"}  # the plan's adapters
PLACEMENT_WORDS = {"attention": "q,k,v", "attention_mlp": "every linear layer"}  # adapter placements in verdicts
