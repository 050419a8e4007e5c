"""The grid on a cluster scheduler, through submitit: every entry of a profile becomes one job that runs the same
one-entry runner as `run --jobs` (so status, resume, the per-run lock and "never twice" mean the same on every node),
with its resources (CPUs, GPUs, memory from the memory planner with a margin, a time limit), its `needs` as job
dependencies and `exclusive` as a whole-node request. `local` runs the jobs as local processes (submitit's local
executor); `slurm` submits them with sbatch."""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ..core.design import MODES, PLAN_ADAPTERS
from ..core.records import RUNS_ENV, read_json, run_state
from ..errors import QLoraError
from ..locations import atomic_write_json
from .profiles import (Entry, JobSettings, Profile, notebook_parameters, pattern_match, prerequisites,
                       validate_profile)
from .runner import RunFailed, check_committed, check_inputs, runner_command, skip_reason, thread_environment

EXECUTORS = ("local", "slurm")
JOBS_FILE = ".jobs.json"  # in the profile's runs folder: run name -> the job that runs it and its logs
JOBS_FOLDER = ".jobs"  # submitit's pickles and per-job logs, beside the runs they produce
GiB = 1024 ** 3


def planned_memory_gib(entry: Entry, gpu: bool = False) -> float | None:
    """The host memory an entry that trains a preset needs, from the memory planner (None for analyses and win
    rates): on CPU the planner's predicted training peak at the entry's longest sequence; with a GPU, which holds
    the training, the 16-bit weights the host loads before moving them there."""
    from ..core.adapters import LoraSettings  # the model stack: imported only when memory is planned
    from ..study.inventory import config_of

    values = {name: _literal(spec.get("default")) for name, spec in notebook_parameters(entry.notebook).items()}
    values.update(entry.parameters)
    preset, mode = values.get("preset") or values.get("model"), values.get("mode")
    if values.get("kind") in ("winrates", "bench") or not isinstance(preset, str) or mode not in MODES:
        return None
    from ..core.adapters import analytic_parameter_count
    from ..study.planner import plan_memory

    if gpu:
        return 2.0 * analytic_parameter_count(config_of(preset)).total / GiB
    lora = None if mode == "full" else LoraSettings(rank=int(values.get("rank") or PLAN_ADAPTERS["rank"]),
                                                    placement=values.get("placement") or PLAN_ADAPTERS["placement"])
    seq_len = int(values.get("max_length") or values.get("seq_len") or 512)
    plan = plan_memory(config_of(preset), mode, lora, int(values.get("batch_size") or 1), seq_len,
                       bool(values.get("gradient_checkpointing", True)))
    return plan.total / GiB


def _literal(source: Any) -> Any:
    """A notebook default as papermill reports it (the source text) turned into its value (None if not a literal)."""
    import ast

    try:
        return ast.literal_eval(source) if isinstance(source, str) else source
    except (ValueError, SyntaxError):
        return None


def job_parameters(entry: Entry, settings: JobSettings) -> dict[str, Any]:
    """submitit's parameters for one entry's job: name, CPUs, GPUs, memory, time limit, whole node if exclusive."""
    planned = planned_memory_gib(entry, gpu=settings.gpus_per_run > 0)
    mem = settings.mem_default_gib if planned is None else planned * settings.mem_margin + settings.mem_overhead_gib
    if settings.mem_cap_gib:
        mem = min(mem, settings.mem_cap_gib)
    parameters: dict[str, Any] = {"name": entry.name, "timeout_min": settings.time_min,
                                  "cpus_per_task": settings.cpus_per_run, "mem_gb": math.ceil(mem)}
    if settings.gpus_per_run:
        parameters["gpus_per_node"] = settings.gpus_per_run
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if entry.exclusive:
        parameters["slurm_exclusive"] = True
    return parameters


