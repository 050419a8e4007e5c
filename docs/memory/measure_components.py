"""Memory by component of QLoRA (nf4), 16-bit LoRA (bf16) and full fine-tuning on one model: each mode an
efficiency run (`run_efficiency`: the Trainer for a few steps, then one profiled forward/backward) in its own
process, so that every resident-set figure starts from a fresh process. Writes the records' `memory_table` and the
planner's `component_rows` to a JSON file.

    python docs/memory/measure_components.py PRESET OUT.json [--modes nf4 bf16 full] [--batch 16 --seq 64 --steps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ONE_MODE = """
import json, sys
from qlora_utils.core.adapters import LoraSettings
from qlora_utils.study.experiments import EfficiencyRun, run_efficiency
preset, mode, batch, seq, steps, out = sys.argv[1:7]
run = EfficiencyRun(preset=preset, mode=mode, lora=None if mode == "full" else LoraSettings(), batch_size=int(batch),
                    seq_len=int(seq), steps=int(steps), gradient_checkpointing=False, optim="paged_adamw_32bit")
run_efficiency(run, out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("out")
    parser.add_argument("--modes", nargs="+", default=["nf4", "bf16", "full"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    from qlora_utils.core.memory import memory_table
    from qlora_utils.study.planner import component_rows

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            folder = Path(tmp) / mode
            subprocess.run([sys.executable, "-c", ONE_MODE, args.preset, mode, str(args.batch), str(args.seq),
                            str(args.steps), str(folder)], check=True)
            records.append(json.loads((folder / "metrics.json").read_text()))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result = {"preset": args.preset, "shape": {"batch_size": args.batch, "seq_len": args.seq, "steps": args.steps,
                                               "gradient_checkpointing": False},
              "host": {"cpu": cpu, "cuda": records[0]["memory_components"]["step"]["peak"]["method"]},
              "table_mib": memory_table(records),
              "planner": {r["model"]["mode"]: component_rows(r) for r in records},
              "records": [{k: r[k] for k in ("model", "parameters", "training", "load_memory", "memory_components")}
                          for r in records]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for row in result["table_mib"]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
