"""Running a profile's grid (`profiles.py`): papermill execution into run directories that are resumable (done runs
are skipped, failed/partial/stale ones re-run), one at a time or several at once sharing the cores."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.environment import COMMIT_ENV, RESULTS_DIR, changed_files
from ..core.records import (REPO, RUNS_ENV, UNCOMMITTED, RunLock, corruption, mark_finished, mark_started, read_json,
                            recover, replace_run, run_state, staging_dir)
from ..errors import QLoraError
from ..locations import CACHE_DIR_ENV, DATA_DIR_ENV, DATA_LAYOUT, atomic_write_text
from ..scrub import scrub, scrub_file
from ..speed.threads import THREADS_FILE_ENV, assign, shares
from .profiles import PROFILES_DIR, Entry, Profile, notebook_node, pattern_match, prerequisites, validate_profile
from .values import NOTEBOOK_DATA


def status(profile: Profile, root: Path | None = None) -> list[tuple[str, str]]:
    """(run name, state) for every entry of a profile; a planned entry that has not run yet is "planned"."""
    states = [(e, entry_state(profile, e, root)) for e in profile.entries]
    return [(e.name, "planned" if e.planned and state == "missing" else state) for e, state in states]


def state_detail(profile: Profile, entry: Entry, state: str, root: Path | None = None) -> str:
    """Why a run is in its state, in a few words, with where to look (empty for a done run)."""
    run_dir = profile.runs_dir(root) / entry.name
    if state == "planned":
        return "committed before it runs; `run --planned` starts it"
    if state == "done" and entry.planned:
        return "finished: drop its `planned: true` in the profile"
    if state == "corrupt":
        return "; ".join(corruption(run_dir)) or "status.json is missing or unreadable"
    if state in ("failed", "interrupted", "partial"):
        attempt = read_json(staging_dir(run_dir) / "status.json") or read_json(run_dir / "status.json") or {}
        first = (attempt.get("error") or "killed before it could record why").strip().splitlines()[0]
        return f"{first} (attempt: {staging_dir(run_dir) if staging_dir(run_dir).is_dir() else run_dir})"
    if state == "running":
        holder = RunLock(run_dir).holder() or {}
        return f"held by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    if state == "stale":
        current = run_state(run_dir, entry.config_hash) == "done"
        return "a run it reads finished after it" if current else "its parameters changed since it ran"
    return ""


def entry_state(profile: Profile, entry: Entry, root: Path | None = None) -> str:
    """A run's state (see runs.run_state); a done run that reads other runs (`profiles.prerequisites`: its `needs`,
    or every earlier run for an analysis) is stale once one of them finished after it started (an analysis over
    results that have changed since)."""
    runs_dir = profile.runs_dir(root)
    state = run_state(runs_dir / entry.name, entry.config_hash)
    if state == "done":
        started = (read_json(runs_dir / entry.name / "status.json") or {}).get("started", "")
        for needed in prerequisites(profile, entry):
            finished = (read_json(runs_dir / needed.name / "status.json") or {}).get("finished", "")
            if finished > started:
                return "stale"
    return state


KERNEL_STARTS = 3  # tries at starting a notebook's kernel before the run fails
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")


def kernel_never_started(exc: BaseException, partial: Path) -> bool:
    """Whether papermill failed because the kernel never came up, before any cell ran: safe to start again. Seen when
    two runners start kernels at once (the `speedup` sides, a parallel grid): jupyter_client picks free ports by
    binding and releasing them, so both can pick one port and the second kernel dies on "Address already in use"."""
    if not any(text in str(exc) for text in KERNEL_START_FAILURES):
        return False
    notebook = read_json(partial) if partial.exists() else None
    cells = (notebook or {}).get("cells", [])
    return not any(cell.get("execution_count") or cell.get("outputs") for cell in cells)


KERNEL_LOG = "kernel.log"  # the kernel's own stderr, kept with a failed or interrupted attempt


def kernel_manager(log: Path) -> type:
    """papermill's kernel manager, with the kernel's own stderr (its logging, C-level messages) written to `log`, not
    to the terminal: a kernel stopped by Ctrl-C or SIGTERM logs tracebacks there while it shuts down (`ZMQError:
    Socket operation on non-socket`). Cells' output is unaffected: the kernel sends it into the notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log, "ab") as handle:  # the kernel process keeps its own copy of the descriptor
                await super().start_kernel(**{**kw, "stderr": handle})

    return LoggedKernelManager


