"""The grid through a real scheduler: each run a submitit job with its resources and dependencies, on a one-node SLURM
cluster started here from the Debian packages (tests/slurm_cluster.py); one job is killed mid-run and requeued by
SLURM, and every run still ends done exactly once. With QLORA_CLUSTER_PROFILE=smoke (`make cluster-test`) the whole
smoke profile goes through the cluster instead of the two-run grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlora_utils.core.records import RunLock, read_json, run_state
from qlora_utils.errors import QLoraError
from qlora_utils.grid.cluster import (
    JOBS_FILE, JobSettings, _slurm_parameters, job_parameters, job_records, queued, submit_profile,
)
from qlora_utils.grid.profiles import load_profile
from qlora_utils.grid.runner import REPO, status

from slurm_cluster import REQUIRE_ENV, local_slurm, missing_tools

WEEK1 = "notebooks/week1_setup.md"  # loads tokenizers and counts data: long enough to be killed mid-run
TINY = "{model: tiny-qwen2, table_presets: [tiny-qwen2], peft_check_presets: [tiny-qwen2], length_sample: 400}"
GRID = f"""profile: grid
cluster: {{cpus_per_run: 1, time_min: 60, mem_cap_gib: 4}}
runs:
  - {{name: first, notebook: {WEEK1}, parameters: {TINY}}}
  - {{name: second, notebook: {WEEK1}, needs: [first], parameters: {TINY}}}
  - {{name: alone, notebook: notebooks/week3_scaling.md, exclusive: true,
     parameters: {{kind: efficiency, preset: tiny-qwen3, mode: nf4, steps: 2, seq_len: 32}}}}
