"""Building the Jupyter Book for a profile: the chapter pages read that profile's run directories (never training),
the appendix renders every executed run notebook, and warnings are errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import QLoraError
from .io import RUNS_ENV
from .report import PROFILE_ENV
from .profiles import load_profile
from .runner import REPO, kernel_environment, status
from .runs import profile_runs_dir

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


MISSING_ENV = "QLORA_MISSING_RUNS"  # a partial build: the unfinished runs, which the landing page lists


def unfinished_runs(profile: str) -> list[tuple[str, str]]:
    """(run, state) for every run of the profile that is not done and current (missing, running, failed,
    interrupted, partial, corrupt or stale)."""
    return [(name, state) for name, state in status(load_profile(profile)) if state != "done"]


def build_book(profile: str = DEFAULT_PROFILE, output: str | Path | None = None, strict: bool = True,
               partial: bool = False) -> Path:
    """Run `jupyter-book build` on the repository for a profile; returns the HTML folder. Every run of the profile
    must be done and whole; with partial, the book builds anyway and its landing page lists what is missing."""
    load_profile(profile)  # fails clearly on an unknown profile
    runs = profile_runs_dir(profile).resolve()
    if not runs.is_relative_to((REPO / "runs").resolve()):  # the table of contents globs runs/<profile>/ here
        raise QLoraError(f"the book reads runs/{profile}/ of this repository, but {RUNS_ENV} points at {runs}; "
                         f"copy the run directories into runs/{profile}/ and unset {RUNS_ENV} to build it")
    if not profile_runs_dir(profile).is_dir():
        raise QLoraError(f"no runs for profile {profile!r} in {profile_runs_dir(profile)}; run "
                         f"`python -m qlora_utils run {profile}`")
    unfinished = unfinished_runs(profile)
    if unfinished and not partial:
        listed = ", ".join(f"{name} ({state})" for name, state in unfinished)
        raise QLoraError(f"the book of profile {profile!r} needs every run finished; {len(unfinished)} are not: "
                         f"{listed}. Run `python -m qlora_utils run {profile}` (it redoes failed, partial, corrupt "
                         "and stale runs), or build a partial book with --partial (its pages name the missing runs)")
    output = Path(output or REPO)
    toc = toc_for(profile)
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(REPO), "--path-output", str(output),
               "--toc", str(toc), "--config", str(REPO / "_config.yml")]
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
    return output / "_build" / "html"
