"""Profiles: named grids of experiments in YAML (profiles/NAME.yaml), read into entries and validated against the
notebooks' parameters cells before anything runs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable

import yaml

from ..core.records import REPO, config_hash, profile_runs_dir
from ..errors import QLoraError
from .values import value_problems

PROFILES_DIR = REPO / "profiles"
INJECTED = ("run_dir", "runs_dir", "profile")  # parameters the runner sets itself


@dataclass(frozen=True)
class Entry:
    """One experiment of a profile: a notebook and its parameters."""

    name: str
    notebook: str  # repository-relative path of the MyST-markdown notebook
    parameters: dict[str, Any]
    needs: tuple[str, ...] = field(default=())  # patterns of earlier runs that must finish first (with --jobs)
    exclusive: bool = False  # with --jobs, runs alone on every core (clean memory and throughput measurements)
    group: str | None = None  # a named family of runs (e.g. "sweep"): never pooled with the seeds of another
    explicit: tuple[str, ...] = ()  # the parameters the entry sets itself (not inherited from `defaults`)
    planned: bool = False  # committed before it runs (the plan is fixed first); `run` starts it only with --planned

    @property
    def config_hash(self) -> str:
        return config_hash(self.notebook, self.parameters)


@dataclass(frozen=True)
class Profile:
    """A named grid of entries."""

    name: str
    description: str
    entries: tuple[Entry, ...]
    path: Path
    cluster: dict[str, Any] = field(default_factory=dict)  # what each job asks a scheduler for (JobSettings)
    budget_hours: float | None = None  # the elapsed time the whole grid should fit in (the appendix compares)

    def runs_dir(self, root: Path | None = None) -> Path:
        """Where this profile's run directories live: root, else $QLORA_RUNS_DIR, else runs/."""
        return profile_runs_dir(self.name, root)

    @property
    def exclusive(self) -> frozenset[str]:
        """Names of the entries that run alone on every core."""
        return frozenset(e.name for e in self.entries if e.exclusive)


def available_profiles() -> list[str]:
    """Names of the profiles in profiles/."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Read a profile by name (profiles/NAME.yaml) or path; its `profile:` key, if any, must be the file's name.

    `defaults` maps a notebook's stem (week2_sst2_baseline) to parameters every entry of that notebook inherits."""
    path = Path(name_or_path)
    if not path.suffix and not path.is_file():  # a name; a file without a suffix is read as given
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise QLoraError(f"no profile {str(name_or_path)!r}; available: {', '.join(available_profiles())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise QLoraError(f"{path}: not valid YAML{where}: {problem}; fix the file (see profiles/smoke.yaml for the "
                         "layout)") from None
    if not isinstance(raw, dict):
        raise QLoraError(f"{path}: a profile is a mapping with `profile`, `runs` (a list) and optional `defaults`; "
                         f"this file holds a {type(raw).__name__}")
    name = raw.get("profile", path.stem)
    if name != path.stem:  # runs go to runs/<profile>/: a copy that kept the key would write into another's runs
        raise QLoraError(f"{path}: `profile: {name}` disagrees with the file's name {path.stem!r}, and a profile's "
                         f"runs go to runs/<profile>/; rename the key to `profile: {path.stem}` or the file to "
                         f"{name}.yaml")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict) or not all(isinstance(v, dict) for v in defaults.values()):
        raise QLoraError(f"{path.name}: `defaults` must map a notebook's name to a mapping of parameters")
    if not isinstance(raw.get("runs") or [], list):
        raise QLoraError(f"{path.name}: `runs` must be a list of runs, each with a `name` and a `notebook`")
    entries, seen = [], set()
    for i, item in enumerate(raw.get("runs") or []):
        if not isinstance(item, dict) or "name" not in item or "notebook" not in item:
            raise QLoraError(f"{path.name}: run #{i + 1} needs a `name` and a `notebook`")
        if item["name"] in seen:
            raise QLoraError(f"{path.name}: run name {item['name']!r} is used twice")
        seen.add(item["name"])
        unknown = set(item) - {"name", "notebook", "parameters", "needs", "exclusive", "group", "planned"}
        if unknown:
            raise QLoraError(f"{path.name}: run {item['name']!r} has unknown keys {sorted(unknown)}")
        needs = item.get("needs") or []
        if isinstance(needs, str) or not all(isinstance(n, str) for n in needs):
            raise QLoraError(f"{path.name}: run {item['name']!r}: `needs` must be a list of run-name patterns")
        if unmatched := [n for n in needs if not any(pattern_match(e.name, n) for e in entries)]:
            raise QLoraError(f"{path.name}: run {item['name']!r} needs {unmatched}, which match no earlier run")
        if not isinstance(item.get("parameters") or {}, dict):
            raise QLoraError(f"{path.name}: run {item['name']!r}: `parameters` must be a mapping")
        parameters = {**defaults.get(Path(item["notebook"]).stem, {}), **(item.get("parameters") or {})}
        group = item.get("group")
        if group is not None and not isinstance(group, str):
            raise QLoraError(f"{path.name}: run {item['name']!r}: `group` must be a name, got {group!r}")
        entries.append(Entry(item["name"], item["notebook"], parameters, tuple(needs), bool(item.get("exclusive")),
                             group, tuple(item.get("parameters") or {}), bool(item.get("planned"))))
    if not entries:
        raise QLoraError(f"{path.name} lists no runs")
    stems = {Path(e.notebook).stem for e in entries}
    if unused := sorted(set(defaults) - stems):
        raise QLoraError(f"{path.name}: defaults for {unused} match no notebook of the profile ({sorted(stems)})")
    if not isinstance(raw.get("cluster") or {}, dict):
        raise QLoraError(f"{path.name}: `cluster` must be a mapping of job settings (see qlora_utils.grid.cluster)")
    budget = raw.get("budget_hours")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise QLoraError(f"{path.name}: `budget_hours` must be a positive number of hours, not {budget!r}")
    return Profile(name, raw.get("description", ""), tuple(entries), path,
                   dict(raw.get("cluster") or {}), None if budget is None else float(budget))