class RunFailed(QLoraError):
    """A run's notebook raised; the message gives the cause and where the failed attempt is."""


ANSI = re.compile(r"\x1b\[[0-9;]*m")
FRAME = re.compile(r"(File [^\n]+?:\d+, in [\w<>]+|Cell In\[\d+\], line \d+)")


def failure_cause(exc: BaseException) -> str:
    """One line: the exception type and message, and (for an unexpected error) where in the code it happened."""
    name = getattr(exc, "ename", None)  # papermill's PapermillExecutionError carries the kernel's exception
    if not name:
        return f"{type(exc).__name__}: {exc}".strip()
    message = ANSI.sub("", str(getattr(exc, "evalue", ""))).strip()
    if name in ("QLoraError", "DataUnavailableError"):
        return f"{name}: {message}"  # a user error: its message names the input and the fix
    frames = FRAME.findall(ANSI.sub("", "\n".join(getattr(exc, "traceback", []) or [])))
    where = f" ({scrub(frames[-1])})" if frames else ""
    return f"{name}: {message}{where}"


def execute_entry(entry: Entry, profile: Profile, root: Path | None = None, kernel_name: str = "python3",
                  force: bool = True) -> str:
    """Execute one entry with papermill, holding its lock, into a staging folder that replaces the run directory
    only on success; returns "done" or why it was skipped. A failed or interrupted attempt leaves the previous
    finished run intact (RunFailed says so; Ctrl-C and SIGTERM are recorded as interrupted)."""
    run_dir = profile.runs_dir(root) / entry.name
    lock = RunLock(run_dir)
    try:
        if not lock.acquire():
            return "skipped (running in another process)"
        try:
            recover(run_dir)
            if not force and entry_state(profile, entry, root) == "done":
                return "skipped (done)"  # finished by another runner while this one waited
            _attempt(entry, profile, run_dir, kernel_name)
        finally:
            lock.release()
    except OSError as exc:
        if (error := storage_error(entry, run_dir, exc)) is not None:
            raise error from exc
        raise
    return "done"


def storage_error(entry: Entry, run_dir: Path, exc: OSError) -> RunFailed | None:
    """One clear error for a runs folder that is full or cannot be written to (None for any other OS error)."""
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(_existing_folder(run_dir)).free / 2 ** 20
        return RunFailed(f"run {entry.name!r}: no space left on the disk that holds {_existing_folder(run_dir)} "
                         f"({free:.0f} MiB free); free some space and run it again. " + _kept(run_dir))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = _existing_folder(Path(exc.filename or run_dir))
        return RunFailed(f"run {entry.name!r}: cannot write in {folder} ({exc.strerror}); make it writable, or set "
                         f"{RUNS_ENV} to a folder you can write in. " + _kept(run_dir))
    return None


def _existing_folder(path: Path) -> Path:
    """The nearest folder above a path that exists (where an entry could not be created)."""
    return next((p for p in Path(path).parents if p.is_dir()), Path("/"))


def _kept(run_dir: Path) -> str:
    """Whether the previous finished run is kept, and where the attempt is (when one was made: no folder that does
    not exist is named)."""
    kept = ("The previous finished run is kept." if run_state(run_dir) in ("done", "stale") else
            "There was no earlier finished run.")
    staging = staging_dir(run_dir)
    return kept + (f" The attempt is in {staging}." if staging.is_dir() else "")


