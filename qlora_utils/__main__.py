"""Command line: `python -m qlora_utils sst2 ...` fine-tunes and evaluates on SST-2 and prints the figures."""

from __future__ import annotations

import argparse
import json
import sys

from .adapters import PLACEMENTS, LoraSettings
from .errors import QLoraError
from .experiments import Sst2Experiment, run_sst2
from .models import MODES
from .training import TrainSettings


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m qlora_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sst2 = sub.add_parser("sst2", help="fine-tune on SST-2 and report accuracy before/after, memory and throughput")
    sst2.add_argument("--model", default="smollm2-135m-instruct", help="model preset name")
    sst2.add_argument("--mode", default="nf4", choices=MODES)
    sst2.add_argument("--rank", type=int, default=8)
    sst2.add_argument("--alpha", type=int, default=16)
    sst2.add_argument("--dropout", type=float, default=0.1)
    sst2.add_argument("--placement", default="attention", choices=sorted(PLACEMENTS))
    sst2.add_argument("--train-examples", type=int, default=1000)
    sst2.add_argument("--eval-examples", type=int, default=None, help="default: all 872 dev sentences")
    sst2.add_argument("--lr", type=float, default=1e-3)
    sst2.add_argument("--batch-size", type=int, default=16)
    sst2.add_argument("--epochs", type=float, default=1.0)
    sst2.add_argument("--seed", type=int, default=0)
    sst2.add_argument("--data-dir", default=None, help="local data directory (default: $QLORA_DATA_DIR, else the Hub)")
    sst2.add_argument("--output", default="runs/adhoc/sst2", help="folder for metrics.json, history.json, adapter")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad inputs end with one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sst2":
            lora = None if args.mode == "full" else LoraSettings(args.rank, args.alpha, args.dropout, args.placement)
            exp = Sst2Experiment(preset=args.model, mode=args.mode, lora=lora, train_examples=args.train_examples,
                                 eval_examples=args.eval_examples, data_dir=args.data_dir,
                                 train=TrainSettings(learning_rate=args.lr, batch_size=args.batch_size,
                                                     epochs=args.epochs, seed=args.seed))
            record = run_sst2(exp, args.output)
            print(json.dumps(_headline(record), indent=2))
    except QLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _headline(record: dict) -> dict:
    training = record["training"]
    return {"model": record["model"]["label"], "mode": record["model"]["mode"], "lora": record["lora"],
            "zero_shot_accuracy": record.get("zero_shot", {}).get("accuracy"),
            "fine_tuned_accuracy": record["fine_tuned"]["accuracy"], "eval_sentences": record["fine_tuned"]["n"],
            "trainable_parameters": record["parameters"]["trainable"],
            "trainable_percent": round(record["parameters"]["percent"], 4),
            "train_tokens_per_second": training["tokens_per_second"], "train_seconds": training["seconds"],
            "train_peak_memory": training["memory"], "optimizer": training["optimizer"],
            "wall_seconds": record["wall_seconds"]}


if __name__ == "__main__":
    sys.exit(main())
