"""Peak-memory measurement, provenance and the command line."""

from __future__ import annotations

import json
import mmap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qlora_utils.cli import main
from qlora_utils.core.environment import HOST_FLAGS, environment, host_kind
from qlora_utils.locations import atomic_write_json
from qlora_utils.speed.efficiency import PeakMemory


def test_peak_memory_sees_a_transient_allocation() -> None:
    with PeakMemory("alloc", interval=0.005) as mem:
        # a fresh private anonymous mapping: malloc could reuse heap that an earlier test freed but kept resident
        block = mmap.mmap(-1, 300 * 1024 * 1024, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(block, dtype=np.uint8)[::4096] = 1  # touch every page so it is resident
        seen, deadline = mem.samples, time.monotonic() + 10
        while mem.samples < seen + 3 and time.monotonic() < deadline:  # hold the block until the thread sampled it
            time.sleep(0.01)
        block.close()
    assert mem.samples >= 3, "the background sampler never ran"
    assert mem.result["cpu_peak_above_baseline_mib"] >= 250 and mem.result["cpu_total_rss_above_baseline_mib"] >= 250
    assert mem.result["seconds"] > 0 and mem.peak_mib == mem.result["cpu_peak_above_baseline_mib"]


def test_peak_memory_is_above_the_given_baseline_and_tokens_per_second_by_hand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    from qlora_utils.speed import efficiency

    mib = 1024 ** 2
    fake = {"RssAnon": 1000 * mib, "VmRSS": 1500 * mib}  # the process holds 1000 MiB anonymous, 1500 MiB in all
    monkeypatch.setattr(efficiency, "_status_kib", lambda *keys: {k: fake[k] for k in keys if k in fake})
    with PeakMemory("fixed", baseline_rss=400 * mib, baseline_total=900 * mib) as mem:  # before the model loaded
        pass
    assert mem.result["cpu_peak_above_baseline_mib"] == 600.0 == mem.result["cpu_total_rss_above_baseline_mib"]
    assert efficiency.tokens_per_second(300, 1.5) == 200.0 and math.isnan(efficiency.tokens_per_second(300, 0.0))


def test_environment_records_versions_and_hardware() -> None:
    env = environment()
    assert env["versions"]["transformers"] and env["versions"]["bitsandbytes"]
    assert env["hardware"]["cpu_count"] >= 1 and "cuda" in env["hardware"]
    assert env["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability(), \
        "the vector instructions torch's kernels use (AVX2, AVX512, ...): part of what reproduces bitwise"
    if Path("/proc/cpuinfo").is_file():
        assert env["hardware"]["cpu_model"], "the CPU's model is read from /proc/cpuinfo"
        assert set(env["hardware"]["cpu_flags"]) <= set(HOST_FLAGS)


@pytest.mark.parametrize("hardware,kind", [
    ({"cpu_model": "Intel Xeon", "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]},
     "Intel Xeon, AMX"),
    ({"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}, "AMD EPYC, AVX-512 BF16"),
    ({"cpu_model": "AMD EPYC", "cpu_flags": ["avx2"]}, "AMD EPYC, AVX2"),
    ({"cpu_model": "AMD EPYC", "cpu_capability": "AVX2"}, "AMD EPYC, AVX2"),  # a record from before the flags
    ({"platform": "Linux"}, "unrecorded")])
def test_host_kind_names_the_best_vector_instructions(hardware: dict, kind: str) -> None:
    assert host_kind(hardware) == kind


def test_run_refuses_more_cores_than_the_machine_has(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "smoke", "--cores", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cores must be between 1 and" in err[0]


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    import os
    import stat

    from qlora_utils.locations import atomic_write_text

    old = os.umask(0o002)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o664, "as readable as any file under this umask"
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "t.txt", 123)  # type: ignore[arg-type]  # fails mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"], "a failed write leaves nothing behind"


def test_cli_bad_preset_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sst2", "--model", "qwen9-1b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model preset 'qwen9-1b'" in err[0]


@pytest.mark.slow
def test_cli_runs_a_tiny_experiment_end_to_end(tmp_path: Path, data_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sst2", "--model", "tiny-qwen2", "--train-examples", "16", "--eval-examples", "16",
                 "--batch-size", "8", "--scheduler", "cosine", "--no-checkpointing",
                 "--output", str(tmp_path / "run")])
    assert code == 0
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["zero_shot"]["n"] == record["fine_tuned"]["n"] == 16
    assert record["data"]["eval"]["split"] == "validation", "the score is the dev set's"
    assert record["selection"]["n"] == record["data"]["selection"]["records_used"] == 500, "not the dev set's size"
    rows = json.loads((tmp_path / "run" / "generations.json").read_text())
    assert len(rows) == 16 and {r["zero_shot"] for r in rows} <= {0, 1}, "each zero-shot answer kept beside its own"
    assert record["parameters"]["trainable"] > 0 and record["training"]["tokens"] > 0
    assert record["model"]["label"] == "tiny-qwen2 (random weights)"
    assert record["training"]["settings"]["scheduler"] == "cosine"
    assert record["training"]["gradient_checkpointing"] is False
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "history.json").read_text())
    code = main(["sst2", "--model", "tiny-qwen2", "--mode", "full", "--train-examples", "8", "--eval-examples", "8",
                 "--batch-size", "8", "--no-checkpointing", "--output", str(tmp_path / "run")])
    assert code == 0, "a second run into the same folder replaces the first"
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["lora"] is None and record["fine_tuned"]["n"] == 8 and "zero_shot" in record
    assert not (tmp_path / "run" / "adapter").exists(), "nothing of the earlier QLoRA run is left beside it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no staging or old folder left behind"
    assert main(["sst2", "--model", "tiny-qwen2", "--eval-examples", "-1", "--output", str(tmp_path / "x")]) == 2
    assert "eval_examples must be positive" in capsys.readouterr().err


def test_help_and_status_start_without_the_model_stack() -> None:
    """`--help`, `status` and a grid's one-run runners import no torch, transformers or peft (seconds each)."""
    import subprocess
    import sys

    from qlora_utils.grid.runner import REPO

    probe = ("import sys, contextlib, io\nfrom qlora_utils.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    main(['status', 'smoke'])\n"
             "    with contextlib.suppress(SystemExit):\n        main(['--help'])\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_run_only_patterns_add_up_when_the_flag_repeats() -> None:
    from qlora_utils.cli import build_parser

    args = build_parser("run").parse_args(["run", "cpu", "--only", "week7-*", "--only", "week8-report"])
    assert args.only == ["week7-*", "week8-report"], "a repeated --only once kept only its last patterns"
    # --only takes one pattern, so the profile may come before it or after it (it once swallowed a later profile)
    args = build_parser("run").parse_args(["run", "--only", "week7-*", "cpu", "--only", "week8-report"])
    assert (args.profile, args.only) == ("cpu", ["week7-*", "week8-report"])
