"""The study layer: experiments end to end and what the study concludes from them. Experiments (`experiments`,
`bench`, `gpucheck`), the statistics of the pre-registered protocol (`protocol`, `pilot`), the memory planner and
model inventory (`planner`, `inventory`), the AlpacaEval judge (`winrate`), and the tables every page and notebook
reads from run records (`analysis`). Imports core, speed and the top-level modules."""