"""


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return path


def test_jobs_ask_for_planned_memory_cores_and_dependencies(tmp_path: Path) -> None:
    profile = load_profile(_grid(tmp_path))
    settings = JobSettings.from_profile(profile)
    assert settings.cpus_per_run == 1 and settings.mem_cap_gib == 4
    first, _, alone = (job_parameters(e, settings) for e in profile.entries)
    assert first == {"name": "first", "timeout_min": 60, "cpus_per_task": 1, "mem_gb": 4}  # no model: the default
    assert alone["slurm_exclusive"] is True and 2 <= alone["mem_gb"] <= 4  # the planner's peak x 1.5 + 2 GiB
    uncapped = job_parameters(profile.entries[2], JobSettings())
    assert uncapped["mem_gb"] == alone["mem_gb"], "a tiny model's plan is under the cap"
    gpu = job_parameters(profile.entries[2], JobSettings(gpus_per_run=1, partition="gpu"))
    assert gpu["gpus_per_node"] == 1 and gpu["slurm_partition"] == "gpu"
    sbatch = _slurm_parameters(alone, ["11", "12"])
    assert sbatch["job_name"] == "alone" and sbatch["mem"].endswith("GB") and sbatch["exclusive"] is True
    assert sbatch["additional_parameters"] == {"dependency": "afterok:11:12", "kill-on-invalid-dep": "yes"}
    with pytest.raises(QLoraError, match=r"unknown cluster settings \['gpus'\]"):
        JobSettings.from_profile(profile, gpus=2)


def test_a_requeued_job_takes_over_the_lock_of_its_earlier_start(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs" / "r"
    lock = RunLock(run)
    lock.path.parent.mkdir(parents=True)
    other = {"pid": 1, "host": "another-node", "since": "earlier"}
    lock.path.write_text(json.dumps({**other, "job": "41"}))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert lock.held(), "another job's lock on another node is respected"
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert not lock.held() and lock.acquire(), "job 41 was requeued: its earlier start's lock is stale"
    assert read_json(lock.path)["job"] == "41"
    lock.release()
    assert not lock.path.exists()


@pytest.mark.slow
def test_the_local_executor_runs_each_job_once(tmp_path: Path, data_dir: Path) -> None:
    profile = load_profile(_grid(tmp_path))
    root = tmp_path / "runs"
    submitted = submit_profile(profile, "local", JobSettings.from_profile(profile), root=root, only=["first"],
                               allow_dirty=True, poll_seconds=0.5)
    assert list(submitted) == ["first"] and run_state(root / "grid" / "first") == "done"
    again = submit_profile(profile, "local", JobSettings.from_profile(profile), root=root, only=["first"],
                           allow_dirty=True, poll_seconds=0.5)
    assert again == {"first": "skipped (done)"}, "a finished run is never submitted again"
    record = job_records(profile, root)["first"]
    assert (root / "grid" / record["stdout"]).is_file() and record["executor"] == "local"


def _log(runs: Path, record: dict[str, str]) -> str:
    path = runs / record["stdout"]
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.fixture()
def slurm(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    if missing := missing_tools():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"SLURM is required here ({REQUIRE_ENV} is set) but {missing} are missing; "
                        "`make cluster-test` installs them")
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing); `make cluster-test` installs and runs it")
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])  # this process's squeue too
        yield env


@pytest.mark.slow
def test_the_grid_survives_a_killed_and_requeued_job_on_slurm(tmp_path: Path, data_dir: Path,
                                                               slurm: dict[str, str]) -> None:
    which = os.environ.get("QLORA_CLUSTER_PROFILE")
    path = REPO / "profiles" / f"{which}.yaml" if which else _grid(tmp_path)
    profile = load_profile(path)
    root = tmp_path / "runs"
    runs = root / profile.name
    env = {**slurm, "QLORA_RUNS_DIR": str(root)}
    command = [sys.executable, "-m", "qlora_utils", "run", str(path), "--executor", "slurm", "--allow-dirty"]
    started = time.monotonic()
    submitter = subprocess.Popen(command + ["--no-wait"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    out, _ = submitter.communicate(timeout=300)
    assert submitter.returncode == 0, out
    records = json.loads((runs / JOBS_FILE).read_text())
    assert list(records) == [e.name for e in profile.entries]
    victim = profile.entries[1].name  # the second run: killed once it is executing, then requeued by SLURM
    job = records[victim]["job"]
    needed = [records[e.name]["job"] for e in profile.entries[:1]] if profile.entries[1].needs else []
    assert records[victim]["after"] == needed
    deadline = time.monotonic() + 600
    while not RunLock(runs / victim).path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert RunLock(runs / victim).path.exists(), f"{victim} never started; log: {_log(runs, records[victim])}"
    time.sleep(3)  # well inside the run: its kernel is executing the notebook
    requeue = subprocess.run(["scontrol", "requeue", job], env=slurm, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    while queued(list(r["job"] for r in records.values())) and time.monotonic() < deadline + 600:
        time.sleep(1)
    elapsed = time.monotonic() - started
    states = dict(status(profile, root))
    assert set(states.values()) == {"done"}, (states, {n: _log(runs, r)[-2000:] for n, r in records.items()})
    victim_log = _log(runs, records[victim])
    assert "start 1" in victim_log and "start 2" in victim_log, victim_log[-3000:]
    for name, record in records.items():
        if name != victim:
            assert "start 2" not in _log(runs, record), f"{name} ran twice"
    finished = {e.name: read_json(runs / e.name / "status.json")["finished"] for e in profile.entries}
    first_started = read_json(runs / profile.entries[1].name / "status.json")["started"]
    if profile.entries[1].needs:
        assert finished[profile.entries[0].name] <= first_started, "a dependency finished before its dependent began"
    shown = subprocess.run([sys.executable, "-m", "qlora_utils", "status", str(path)], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert f"job {job} (slurm), log " in shown.stdout, shown.stdout
    print(f"{len(records)} runs through SLURM in {elapsed:.0f} s, {victim} requeued once")


def test_job_memory_is_the_plan_times_the_margin_plus_overhead(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    import qlora_utils.grid.cluster as cluster
    from qlora_utils.core.adapters import analytic_parameter_count
    from qlora_utils.study.inventory import config_of

    profile = load_profile(_grid(tmp_path))
    alone = profile.entries[2]
    gpu = cluster.planned_memory_gib(alone, gpu=True)  # the host loads 16-bit weights: 2 bytes per parameter
    assert gpu == 2 * analytic_parameter_count(config_of("tiny-qwen3")).total / 1024 ** 3
    monkeypatch.setattr(cluster, "planned_memory_gib", lambda entry, gpu=False: 3.0)
    assert job_parameters(alone, JobSettings())["mem_gb"] == 7  # 3 x 1.5 + 2 = 6.5, rounded up
    assert job_parameters(alone, JobSettings(mem_cap_gib=5))["mem_gb"] == 5


def test_slurm_jobs_depend_on_their_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qlora_utils.grid.cluster as cluster

    class Job:
        def __init__(self, n: int) -> None:
            self.job_id = str(100 + n)
            self.paths = type("P", (), {"stdout": tmp_path / f"{n}.out", "stderr": tmp_path / f"{n}.err"})()

    class Executor:
        count = 0

        def update_parameters(self, **kw) -> None:
            pass

        def submit(self, fn) -> Job:
            Executor.count += 1
            return Job(Executor.count)

    monkeypatch.setattr(cluster, "_executor", lambda kind, folder: Executor())
    profile = load_profile(_grid(tmp_path))
    root = tmp_path / "runs"
    submitted = submit_profile(profile, "slurm", JobSettings.from_profile(profile), root=root, allow_dirty=True,
                               wait=False)
    assert submitted == {"first": "101", "second": "102", "alone": "103"}
    records = job_records(profile, root)
    assert records["second"]["after"] == ["101"] and records["first"]["after"] == [] and records["alone"]["after"] == []
