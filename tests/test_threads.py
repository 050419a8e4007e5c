"""Cores shared by a parallel grid's runs: the split, a run following its file, and a lone run taking freed cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from qlora_utils.grid.profiles import load_profile
from qlora_utils.grid.runner import run_profile
from qlora_utils.speed import threads


def test_cores_are_split_evenly_the_remainder_to_the_earliest_run() -> None:
    assert threads.shares(["a"], 2) == {"a": 2}
    assert threads.shares(["a", "b"], 2) == {"a": 1, "b": 1}
    assert threads.shares(["a", "b", "c"], 16) == {"a": 6, "b": 5, "c": 5}
    assert threads.shares(["a", "b", "c"], 2) == {"a": 1, "b": 1, "c": 1}, "never fewer than one thread"
    assert threads.shares([], 4) == {}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_run_adopts_the_count_written_to_its_file_and_records_the_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    path = tmp_path / "run.threads"
    monkeypatch.setenv(threads.THREADS_FILE_ENV, str(path))
    torch.set_num_threads(1)
    assert threads.follow() == 1, "no file yet: nothing changes"
    threads.assign(path, 2)
    assert threads.follow() == 2 and torch.get_num_threads() == 2
    assert threads.changes()[-1]["threads"] == 2
    path.write_text("lots\n")  # a garbled file is ignored, never fatal
    assert threads.follow() == 2
    threads.assign(path, 1)
    assert threads.follow() == 1


def test_outside_a_grid_follow_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.THREADS_FILE_ENV, raising=False)
    assert threads.follow() == torch.get_num_threads()


SHORT_RUN = """
import json, sys, time
from pathlib import Path
from qlora_utils.core.records import mark_finished, mark_started
run_dir, notebook, parameters = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
state = mark_started(run_dir, notebook, parameters, "ptest")
time.sleep(0.5)
(run_dir / "notebook.ipynb").write_text("{}")
(run_dir / "metrics.json").write_text("{}")
mark_finished(run_dir, state, started)
"""

FOLLOWING_RUN = """
import json, os, sys, time
from pathlib import Path
from qlora_utils.core.records import mark_finished, mark_started
from qlora_utils.speed.threads import follow
run_dir, notebook, parameters = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
state = mark_started(run_dir, notebook, parameters, "ptest")
seen, deadline = [], time.time() + 60
while time.time() < deadline:  # a training loop calls follow() between steps
    threads = follow()
    if not seen or seen[-1] != threads:
        seen.append(threads)
    if threads == 4:
        break
    time.sleep(0.05)
(run_dir / "notebook.ipynb").write_text("{}")
(run_dir / "metrics.json").write_text(json.dumps({"seen": seen, "started_with": os.environ["OMP_NUM_THREADS"]}))
mark_finished(run_dir, state, started)
"""


@pytest.mark.slow
def test_a_run_left_alone_takes_the_cores_the_finished_run_freed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import qlora_utils.grid.runner as runner

    root = tmp_path / "runs"
    monkeypatch.setattr(runner, "runner_command", lambda profile, entry, force, allow_dirty: [
        sys.executable, "-c", SHORT_RUN if entry.name == "short" else FOLLOWING_RUN,
        str(root / profile.name / entry.name), entry.notebook, json.dumps(entry.parameters)])
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(runner.tempfile, "tempdir", str(tmp_path))  # where the runner keeps the thread files
    path = tmp_path / "ptest.yaml"
    notebook = "    notebook: notebooks/week1_setup.md\n"  # not an analysis, which would wait for the other
    path.write_text(f"profile: ptest\ndescription: t\nruns:\n  - name: short\n{notebook}  - name: long\n{notebook}")
    results = run_profile(load_profile(path), root=root, jobs=2, validate=False, allow_dirty=True)
    assert results == {"short": "done", "long": "done"}
    record = json.loads((root / "ptest" / "long" / "metrics.json").read_text())
    assert record["started_with"] == "2", "two runs at once: half the cores each"
    assert record["seen"][-1] == 4, f"alone, it should have taken all four cores; it saw {record['seen']}"
    assert not list(tmp_path.glob("qlora-threads-*")), "the thread files are removed with the grid"


def test_recorded_changes_are_made_again_at_the_same_calls(monkeypatch: pytest.MonkeyPatch,
                                                           restore_threads: None) -> None:
    monkeypatch.delenv(threads.THREADS_FILE_ENV, raising=False)
    monkeypatch.setattr(threads, "_calls", 0)
    torch.set_num_threads(1)
    monkeypatch.setenv(threads.REPLAY_ENV, json.dumps([{"call": 3, "threads": 2}, {"call": 5, "threads": 1}]))
    assert [threads.follow() for _ in range(6)] == [1, 1, 2, 2, 1, 1]
    assert [(c["call"], c["threads"]) for c in threads.changes()[-2:]] == [(3, 2), (5, 1)]


def _steps(file: Path | None, free_after: int | None) -> list[torch.Tensor]:
    """Four SGD steps of QLoRA on tiny-qwen2 (8 random sequences of 128 tokens, bf16 autocast) from one thread,
    calling `follow` before each step as the Trainer's callback does; with free_after, the grid's runner hands the
    run a second core after that step (through its thread file), as when the other run of a --jobs 2 grid ends."""
    from qlora_utils.core.adapters import LoraSettings, prepare_for_training
    from qlora_utils.core.models import load_model

    torch.set_num_threads(1)
    threads._calls = 0
    torch.manual_seed(0)
    model = prepare_for_training(load_model("tiny-qwen2", "nf4"), LoraSettings(rank=8, dropout=0.0),
                                 gradient_checkpointing=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    ids = torch.randint(0, model.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(1))
    outputs = []
    for step in range(4):
        threads.follow()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        outputs.append(torch.cat([loss.detach().float()[None]] + [p.grad.flatten().float() for p in trainable]))
        optimizer.step()
        optimizer.zero_grad()
        if file is not None and step + 1 == free_after:
            threads.assign(file, 2)
    return outputs


@pytest.mark.slow
def test_a_run_whose_thread_count_changed_is_reproduced_exactly_by_replaying_the_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    """On CPUs where one and two threads round differently (AMX hosts do), the numbers of a grid's run depend on when
    it was given freed cores; replaying the recorded changes at the same calls gives bitwise the same losses and
    gradients at every step."""
    file = tmp_path / "run.threads"
    threads.assign(file, 1)
    monkeypatch.setenv(threads.THREADS_FILE_ENV, str(file))
    monkeypatch.setattr(threads, "_changes", [])
    grid = _steps(file, free_after=2)
    changes = threads.changes()
    assert [(c["call"], c["threads"]) for c in changes] == [(3, 2)], "the run took the freed core before step 3"
    monkeypatch.delenv(threads.THREADS_FILE_ENV)
    monkeypatch.setenv(threads.REPLAY_ENV, json.dumps(changes))
    monkeypatch.setattr(threads, "_changes", [])
    replayed = _steps(None, free_after=None)
    assert all(torch.equal(a, b) for a, b in zip(grid, replayed)), "the replayed run computed something else"
    assert threads.changes()[0]["call"] == 3
    monkeypatch.delenv(threads.REPLAY_ENV)
    fixed = _steps(None, free_after=None)  # one thread throughout: on some CPUs other numbers from step 3 on
    print("one thread throughout " + ("equals" if all(torch.equal(a, b) for a, b in zip(grid, fixed)) else
                                      "differs from") + " the run that took a second core")
    assert grid[-1][0] < grid[0][0], "the steps really train"
