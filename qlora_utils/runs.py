"""Run directories: one per experiment, the unit of truth the book reads.

A run directory holds config.json (notebook, parameters, hash), status.json (running / done / failed, wall time),
env.json (versions, hardware, git commit), the executed notebook.ipynb, and what the notebook records through
`RunRecorder`: metrics.json, history.json, generations.json. Every file is written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .environment import environment
from .io import atomic_write_json

UNCOMMITTED = "uncommitted.diff"  # what a run made with --allow-dirty ran beyond its commit
STATES = ("done", "running", "stale", "failed", "partial", "missing")


def _alive(pid: Any) -> bool:
    """Whether a process of this machine with that id is still alive."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


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


def run_state(run_dir: Path, expected_hash: str | None = None) -> str:
    """done, running (its runner is alive), stale (done with another configuration), failed, partial (started and
    killed or interrupted, never finished) or missing."""
    status = read_json(run_dir / "status.json")
    if status is None:
        return "partial" if run_dir.exists() and any(run_dir.iterdir()) else "missing"
    state = status.get("state")
    if state == "done":
        if not (run_dir / "notebook.ipynb").is_file():
            return "partial"
        if expected_hash is not None and status.get("config_hash") != expected_hash:
            return "stale"
        return "done"
    if state == "running" and _alive(status.get("pid")):
        return "running"
    return "failed" if state == "failed" else "partial"


def mark_started(run_dir: Path, notebook: str, parameters: dict[str, Any], profile: str,
                 group: str | None = None) -> dict[str, Any]:
    """Write config.json, env.json and a 'running' status before a run starts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(notebook, parameters)
    config = {"run": run_dir.name, "profile": profile, "notebook": notebook, "parameters": parameters,
              "config_hash": digest, "seed": parameters.get("seed"), "group": group}
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "env.json", environment())
    status = {"state": "running", "config_hash": digest, "started": now(), "pid": os.getpid()}
    atomic_write_json(run_dir / "status.json", status)
    return status


def mark_finished(run_dir: Path, status: dict[str, Any], started: float, error: str | None = None,
                  interrupted: bool = False) -> None:
    """Close a run's status as done, failed or interrupted (reported as partial), with its wall time."""
    state = "interrupted" if interrupted else "failed" if error else "done"
    status = {**status, "state": state, "finished": now(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    status.pop("pid", None)
    if error:
        from .paths import scrub

        status["error"] = scrub(error)[-2000:]
    atomic_write_json(run_dir / "status.json", status)


@dataclass
class RunRecorder:
    """What a notebook calls to record its results into its run directory (atomic JSON files)."""

    run_dir: Path = field(default_factory=lambda: Path("."))

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

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
    def notebook(self) -> str:
        """The notebook that produced the run (repository-relative path)."""
        return self.config.get("notebook", "")

    def history(self) -> list[dict[str, Any]]:
        """The per-step training history (empty if none was recorded)."""
        return read_json(self.path / "history.json") or []

    def generations(self) -> list[dict[str, Any]]:
        """Recorded generations (empty if none)."""
        return read_json(self.path / "generations.json") or []


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


def busy_seconds(runs: list[Run]) -> float:
    """Wall-clock seconds during which at least one of the runs was executing (overlapping runs count once): the
    grid's elapsed time without the pauses between sessions."""
    spans = sorted((datetime.fromisoformat(r.status["started"]), datetime.fromisoformat(r.status["finished"]))
                   for r in runs if r.status.get("started") and r.status.get("finished"))
    total, current = 0.0, None
    for start, end in spans:
        if current and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current:
            total += (current[1] - current[0]).total_seconds()
        current = (start, end)
    return total + ((current[1] - current[0]).total_seconds() if current else 0.0)
