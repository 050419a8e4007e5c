"""Run directories: one per experiment, the unit of truth the book reads.

A run directory holds config.json (notebook, parameters, hash), status.json (running / done / failed, wall time),
env.json (versions, hardware, git commit), the executed notebook.ipynb, and what the notebook records through
`RunRecorder`: metrics.json, history.json, generations.json, selection.json. Every file is written atomically.

Beside each run directory NAME live `.NAME.lock` (held, with O_EXCL, by the one process executing it) and
`.NAME.staging` (the attempt in progress, or the last failed one): an attempt replaces NAME only once it has
finished, so a failed or interrupted attempt never destroys a finished run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection

from ..locations import REPO, RUNS_ENV, atomic_write_json
from ..scrub import absolute_paths, scrub
from .environment import environment, speed_probe

UNCOMMITTED = "uncommitted.diff"  # what a run made with --allow-dirty ran beyond its commit
STATES = ("done", "running", "stale", "failed", "interrupted", "partial", "corrupt", "missing", "planned")
REQUIRED = ("config.json", "env.json", "status.json", "notebook.ipynb", "metrics.json")  # a finished run has these
OPTIONAL = ("history.json", "generations.json", "selection.json")  # and these parse when present


def _alive(pid: Any) -> bool:
    """Whether a process of this machine with that id is still alive."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def profile_runs_dir(profile: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The one place a profile's run directories live: root, else $QLORA_RUNS_DIR, else runs/, then the profile."""
    return Path(root or os.environ.get(RUNS_ENV) or REPO / "runs") / profile