class RunJob:
    """One job: the one-entry runner in a child process with the job's CPUs as its threads. Checkpointable: when
    the scheduler preempts or times it out, submitit requeues it, and the runner restarts the unfinished run cleanly
    (a finished one is skipped; the run lock keeps two starts of it from overlapping)."""

    def __init__(self, profile_path: str, name: str, runs_root: str, allow_dirty: bool = False) -> None:
        self.profile_path, self.name, self.runs_root, self.allow_dirty = profile_path, name, runs_root, allow_dirty

    def __call__(self) -> str:
        from .profiles import load_profile

        profile = load_profile(self.profile_path)
        entry = next(e for e in profile.entries if e.name == self.name)
        threads = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or "1"
        env = {**thread_environment(int(threads)), RUNS_ENV: self.runs_root}
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[qlora_utils] job for run {self.name}: start {int(restarts) + 1}, {threads} thread(s)", flush=True)
        done = subprocess.run(runner_command(profile, entry, False, self.allow_dirty), env=env)
        state = run_state(profile.runs_dir(Path(self.runs_root)) / self.name, entry.config_hash)
        if done.returncode != 0 or state not in ("done", "running"):
            raise RunFailed(f"run {self.name!r} ended {state} (runner exit {done.returncode})")
        return state

    def checkpoint(self) -> Any:
        """Requeue this same job (submitit calls it on preemption or timeout)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _executor(kind: str, folder: Path) -> Any:
    from shutil import which

    import submitit

    if kind not in EXECUTORS:
        raise QLoraError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}")
    if kind == "slurm":
        missing = [tool for tool in ("sbatch", "squeue") if not which(tool)]
        if missing:
            raise QLoraError(f"--executor slurm needs SLURM's {' and '.join(missing)} on PATH; run on a login node of "
                             "the cluster (or `make cluster-test` for a local one-node cluster)")
        return submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=3)
    return submitit.LocalExecutor(folder=folder / "%j")


def _slurm_parameters(parameters: dict[str, Any], after: list[str]) -> dict[str, Any]:
    """submitit's generic names turned into SlurmExecutor's, with the dependencies."""
    renamed = {"name": "job_name", "timeout_min": "time", "mem_gb": "mem", "slurm_partition": "partition",
               "slurm_exclusive": "exclusive", "gpus_per_node": "gpus_per_node"}
    out = {renamed.get(k, k): v for k, v in parameters.items()}
    out["mem"] = f"{out['mem']}GB"
    extra = {"kill-on-invalid-dep": "yes"}
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
    out["additional_parameters"] = extra
    return out


def submit_profile(profile: Profile, executor: str, settings: JobSettings, root: Path | None = None,
                   only: list[str] | None = None, allow_dirty: bool = False, wait: bool = True,
                   poll_seconds: float = 2.0) -> dict[str, str]:
    """Submit every entry that is not done and current as a job; returns run name -> job id (or why it was not
    submitted). With wait, returns once every job has left the queue; the runs' states say how they ended."""
    check_committed(allow_dirty)
    validate_profile(profile)
    entries = [e for e in profile.entries if not only or any(pattern_match(e.name, p) for p in only)]
    if only and not entries:
        raise QLoraError(f"no run of profile {profile.name!r} matches {only}")
    check_inputs(entries)
    runs_dir = profile.runs_dir(root)
    runs_root = runs_dir.parent.resolve()
    folder = runs_dir / JOBS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    submitted: dict[str, str] = {}
    jobs: dict[str, Any] = {}
    records = read_json(runs_dir / JOBS_FILE) or {}
    for entry in entries:
        if skipped := skip_reason(profile, entry, root, force=False):
            submitted[entry.name] = skipped
            continue
        after = [jobs[n.name].job_id for n in prerequisites(profile, entry) if n.name in jobs]
        parameters = job_parameters(entry, settings)
        job_executor = _executor(executor, folder)
        if executor == "slurm":
            job_executor.update_parameters(**_slurm_parameters(parameters, after))
        else:
            _wait_local([jobs[n.name] for n in prerequisites(profile, entry) if n.name in jobs], poll_seconds)
            _wait_local(list(jobs.values()), poll_seconds, keep=settings.local_jobs - 1)
            job_executor.update_parameters(timeout_min=settings.time_min)
        job = job_executor.submit(RunJob(str(profile.path.resolve()), entry.name, str(runs_root), allow_dirty))
        jobs[entry.name] = job
        submitted[entry.name] = str(job.job_id)
        records[entry.name] = {"job": str(job.job_id), "executor": executor, "resources": parameters,
                               "after": after, "stdout": _relative(job.paths.stdout, runs_dir),
                               "stderr": _relative(job.paths.stderr, runs_dir)}
        atomic_write_json(runs_dir / JOBS_FILE, records)
    if wait:
        if executor == "slurm":
            _wait_slurm([j.job_id for j in jobs.values()], poll_seconds)
        else:
            _wait_local(list(jobs.values()), poll_seconds)
    return submitted


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def _wait_local(jobs: list[Any], poll_seconds: float, keep: int = 0) -> None:
    """Until at most `keep` of the local jobs are still running."""
    while sum(not j.done() for j in jobs) > max(keep, 0):
        time.sleep(poll_seconds)


def queued(job_ids: list[str]) -> list[str]:
    """The jobs among job_ids that SLURM still has queued or running (squeue; needs no accounting database)."""
    if not job_ids:
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)  # not -j: one finished id
    if out.returncode != 0:  # there makes squeue fail for all
        raise QLoraError(f"squeue failed: {out.stderr.strip()}")
    listed = {line.strip() for line in out.stdout.splitlines()}
    return [job for job in job_ids if job in listed]


def _wait_slurm(job_ids: list[str], poll_seconds: float) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(job_ids), desc="jobs", unit="job")
    while remaining := queued(job_ids):
        bar.n = len(job_ids) - len(remaining)
        bar.refresh()
        time.sleep(poll_seconds)
    bar.n = len(job_ids)
    bar.close()


def job_records(profile: Profile, root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Run name -> its latest job (id, executor, resources, log paths relative to the runs folder), for `status`."""
    return read_json(profile.runs_dir(root) / JOBS_FILE) or {}


def describe(record: dict[str, Any]) -> str:
    """One job, for `status`: its id and where its log is."""
    return f"job {record['job']} ({record['executor']}), log {record['stdout']}"