def _attempt(entry: Entry, profile: Profile, run_dir: Path, kernel_name: str) -> None:
    """One attempt at a run in its staging folder (called with the run's lock held)."""
    import jupytext
    import papermill

    staging = staging_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)  # nothing of an earlier attempt may pass for this one's
    started = time.perf_counter()
    os.environ.pop(COMMIT_ENV, None)  # the commit is read from the checkout now, not inherited from another run
    state = mark_started(staging, entry.notebook, entry.parameters, profile.name, group=entry.group)
    commit = read_json(staging / "env.json").get("git_commit")
    if commit:
        os.environ[COMMIT_ENV] = commit  # the kernel records the same commit in metrics.json
    if commit and commit.endswith("+dirty"):
        diff = subprocess.run(["git", "diff", "HEAD", "--", ".", f":(exclude){RESULTS_DIR}"], cwd=REPO,
                              capture_output=True, text=True)
        atomic_write_text(staging / UNCOMMITTED, diff.stdout)
    source, partial = staging / ".source.ipynb", staging / "notebook.partial.ipynb"
    jupytext.write(notebook_node(entry.notebook), source)
    parameters = {**entry.parameters, "run_dir": ".", "runs_dir": "..", "profile": profile.name}
    try:
        for start in range(1, KERNEL_STARTS + 1):
            try:
                papermill.execute_notebook(str(source), str(partial), parameters=parameters, cwd=str(staging),
                                           kernel_name=kernel_name, progress_bar=False,
                                           request_save_on_cell_execute=True,
                                           kernel_manager_class=kernel_manager(staging / KERNEL_LOG))
                break
            except RuntimeError as exc:
                if start == KERNEL_STARTS or not kernel_never_started(exc, partial):
                    raise
                print(f"{entry.name}: the notebook's kernel did not start ({exc}); starting it again "
                      f"(attempt {start + 1} of {KERNEL_STARTS})", file=sys.stderr, flush=True)
                time.sleep(random.uniform(0.5, 3.0))  # runners that picked the same free port start apart
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "ename", None) == "KeyboardInterrupt"
        if partial.exists() and read_json(partial) is not None:
            partial.replace(staging / "notebook.failed.ipynb")
        partial.unlink(missing_ok=True)  # a notebook cut short (a full disk) is no notebook
        cause = "interrupted (Ctrl-C or SIGTERM)" if interrupted else failure_cause(exc)
        with contextlib.suppress(OSError):
            mark_finished(staging, state, started, error=cause + "\n\n" + traceback.format_exc(),
                          interrupted=interrupted)
        if interrupted:
            raise KeyboardInterrupt(f"run {entry.name!r} interrupted") from None
        if isinstance(exc, OSError):
            raise
        raise RunFailed(f"run {entry.name!r} failed: {cause}. {_kept(run_dir)}") from exc
    finally:
        source.unlink(missing_ok=True)
    (staging / KERNEL_LOG).unlink(missing_ok=True)  # a finished run's record is its notebook
    _title_with_run_name(partial, entry.name)
    scrub_file(partial)
    partial.replace(staging / "notebook.ipynb")
    mark_finished(staging, state, started)
    if problems := corruption(staging):
        raise RunFailed(f"run {entry.name!r} finished but its record is incomplete ({'; '.join(problems)}). "
                        + _kept(run_dir))
    replace_run(staging, run_dir)


def _title_with_run_name(path: Path, name: str) -> None:
    """Put the run's name into the executed notebook's title, so the book's appendix tells the runs apart."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            first, _, rest = cell.source.partition("\n")
            cell.source = f"{first} ({name})\n{rest}"
            break
    nbformat.write(notebook, path)


def check_inputs(entries: list[Entry]) -> None:
    """Before anything runs: the configured data directory exists and holds every file the entries' notebooks read
    (with no data directory the Hub is used, and its errors name QLORA_DATA_DIR)."""
    from ..core.data import SOURCES
    from ..locations import data_dir

    root = data_dir()  # raises, naming the variable and the fix, when the directory does not exist
    if root is None:
        return
    needed = {split for e in entries for split in NOTEBOOK_DATA.get(Path(e.notebook).stem, ())}
    missing = sorted({SOURCES[s].local for s in needed if not (root / SOURCES[s].local).is_file()})
    if missing:
        raise QLoraError(f"the data directory {root} ({DATA_DIR_ENV}) lacks {', '.join(missing)}, which these runs "
                         f"read; point it at a copy {DATA_LAYOUT}, or unset it to use the Hub")


def check_committed(allow_dirty: bool = False) -> None:
    """Refuse to run from a working tree whose tracked code has uncommitted changes (runs/ excepted): the code of
    every run must be in a commit. With allow_dirty, such runs are marked dirty and keep their diff."""
    changed = changed_files(REPO)
    if changed and not allow_dirty:
        listed = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise QLoraError(f"uncommitted changes to tracked files: {listed}. Commit them first, so that every run "
                         "records the commit of its code, or pass --allow-dirty to run anyway (each run is then "
                         f"marked +dirty and keeps the diff in {UNCOMMITTED})")


def check_switches() -> None:
    """Read the environment's speed switches (QLORA_BF16_VIA_FP32, QLORA_DEQUANTIZE_ONCE) before any run starts:
    a bad value is one error here, not a run left half-started."""
    from ..speed import cpu_bf16, dequant

    cpu_bf16.wanted()
    dequant.switch()


def kernel_environment() -> None:
    """Make the notebooks' kernels (children of this process) import this checkout's qlora_utils, whatever the
    virtual environment's editable install points at."""
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([path] if path else []))


