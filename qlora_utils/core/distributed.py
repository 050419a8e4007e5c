"""One QLoRA run on several processes through accelerate: `python -m qlora_utils.core.distributed` trains a few SST-2
steps with the project's `training.train` and writes, per process, the per-step losses, what DDP communicated and a
checksum of the trained adapters.
Launched once alone and once with `accelerate launch --num_processes 2` (the same global batch), it shows that the
processes train as one (the same losses) and that only the adapters' gradients travel (every process holds its own
4-bit base). On GPUs, `accelerate launch --config_file qlora_utils/core/accelerate/ddp.yaml` (or fsdp_qlora.yaml) runs
any of the project's experiments the same way."""

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

CONFIGS = Path(__file__).parent / "accelerate"  # ddp.yaml, fsdp_qlora.yaml


class CommunicationCount:
    """A DDP communication hook that counts the gradient elements each step all-reduces (then all-reduces them as
    DDP's default hook does: the sum divided by the number of processes). DDP checks the annotations of a hook
    against the real classes, so this module does without `from __future__ import annotations`."""

    def __init__(self) -> None:
        self.elements: list[int] = []  # per bucket, in order

    def hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        tensor = bucket.buffer()
        self.elements.append(tensor.numel())
        tensor.div_(dist.get_world_size())
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])


def _count_ddp_communication(counter: CommunicationCount) -> None:
    """Register the counter on every DDP model built from now on (the Trainer builds it inside train())."""
    from torch.nn.parallel import DistributedDataParallel

    original = DistributedDataParallel.__init__

    def init(self: "DistributedDataParallel", *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.register_comm_hook(None, counter.hook)

    DistributedDataParallel.__init__ = init  # type: ignore[method-assign]


def train_steps(preset: str, global_batch: int, steps: int, seed: int, output: Path) -> dict[str, Any]:
    """This process's share of a QLoRA run (r = 8 on q, k, v; no dropout; dataset order) of `steps` steps at a
    global batch of `global_batch` sentences; each process writes its record to output/rank{RANK}.json."""
    from transformers import set_seed

    from .adapters import LoraSettings, parameter_report, prepare_for_training
    from .data import load_task
    from .models import load_model
    from .prompts import tokenize_for_training
    from .training import TrainSettings, train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if global_batch % world:
        raise SystemExit(f"the global batch {global_batch} does not split over {world} processes")
    counter = CommunicationCount()
    if world > 1:
        _count_ddp_communication(counter)
    set_seed(seed)
    loaded = load_model(preset, "nf4")
    examples = tokenize_for_training(load_task("sst2", "train", n=global_batch * steps, seed=seed), loaded.tokenizer,
                                     add_eos=False)
    set_seed(seed)
    model = prepare_for_training(loaded, LoraSettings(rank=8, dropout=0.0), gradient_checkpointing=False)
    settings = TrainSettings(batch_size=global_batch // world, max_steps=steps, seed=seed, learning_rate=1e-2,
                             scheduler="constant_with_warmup", group_by_length=False)
    result = train(model, loaded.tokenizer, examples, settings, output / f"rank{rank}", show_progress=False)
    trainable = parameter_report(model).trainable
    record = {"world_size": world, "global_batch": global_batch, "per_process_batch": global_batch // world,
              "losses": result.train_losses(), "trainable_parameters": trainable, "settings": result.settings,
              "communicated_elements": sum(counter.elements), "buckets": len(counter.elements),
              "quantized_layers": sum("Linear4bit" in type(m).__name__ for m in model.modules()),
              "adapter_checksum": sum(float(p.detach().double().abs().sum()) for p in model.parameters()
                                      if p.requires_grad)}
    output.mkdir(parents=True, exist_ok=True)
    (output / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qlora_utils.core.distributed", description=__doc__)
    parser.add_argument("--model", default="tiny-qwen2")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    train_steps(args.model, args.global_batch, args.steps, args.seed, Path(args.output))


if __name__ == "__main__":
    main()
