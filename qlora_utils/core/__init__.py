"""The core layer: one experiment's parts. Model presets and load modes (`models`, `official`), LoRA adapters
(`adapters`), data and prompts (`data`, `prompts`), the trainer (`training`), scoring (`metrics`), memory by component
(`memory`), provenance (`environment`), the run record a run writes and the book reads (`records`), and multi-process
training (`distributed`). Imports the speed layer and the top-level modules, nothing above."""