def run_profile(profile: Profile, root: Path | None = None, force: bool = False, only: list[str] | None = None,
                keep_going: bool = False, jobs: int = 1, validate: bool = True,
                allow_dirty: bool = False, cores: int | None = None, planned: bool = False) -> dict[str, str]:
    """Validate the whole grid, then execute every entry that is not done and current (all with force).

    With jobs > 1, that many runs execute at once, each in its own runner process, sharing the cores
    (`threads.shares`: a run left alone takes the freed cores between its steps and batches); an entry starts once
    the earlier runs it `needs` have finished, and an `exclusive` one runs alone. `cores` caps the cores the grid
    uses (default: all of them), so that a long grid can leave one for other work. Planned entries (committed before
    they run) run only with `planned`; a run already done counts wherever it came from."""
    if jobs < 1:
        raise QLoraError(f"jobs must be at least 1, got {jobs}")
    if cores is not None and not 1 <= cores <= (os.cpu_count() or 1):
        raise QLoraError(f"--cores must be between 1 and this machine's {os.cpu_count() or 1}, got {cores}")
    check_committed(allow_dirty)
    check_switches()
    kernel_environment()
    if validate:
        validate_profile(profile)
    entries = [e for e in profile.entries if (planned or not e.planned)
               and (not only or any(pattern_match(e.name, p) for p in only))]
    if only and not entries:
        named = profile.name if profile.path.parent == PROFILES_DIR else profile.path
        raise QLoraError(f"no run of profile {profile.name!r} matches {only}; `python -m qlora_utils status {named}` "
                         "lists its runs")
    check_inputs(entries)
    for variable in (DATA_DIR_ENV, CACHE_DIR_ENV):  # kernels run inside run directories: make paths absolute
        if os.environ.get(variable):
            os.environ[variable] = str(Path(os.environ[variable]).expanduser().resolve())
    for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")  # weight-loading and map bars would fill the executed notebooks
    results: dict[str, str] = {}
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a plain `kill` stops the kernel cleanly, like Ctrl-C
    try:
        if jobs == 1 and cores is None:
            _run_entries(profile, entries, root, force, keep_going, results, allow_dirty)
        else:  # each run in its own process, with its share of the cores
            _run_parallel(profile, entries, root, force, keep_going, jobs, results, allow_dirty, cores)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {e.name: results[e.name] for e in entries if e.name in results}  # in the profile's order


def _run_entries(profile: Profile, entries: list[Entry], root: Path | None, force: bool, keep_going: bool,
                 results: dict[str, str], allow_dirty: bool = False) -> None:
    bar = tqdm(entries, desc=profile.name, unit="run")
    for entry in bar:
        bar.set_postfix_str(entry.name)
        if skipped := skip_reason(profile, entry, root, force):
            results[entry.name] = skipped
            continue
        check_committed(allow_dirty)  # again before each run: the tree may have changed since the grid started
        try:
            results[entry.name] = execute_entry(entry, profile, root, force=force)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, RunFailed) else RunFailed(
                f"run {entry.name!r} failed: {failure_cause(exc)}. {_kept(profile.runs_dir(root) / entry.name)}")
            results[entry.name] = f"failed: {error}"
            if not keep_going:
                raise error from exc


def skip_reason(profile: Profile, entry: Entry, root: Path | None, force: bool) -> str | None:
    """Why an entry is not executed now (done and current, or held by another live runner), or None."""
    state = entry_state(profile, entry, root)
    if state == "done" and not force:
        return "skipped (done)"
    if state == "running":  # another live runner has it: never run one experiment twice at once
        return "skipped (running in another process)"
    return None


def _blocked(entry: Entry, profile: Profile, unfinished: set[str]) -> bool:
    """Whether an earlier run that the entry needs has not finished yet."""
    return any(e.name in unfinished for e in prerequisites(profile, entry))


