"""One QLoRA run on two processes (accelerate launch, DDP over gloo on CPU) trains as one process with the same global
batch: the same per-step losses within 1e-3 (relative), the same adapters on both processes, and only the adapters'
gradients communicated (each process keeps its own 4-bit base). And the FSDP launch stores 4-bit weights in bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from qlora_utils.core.distributed import CONFIGS
from qlora_utils.core.models import quantization_config
from qlora_utils.grid.runner import REPO

LOSS_TOLERANCE = 1e-3  # relative, per step: gloo sums in another order than one process does


def _launch(command: list[str], output: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command + ["-m", "qlora_utils.core.distributed", "--output", str(output)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path: Path, data_dir: Path) -> None:
    _launch([sys.executable], tmp_path / "one")
    accelerate = str(Path(sys.executable).with_name("accelerate"))  # torchrun underneath; gloo on CPU
    _launch([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "two")
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    two = ranks[0]
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["per_process_batch"] == 4
    assert len(one["losses"]) == len(two["losses"]) == 4
    worst = max(abs(a - b) / b for a, b in zip(two["losses"], one["losses"]))
    print(f"losses one process {one['losses']}, two {two['losses']}: at most {worst:.2e} apart (relative)")
    assert worst <= LOSS_TOLERANCE
    assert one["losses"][-1] < one["losses"][0], "the loss falls: the steps really train"
    assert ranks[0]["adapter_checksum"] == ranks[1]["adapter_checksum"], "both processes hold the same adapters"
    assert abs(two["adapter_checksum"] - one["adapter_checksum"]) / one["adapter_checksum"] <= LOSS_TOLERANCE
    assert two["quantized_layers"] > 0, "each process holds a 4-bit base"
    assert two["communicated_elements"] == 4 * two["trainable_parameters"], "only adapter gradients, once a step"
    assert one["communicated_elements"] == 0
    lean = ("head_on_labels_only", "share_prefix")  # the record says which loss ran: lean alone, plain under DDP
    assert all(one["settings"][k] for k in lean) and not any(two["settings"][k] for k in lean)


def test_the_fsdp_launch_stores_4bit_weights_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quantization_config("nf4").bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp_qlora.yaml sets
    assert quantization_config("nf4").bnb_4bit_quant_storage == torch.bfloat16
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("ddp.yaml", "fsdp_qlora.yaml"):  # accelerate itself reads them
        assert load_config_from_file(str(CONFIGS / name)).num_processes == 2
    fsdp = yaml.safe_load((CONFIGS / "fsdp_qlora.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_use_orig_params"] is True
    assert yaml.safe_load((CONFIGS / "ddp.yaml").read_text())["distributed_type"] == "MULTI_GPU"