def notebook_node(notebook: str | Path) -> Any:
    """The notebook (MyST markdown, the source of truth) as an nbformat node, via jupytext."""
    import jupytext

    path = REPO / notebook
    if not path.is_file():
        raise QLoraError(f"notebook {notebook} does not exist")
    return jupytext.read(path)


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters cell of a notebook as papermill sees it: name -> {inferred_type_name, default, help}."""
    import jupytext
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        ipynb = Path(tmp) / (Path(notebook).stem + ".ipynb")
        jupytext.write(notebook_node(notebook), ipynb)
        return dict(papermill.inspect_notebook(str(ipynb)))


_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict),
}


def _type_ok(type_name: str, value: Any) -> bool:
    if value is None:
        return "None" in type_name or "Optional" in type_name
    names = [t.strip() for t in type_name.replace("Optional[", "").rstrip("]").split("|") if t.strip() != "None"]
    known = [n for n in names if n.split("[")[0] in _TYPES]
    return not known or any(_TYPES[n.split("[")[0]](value) for n in known)


@dataclass(frozen=True)
class JobSettings:
    """What each job asks the scheduler for (a profile's `cluster:` block sets them; the command line overrides)."""

    cpus_per_run: int = 1  # an `exclusive` run takes the whole node instead
    gpus_per_run: int = 0
    time_min: int = 120  # the wall-time limit of one run (over 50: see cluster.md on submitit's timeout counting)
    mem_margin: float = 1.5  # the planner's predicted peak times this ...
    mem_overhead_gib: float = 2.0  # ... plus the interpreter, the notebook kernel and the data
    mem_default_gib: float = 4.0  # runs the planner cannot predict (analyses, win rates)
    mem_cap_gib: float | None = None  # at most this (a node's memory): the planner's peak is at the longest sequence
    partition: str | None = None
    local_jobs: int = 1  # the local executor: jobs at once (it has no queue of its own)

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> "JobSettings":
        """The profile's `cluster:` settings, then the non-None overrides."""
        known = set(cls.__dataclass_fields__)
        given = {**profile.cluster, **{k: v for k, v in overrides.items() if v is not None}}
        if unknown := sorted(set(given) - known):
            raise QLoraError(f"{profile.path.name}: unknown cluster settings {unknown}; known: {sorted(known)}")
        numbers = {k: v for k, v in given.items() if k != "partition" and v is not None}
        if bad := sorted(k for k, v in numbers.items() if isinstance(v, bool) or not isinstance(v, (int, float))
                         or v < (0 if k in ("gpus_per_run", "mem_overhead_gib") else 1e-9)):
            raise QLoraError(f"{profile.path.name}: cluster settings {bad} must be positive numbers")
        return cls(**given)


def validate_profile(profile: Profile) -> None:
    """Check every entry's parameter names and types against its notebook's parameters cell; one error lists all."""
    problems: list[str] = []
    cache: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in profile.entries:
        if entry.notebook not in cache:
            try:
                cache[entry.notebook] = notebook_parameters(entry.notebook)
            except QLoraError as exc:
                problems.append(f"run {entry.name!r}: {exc}")
                continue
        declared = cache[entry.notebook]
        for name, value in entry.parameters.items():
            if name in INJECTED:
                problems.append(f"run {entry.name!r}: parameter {name!r} is set by the runner, remove it")
            elif name not in declared:
                close = ", ".join(sorted(set(declared) - set(INJECTED)))
                problems.append(f"run {entry.name!r}: unknown parameter {name!r} for {entry.notebook} (it takes: {close})")
            elif not _type_ok(declared[name]["inferred_type_name"], value):
                problems.append(f"run {entry.name!r}: parameter {name!r}={value!r} is not of type "
                                f"{declared[name]['inferred_type_name']} as declared in {entry.notebook}")
        earlier = [e.name for e in profile.entries[:profile.entries.index(entry)]]
        problems += value_problems(entry.name, entry.notebook, entry.parameters, entry.explicit, earlier)
    try:
        JobSettings.from_profile(profile)
    except (QLoraError, TypeError) as exc:
        problems.append(str(exc))
    if problems:
        raise QLoraError(f"profile {profile.name!r} ({profile.path.name}) is invalid:\n  " + "\n  ".join(problems))


READS_EVERY_RUN = ("week7_analysis", "week8_report")  # notebooks that read every run of their profile


def prerequisites(profile: Profile, entry: Entry) -> list[Entry]:
    """The earlier entries an entry reads, `needs` or not: those its `needs` patterns name, every earlier one for an
    analysis of the whole profile (READS_EVERY_RUN), and the runs a win-rate entry judges (`instruct_runs`). It starts
    after them, and is stale once one of them finished after it."""
    earlier = profile.entries[:profile.entries.index(entry)]
    if Path(entry.notebook).stem in READS_EVERY_RUN:
        return list(earlier)
    judged = entry.parameters.get("instruct_runs")
    judged = judged if isinstance(judged, list) else []
    return [e for e in earlier if e.name in judged or any(pattern_match(e.name, n) for n in entry.needs)]


def pattern_match(name: str, pattern: str) -> bool:
    """Shell-style match of a run name (`week2-*`)."""
    return fnmatchcase(name, pattern)