def config_hash(notebook: str, parameters: dict[str, Any]) -> str:
    """A short, stable hash of what defines a run: its notebook and parameters (not the notebook's prose)."""
    canonical = json.dumps({"notebook": notebook, "parameters": parameters}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def staging_dir(run_dir: Path) -> Path:
    """Where an attempt at a run executes before it replaces the run directory."""
    return run_dir.parent / f".{run_dir.name}.staging"


def corruption(run_dir: Path) -> list[str]:
    """What is missing or unreadable among the files a finished run must have (empty when it is whole)."""
    problems = []
    for name in REQUIRED + OPTIONAL:
        path = run_dir / name
        if not path.is_file():
            if name in REQUIRED:
                problems.append(f"{name} is missing")
        elif read_json(path) is None:
            problems.append(f"{name} is not valid JSON")
    return problems


def run_state(run_dir: Path, expected_hash: str | None = None) -> str:
    """done, running (a live process holds its lock), stale (done with another configuration), failed,
    interrupted, partial (started and killed, never finished), corrupt (a finished run's files are missing or
    unreadable) or missing. A finished run is verified, not trusted."""
    if RunLock(run_dir).held():
        return "running"
    if not run_dir.is_dir():
        attempt = read_json(staging_dir(run_dir) / "status.json")
        if attempt is None:
            return "partial" if staging_dir(run_dir).is_dir() else "missing"
        return attempt.get("state") if attempt.get("state") in ("failed", "interrupted") else "partial"
    status = read_json(run_dir / "status.json")
    if status is None:
        return "corrupt" if any(run_dir.iterdir()) else "missing"
    state = status.get("state")
    if state == "done":
        if corruption(run_dir):
            return "corrupt"
        if expected_hash is not None and status.get("config_hash") != expected_hash:
            return "stale"
        return "done"
    return state if state in ("failed", "interrupted") else "partial"


SCHEDULER_JOB_ENV = "SLURM_JOB_ID"  # set by the scheduler in every process of a job, kept when it is requeued


class RunLock:
    """The right to execute one run: a lock file created with O_EXCL beside the run directory, holding the pid and
    host of its owner (and its scheduler job). A lock whose owner died on this host is stale and taken over, and so
    is one held by an earlier start of the scheduler job now running (requeued, perhaps onto another node)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir).parent / f".{Path(run_dir).name}.lock"
        self.owned = False

    def holder(self) -> dict[str, Any] | None:
        """The lock's owner (pid, host, since), or None when nobody holds it."""
        if not self.path.is_file():
            return None
        info = read_json(self.path)
        if info is None:  # being written right now, or left half-written by a process killed at that instant
            try:
                young = time.time() - self.path.stat().st_mtime < 10
            except OSError:
                return None
            return {"pid": None, "host": None, "since": "just now"} if young else None
        if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
            return None  # stale: its owner died
        job = os.environ.get(SCHEDULER_JOB_ENV)
        if job and info.get("job") == job and not self._mine(info):
            return None  # stale: this job was requeued, and the start that took the lock is gone with the old node
        return info

    @staticmethod
    def _mine(info: dict[str, Any]) -> bool:
        return info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()

    def held(self) -> bool:
        """Whether another live process holds the lock (not this one)."""
        holder = self.holder()
        return holder is not None and not self._mine(holder)

    def acquire(self) -> bool:
        """Take the lock atomically; False when a live process holds it. Stale locks are taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.holder() is not None:
                    return False
                self.path.unlink(missing_ok=True)  # stale: remove and try again
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
                           "job": os.environ.get(SCHEDULER_JOB_ENV)}, handle)
            self.owned = True
            return True
        return False

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self.owned and (read_json(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.owned = False

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def replace_run(staging: Path, run_dir: Path) -> None:
    """Put a finished attempt in the place of the run directory: the old one is moved aside first and deleted only
    after the new one is in place (a crash in between leaves both, and `recover` puts the right one back)."""
    old = run_dir.parent / f".{run_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if run_dir.exists():
        run_dir.rename(old)
    staging.rename(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def recover(run_dir: Path) -> None:
    """Finish a replacement that a crash interrupted (call while holding the run's lock)."""
    old, staging = run_dir.parent / f".{run_dir.name}.old", staging_dir(run_dir)
    if run_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        return
    if (read_json(staging / "status.json") or {}).get("state") == "done" and not corruption(staging):
        staging.rename(run_dir)
    elif old.exists():
        old.rename(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def mark_started(run_dir: Path, notebook: str, parameters: dict[str, Any], profile: str,
                 group: str | None = None) -> dict[str, Any]:
    """Write config.json, env.json (with the machine's speed now: `environment.speed_probe`) and a 'running' status
    before a run starts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(notebook, parameters)
    config = {"run": run_dir.name, "profile": profile, "notebook": notebook, "parameters": parameters,
              "config_hash": digest, "seed": parameters.get("seed"), "group": group}
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "env.json", {**environment(), "speed": speed_probe()})
    status = {"state": "running", "config_hash": digest, "started": now(), "pid": os.getpid()}
    atomic_write_json(run_dir / "status.json", status)
    return status


ERROR_CHARS = 2000  # how much of a failure's text status.json keeps


def clip_error(text: str, limit: int = ERROR_CHARS) -> str:
    """A failure's text cut to about `limit` characters: its first line (the cause `status` shows) and its end (the
    innermost frames), never the first line lost to a long traceback."""
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][: limit // 4]
    return f"{head}\n[…]\n{text[-(limit - len(head) - 5):]}"


def mark_finished(run_dir: Path, status: dict[str, Any], started: float, error: str | None = None,
                  interrupted: bool = False) -> None:
    """Close a run's status as done, failed or interrupted (reported as partial), with its wall time."""
    state = "interrupted" if interrupted else "failed" if error else "done"
    status = {**status, "state": state, "finished": now(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    status.pop("pid", None)
    if error:
        status["error"] = clip_error(scrub(error))
    atomic_write_json(run_dir / "status.json", status)


@dataclass
class RunRecorder:
    """What a notebook calls to record its results into its run directory (atomic JSON files)."""

    run_dir: Path = field(default_factory=lambda: Path("."))  # created by the first write: a run that fails before
    # it records anything leaves no empty folder behind

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    def metrics(self, metrics: dict[str, Any]) -> None:
        """Write metrics.json (merged with what is already there)."""
        existing = read_json(self.run_dir / "metrics.json") or {}
        atomic_write_json(self.run_dir / "metrics.json", {**existing, **metrics})

    def history(self, history: list[dict[str, Any]]) -> None:
        """Write history.json: the per-step training log."""
        atomic_write_json(self.run_dir / "history.json", history)

    def generations(self, generations: list[dict[str, Any]]) -> None:
        """Write generations.json: model outputs kept for reading and error analysis."""
        atomic_write_json(self.run_dir / "generations.json", generations)

    def selection(self, predictions: list[dict[str, Any]]) -> None:
        """Write selection.json: per-sentence predictions on the selection split (zero-shot beside fine-tuned)."""
        atomic_write_json(self.run_dir / "selection.json", predictions)


@dataclass
class Run:
    """A finished or unfinished run directory, read back."""

    path: Path
    config: dict[str, Any]
    status: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parameters(self) -> dict[str, Any]:
        return self.config.get("parameters", {})

    @property
    def group(self) -> str | None:
        """The profile's group of the run (e.g. "sweep"), or None."""
        return self.config.get("group")

    @property
    def commit(self) -> str | None:
        """The commit of the code that produced the run ('+dirty' when it ran with uncommitted changes)."""
        return self.env.get("git_commit")

    @property
    def hardware(self) -> dict[str, Any]:
        """The machine the run started on (env.json), with the thread-count changes it made (its final record)."""
        end = (self.metrics.get("environment") or {}).get("hardware") or {}
        return {**(self.env.get("hardware") or {}), "thread_changes": end.get("thread_changes") or []}

    @property
    def notebook(self) -> str:
        """The notebook that produced the run (repository-relative path)."""
        return self.config.get("notebook", "")

    def history(self) -> list[dict[str, Any]]:
        """The per-step training history (empty if none was recorded)."""
        return read_json(self.path / "history.json") or []

    def generations(self) -> list[dict[str, Any]]:
        """Recorded generations (empty if none)."""
        return read_json(self.path / "generations.json") or []

    def selection(self) -> list[dict[str, Any]]:
        """Per-sentence predictions on the selection split (empty if none were recorded)."""
        return read_json(self.path / "selection.json") or []


def read_run(path: Path) -> Run:
    """Read one run directory."""
    return Run(path, read_json(path / "config.json") or {}, read_json(path / "status.json") or {},
               read_json(path / "metrics.json") or {}, read_json(path / "env.json") or {})


def read_runs(profile_dir: Path, notebook: str | None = None, done_only: bool = True) -> list[Run]:
    """Every run of a profile (optionally only those of one notebook), sorted by name."""
    runs = []
    for path in sorted(p for p in Path(profile_dir).iterdir() if p.is_dir()) if Path(profile_dir).is_dir() else []:
        run = read_run(path)
        if done_only and run.status.get("state") != "done":
            continue
        if notebook is not None and Path(run.notebook).stem != Path(notebook).stem:
            continue
        runs.append(run)
    return runs


def summed_seconds(runs: list[Run]) -> float:
    """The runs' recorded wall times added up (runs that overlapped count in full)."""
    return sum(r.status.get("wall_seconds", 0) for r in runs)


def _intervals(runs: list[Run]) -> list[tuple[datetime, datetime]]:
    """(started, finished) of every run that recorded both, earliest start first."""
    return sorted((datetime.fromisoformat(r.status["started"]), datetime.fromisoformat(r.status["finished"]))
                  for r in runs if r.status.get("started") and r.status.get("finished"))


def span_seconds(runs: list[Run]) -> float:
    """Seconds from the first run's start to the last run's finish: busy time plus every pause in between."""
    spans = _intervals(runs)
    return (max(end for _, end in spans) - spans[0][0]).total_seconds() if spans else 0.0


def packing_floor_seconds(runs: list[Run], exclusive: Collection[str], jobs: int) -> float:
    """The least elapsed time in which `jobs` runs at a time could finish these runs at their recorded wall times,
    however scheduled: the `exclusive` ones (by name) one after another, the rest `jobs` at once and none faster
    than its own wall time."""
    shared = [r for r in runs if r.name not in exclusive]
    longest = max((r.status.get("wall_seconds", 0) for r in shared), default=0.0)
    return summed_seconds([r for r in runs if r.name in exclusive]) + max(summed_seconds(shared) / jobs, longest)


def busy_seconds(runs: list[Run]) -> float:
    """Wall-clock seconds during which at least one of the runs was executing (overlapping runs count once): the
    grid's elapsed time without the pauses between sessions."""
    spans = _intervals(runs)
    total, current = 0.0, None
    for start, end in spans:
        if current and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current:
            total += (current[1] - current[0]).total_seconds()
        current = (start, end)
    return total + ((current[1] - current[0]).total_seconds() if current else 0.0)


TEXT_SUFFIXES = (".json", ".ipynb", ".diff", ".yaml", ".yml", ".csv", ".txt", ".md")  # what is searched for paths


def provenance_problems(run: Run) -> list[str]:
    """What keeps a finished run from being reproducible from a commit: code outside a commit, a commit that differs
    between its files, a machine path in any of its files."""
    problems = []
    commit = run.commit
    if not commit:
        problems.append("records no commit")
    elif commit.endswith("+dirty"):
        diff = run.path / UNCOMMITTED
        problems.append(f"ran with uncommitted code ({'diff kept in ' + UNCOMMITTED if diff.is_file() else 'no diff'})")
    recorded = (run.metrics.get("environment") or {}).get("git_commit")
    if recorded and commit and recorded != commit:
        problems.append(f"metrics.json records commit {recorded[:12]}, env.json {commit[:12]}")
    for path in sorted(p for p in run.path.rglob("*") if p.is_file()) if run.path.is_dir() else []:
        if path.suffix in TEXT_SUFFIXES and (found := absolute_paths(path.read_text(encoding="utf-8", errors="replace"))):
            problems.append(f"{path.relative_to(run.path)} holds a machine path ({found[0]})")
    return problems
