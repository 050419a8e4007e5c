"""Building the Jupyter Book for a profile: the chapter pages read that profile's run directories (never training),
the appendix renders every executed run notebook, and warnings are errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.records import profile_runs_dir
from ..errors import QLoraError
from ..grid.profiles import load_profile
from ..grid.runner import REPO, kernel_environment, status
from ..locations import RUNS_ENV
from .report import MISSING_ENV, PROFILE_ENV

DEFAULT_PROFILE = "cpu"  # the profile the committed _toc.yml globs


def toc_for(profile: str) -> Path:
    """The table of contents for a profile: _toc.yml itself for the default, else a copy globbing runs/<profile>."""
    toc = REPO / "_toc.yml"
    if profile == DEFAULT_PROFILE:
        return toc
    text = toc.read_text(encoding="utf-8").replace(f"runs/{DEFAULT_PROFILE}/", f"runs/{profile}/")
    handle = tempfile.NamedTemporaryFile("w", suffix=".yml", prefix=f"_toc-{profile}-", delete=False)
    with handle:
        handle.write(text)
    return Path(handle.name)


def run_snapshot(runs: Path) -> dict[str, str]:
    """A digest of each run directory's record under a profile's runs folder (its status.json and metrics.json, which
    a rerun that finishes replaces), by run name."""
    snapshot = {}
    for run in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
        digest = hashlib.sha256()
        for name in ("status.json", "metrics.json"):
            try:
                digest.update((run / name).read_bytes())
            except OSError:  # missing, or being replaced right now
                digest.update(b"-")
        snapshot[run.name] = digest.hexdigest()
    return snapshot


def changed_runs(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The runs whose record differs between two snapshots (changed, added or removed)."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def unfinished_runs(profile: str) -> list[tuple[str, str]]:
    """(run, state) for every run of the profile that is not done and current (missing, running, failed,
    interrupted, partial, corrupt or stale); a planned run that has not started is not part of the book yet."""
    return [(name, state) for name, state in status(load_profile(profile)) if state not in ("done", "planned")]


def build_book(profile: str = DEFAULT_PROFILE, output: str | Path | None = None, strict: bool = True,
               partial: bool = False) -> Path:
    """Run `jupyter-book build` on the repository for a profile; returns the HTML folder. Every run of the profile
    must be done and whole; with partial, the book builds anyway and its landing page lists what is missing. A run
    that changed during the build (a runner finished it) fails the build: its pages could mix two states."""
    load_profile(profile)  # fails clearly on an unknown profile
    runs = profile_runs_dir(profile).resolve()
    if not runs.is_relative_to((REPO / "runs").resolve()):  # the table of contents globs runs/<profile>/ here
        raise QLoraError(f"the book reads runs/{profile}/ of this repository, but {RUNS_ENV} points at {runs}; "
                         f"copy the run directories into runs/{profile}/ and unset {RUNS_ENV} to build it")
    if not profile_runs_dir(profile).is_dir():
        raise QLoraError(f"no runs for profile {profile!r} in {profile_runs_dir(profile)}; run "
                         f"`python -m qlora_utils run {profile}`")
    before = run_snapshot(profile_runs_dir(profile))  # the book must show one state of the runs, checked at the end
    unfinished = unfinished_runs(profile)
    if unfinished and not partial:
        listed = ", ".join(f"{name} ({state})" for name, state in unfinished)
        raise QLoraError(f"the book of profile {profile!r} needs every run finished; {len(unfinished)} are not: "
                         f"{listed}. Run `python -m qlora_utils run {profile}` (it redoes failed, partial, corrupt "
                         "and stale runs), or build a partial book with --partial (its pages name the missing runs)")
    output = Path(output or REPO)
    toc = toc_for(profile)
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(REPO), "--path-output", str(output),
               "--toc", str(toc), "--config", str(REPO / "_config.yml"),
               "--all"]  # every page re-read: the runs a page reads change without its source changing
    if strict:
        command += ["-W", "-n", "--keep-going"]
    kernel_environment()  # the pages' kernels import this checkout's qlora_utils
    env = {**os.environ, PROFILE_ENV: profile,
           MISSING_ENV: ", ".join(f"{name} ({state})" for name, state in unfinished)}
    try:
        subprocess.run(command, check=True, env=env, cwd=REPO)
    except subprocess.CalledProcessError as exc:
        raise QLoraError(f"the book build failed (exit {exc.returncode}); see the log above and the execution "
                         f"reports under {output / '_build' / 'html' / 'reports'}") from exc
    finally:
        if toc != REPO / "_toc.yml":
            toc.unlink(missing_ok=True)
    if changed := changed_runs(before, run_snapshot(profile_runs_dir(profile))):
        raise QLoraError(f"run(s) {', '.join(changed)} of profile {profile!r} changed while the book was being built "
                         "(a runner finished them), so its pages may mix their old and new states; build it again "
                         f"once no runner is writing runs/{profile}/")
    return output / "_build" / "html"