def one_entry_command(profile: str, name: str, *flags: str) -> list[str]:
    """The command line that runs one entry of a profile (name or path) with this interpreter's runner."""
    return [sys.executable, "-m", "qlora_utils", "run", profile, "--only", name, *flags]


def runner_command(profile: Profile, entry: Entry, force: bool, allow_dirty: bool) -> list[str]:
    """The command line of a one-entry runner (the child of --jobs and of a cluster job)."""
    return one_entry_command(str(profile.path), entry.name, "--no-validate", *(["--force"] if force else []),
                             *(["--allow-dirty"] if allow_dirty else []), *(["--planned"] if entry.planned else []))


def _run_parallel(profile: Profile, entries: list[Entry], root: Path | None, force: bool, keep_going: bool,
                  jobs: int, results: dict[str, str], allow_dirty: bool = False, cores: int | None = None) -> None:
    """Execute entries `jobs` at a time, each through a one-entry runner process; logs go to RUNS/PROFILE/NAME.log."""
    runs_dir = profile.runs_dir(root)
    cores = cores or os.cpu_count() or 1
    pending = list(entries)  # whether one is skipped is decided when its turn comes: what it needs may re-run first
    unfinished = {e.name for e in pending}
    running: dict[str, tuple[subprocess.Popen[bytes], Any, Entry]] = {}
    failed = False
    bar = tqdm(total=len(pending), desc=f"{profile.name} ({jobs} jobs)", unit="run")
    thread_files = Path(tempfile.mkdtemp(prefix="qlora-threads-"))  # each run follows its file (threads.follow)
    shared: dict[str, int] = {}
    try:
        while pending or running:
            for name, (process, log, entry) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                unfinished.discard(name)
                state = run_state(runs_dir / name, entry.config_hash)
                ok = process.returncode == 0 and state in ("done", "running")
                results[name] = ("done" if state == "done" else "skipped (running in another process)") if ok else \
                    f"failed: {_last_error(runs_dir / f'{name}.log')} (log: {runs_dir / name}.log)"
                failed = failed or not ok
                bar.update(1)
            if failed and not keep_going:
                pending.clear()
            for entry in list(pending):
                if _blocked(entry, profile, unfinished):
                    continue
                if skipped := skip_reason(profile, entry, root, force):
                    pending.remove(entry)
                    unfinished.discard(entry.name)
                    results[entry.name] = skipped
                    bar.update(1)
                    continue
                if len(running) >= jobs or any(e.exclusive for _, _, e in running.values()):
                    break
                if entry.exclusive and running:
                    break  # it waits for the machine to empty; later entries wait behind it, keeping the order
                env = thread_environment(cores if entry.exclusive else max(1, cores // jobs))
                env[THREADS_FILE_ENV] = str(thread_files / entry.name)
                if root is not None:
                    env[RUNS_ENV] = str(root)
                runs_dir.mkdir(parents=True, exist_ok=True)
                log = open(runs_dir / f"{entry.name}.log", "wb")
                process = subprocess.Popen(runner_command(profile, entry, force, allow_dirty), cwd=REPO, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
                running[entry.name] = (process, log, entry)
                pending.remove(entry)
            if shares(list(running), cores) != shared:  # a run left alone takes the freed cores, and gives them back
                shared = shares(list(running), cores)
                for name, threads in shared.items():
                    assign(thread_files / name, threads)
            bar.set_postfix_str(", ".join(running))
            time.sleep(0.5)
    except KeyboardInterrupt:
        for process, _, _ in running.values():
            process.terminate()  # each runner marks its run interrupted and stops its kernel
        for process, log, _ in running.values():
            process.wait()
            log.close()
        raise
    finally:
        bar.close()
        shutil.rmtree(thread_files, ignore_errors=True)
    if failed and not keep_going:
        bad = [n for n, r in results.items() if r.startswith("failed")]
        raise QLoraError(f"run(s) {bad} failed; see their logs in {runs_dir}")


def thread_environment(threads: int) -> dict[str, str]:
    """This process's environment with the torch/OpenMP/MKL thread count of a child runner set to `threads`."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _last_error(log: Path) -> str:
    """The runner's one-line error at the end of a child's log (or its exit)."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.startswith("error: ")]
    except OSError:
        return "no log"
    return lines[-1].removeprefix("error: ") if lines else "it exited without finishing"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
