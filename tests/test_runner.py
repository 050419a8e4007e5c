"""Profiles, their validation against the notebooks, run states, and the notebook pairs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import jupytext
import pytest

from qlora_utils.core.records import RunLock, config_hash, mark_finished, mark_started, run_state
from qlora_utils.errors import QLoraError
from qlora_utils.grid.profiles import (
    available_profiles, load_profile, notebook_parameters, pattern_match, validate_profile,
)
from qlora_utils.grid.runner import REPO, run_profile

NOTEBOOKS = sorted((REPO / "notebooks").glob("week*.md"))
FAST, WEEK2, WEEK6 = ("notebooks/week7_analysis.md", "notebooks/week2_sst2_baseline.md",
                      "notebooks/week6_alpacaeval_efficiency.md")
WEEK1 = "notebooks/week1_setup.md"  # for fake runs side by side: an analysis (FAST) waits for every earlier run


def test_there_is_one_notebook_per_week() -> None:
    assert [p.name.split("_")[0] for p in NOTEBOOKS] == [f"week{i}" for i in range(1, 9)]


@pytest.mark.parametrize("name", ["smoke", "quick", "cpu", "gpu-24gb"])
def test_every_profile_validates_against_the_notebooks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert name in available_profiles()
    if name == "gpu-24gb":  # it reads the data from the Hub (README): the local SQuAD copy is partial
        monkeypatch.delenv("QLORA_DATA_DIR", raising=False)
    validate_profile(load_profile(name))


def test_train_examples_are_checked_against_the_training_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before anything runs, not seconds into a run: SST-2's pool is its train split less the selection split; a
    local copy is counted (the SQuAD file beside the checkout keeps 11 articles), the Hub's size is published."""
    from qlora_utils.core.data import train_pool

    squad = tmp_path / "data" / "squad_v1.1" / "train-v1.1.first11articles.json"
    squad.parent.mkdir(parents=True)
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": [
        {"id": str(i), "question": "q?", "answers": [{"text": "a", "answer_start": 0}]} for i in range(3)]}]}]}))
    monkeypatch.setenv("QLORA_DATA_DIR", str(tmp_path / "data"))
    assert train_pool("squad")[0::2] == (3, 87599)
    message = _invalid(tmp_path, "notebooks/week4_squad.md", "{train_examples: 4}")
    assert ("train_examples=4 is more than the 3 squad training records it can draw from "
            "(squad_v1.1/train-v1.1.first11articles.json in $QLORA_DATA_DIR holds 3); use at most 3, or unset "
            "QLORA_DATA_DIR to draw from the Hub's 87599") in message
    validate_profile(load_profile(_profile(tmp_path, f"  - {{name: w, notebook: notebooks/week4_squad.md, "
                                                     "parameters: {train_examples: 3}}\n")))
    monkeypatch.delenv("QLORA_DATA_DIR")
    assert train_pool("sst2") == (66849, "stanfordnlp/sst2 (train) on the Hub holds 67349, less the 500-sentence "
                                  "selection split", None)
    assert train_pool("squad")[0] == 87599 and train_pool("alpaca")[0] == 52002
    message = _invalid(tmp_path, WEEK6, "{kind: instruct, train_examples: 52003}")
    assert "train_examples=52003 is more than the 52002 alpaca training records" in message
    sst2 = tmp_path / "data" / "sst2" / "train.tsv"
    sst2.parent.mkdir(parents=True)
    sst2.write_text("sentence\tlabel\n" + "".join(f"{'w ' * words}\t1\n" for words in [3] * 600 + [9] * 700))
    monkeypatch.setenv("QLORA_DATA_DIR", str(tmp_path / "data"))
    assert train_pool("sst2", min_words=9)[0] == 200  # 700 long items less the 500 set aside
    message = _invalid(tmp_path, "notebooks/week2_sst2_baseline.md", "{train_examples: 201, min_words: 9}")
    assert "train_examples=201 is more than the 200 sst2 training records it can draw from (sst2/train.tsv in " \
           "$QLORA_DATA_DIR holds 700 items of 9+ words, less the 500-sentence selection split)" in message


def test_a_profile_names_the_runs_that_run_alone() -> None:
    cpu = load_profile("cpu")
    assert "week3-bench" in cpu.exclusive and "week2-qwen0.5b-qlora-seed0" not in cpu.exclusive
    assert "week2-qwen0.5b-full-seed0" in cpu.exclusive, "full fine-tuning runs alone"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_one_typed_parameters_cell_seen_whole_by_papermill(path: Path) -> None:
    notebook = jupytext.read(path)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    assigned = [line.split(":")[0] for line in cells[0].source.splitlines() if line and not line.startswith("#")]
    declared = notebook_parameters(path.relative_to(REPO))
    assert sorted(assigned) == sorted(declared), "papermill misreads a parameter line (an '=' in a comment?)"
    assert all(p["inferred_type_name"] != "None" for p in declared.values()), "every parameter is typed"
    assert {"run_dir", "runs_dir", "profile"} <= set(declared)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_ipynb_is_in_sync_with_the_markdown(path: Path) -> None:
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.is_file(), f"run `jupytext --sync {path.relative_to(REPO)}`"
    md_cells = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    nb_cells = [(c.cell_type, c.source) for c in jupytext.read(ipynb).cells]
    assert md_cells == nb_cells, f"{ipynb.name} is out of date: run `jupytext --sync {path.relative_to(REPO)}`"


def _profile(tmp_path: Path, runs: str) -> Path:
    path = tmp_path / "ptest.yaml"
    path.write_text(f"profile: ptest\nruns:\n{runs}")
    return path


@pytest.mark.parametrize("variable", ["QLORA_BF16_VIA_FP32", "QLORA_DEQUANTIZE_ONCE"])
def test_a_bad_speed_switch_stops_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 variable: str) -> None:
    monkeypatch.setenv(variable, "maybe")
    path = _profile(tmp_path, "  - name: ok\n    notebook: notebooks/week7_analysis.md\n")
    with pytest.raises(QLoraError, match=f"{variable}='maybe': use 1"):
        run_profile(load_profile(path), root=tmp_path / "runs", allow_dirty=True)
    assert not (tmp_path / "runs").exists(), "no run half-started (a staging folder with config.json alone)"


def test_mistyped_parameter_name_stops_before_any_run(tmp_path: Path) -> None:
    path = _profile(tmp_path, "  - name: ok\n    notebook: notebooks/week7_analysis.md\n"
                              "  - name: typo-run\n    notebook: notebooks/week2_sst2_baseline.md\n"
                              "    parameters: {learnig_rate: 0.001}\n")
    with pytest.raises(QLoraError, match=r"run 'typo-run': unknown parameter 'learnig_rate'.*learning_rate"):
        run_profile(load_profile(path), root=tmp_path / "runs", allow_dirty=True)
    assert not (tmp_path / "runs").exists(), "nothing ran"


def test_mistyped_parameter_value_is_refused(tmp_path: Path) -> None:
    path = _profile(tmp_path, "  - name: bad\n    notebook: notebooks/week2_sst2_baseline.md\n"
                              "    parameters: {rank: eight, zero_shot: 1}\n")
    with pytest.raises(QLoraError) as info:
        validate_profile(load_profile(path))
    assert "'rank'='eight' is not of type int" in str(info.value)
    assert "'zero_shot'=1 is not of type bool" in str(info.value)


@pytest.mark.parametrize("runs,message", [
    ("  - name: a\n    notebook: notebooks/week7_analysis.md\n  - name: a\n    notebook: notebooks/week8_report.md\n",
     "run name 'a' is used twice"),
    ("  - name: a\n    notebook: notebooks/week9.md\n", "notebook notebooks/week9.md does not exist"),
    ("  - name: a\n    notebook: notebooks/week7_analysis.md\n    parameters: {run_dir: x}\n", "set by the runner"),
    ("  - notebook: notebooks/week7_analysis.md\n", "needs a `name` and a `notebook`"),
])
def test_profile_mistakes_are_named(tmp_path: Path, runs: str, message: str) -> None:
    with pytest.raises(QLoraError, match=message):
        validate_profile(load_profile(_profile(tmp_path, runs)))


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(QLoraError, match="no profile 'cpuu'; available: .*cpu"):
        load_profile("cpuu")


def test_run_states(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    digest = config_hash("notebooks/week7_analysis.md", {"a": 1})
    assert run_state(run_dir, digest) == "missing"
    status = mark_started(run_dir, "notebooks/week7_analysis.md", {"a": 1}, "ptest")
    assert json.loads((run_dir / "config.json").read_text())["config_hash"] == digest
    assert (run_dir / "env.json").is_file()
    lock = RunLock(run_dir).path
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "now"}))  # a live process holds it
    assert run_state(run_dir, digest) == "running"
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "since": "then"}))
    assert run_state(run_dir, digest) == "partial"  # started, never finished, its runner gone (killed)
    lock.unlink()
    mark_finished(run_dir, status, 0.0)
    assert run_state(run_dir, digest) == "corrupt", "done without its executed notebook is not done"
    (run_dir / "notebook.ipynb").write_text("{}")
    (run_dir / "metrics.json").write_text('{"a": 1}')
    assert run_state(run_dir, digest) == "done"
    (run_dir / "metrics.json").write_text('{"a": ')  # cut in half
    assert run_state(run_dir, digest) == "corrupt"
    (run_dir / "metrics.json").write_text('{"a": 1}')
    assert run_state(run_dir, config_hash("notebooks/week7_analysis.md", {"a": 2})) == "stale"
    mark_finished(run_dir, status, 0.0, error="boom")
    assert run_state(run_dir, digest) == "failed"
    mark_finished(run_dir, status, 0.0, error="interrupted", interrupted=True)
    assert run_state(run_dir, digest) == "interrupted"
    long = "QLoraError: cannot take 100000 records\n\n" + "Traceback line\n" * 400 + "innermost frame"
    mark_finished(run_dir, status, 0.0, error=long)
    kept = json.loads((run_dir / "status.json").read_text())["error"]
    assert kept.splitlines()[0] == "QLoraError: cannot take 100000 records", "the cause `status` shows survives"
    assert kept.endswith("innermost frame") and len(kept) <= 2000
    (run_dir / "status.json").unlink()
    assert run_state(run_dir, digest) == "corrupt", "files without a status are not a finished run"


def test_config_hash_ignores_key_order() -> None:
    assert config_hash("n", {"a": 1, "b": 2}) == config_hash("n", {"b": 2, "a": 1}) != config_hash("n", {"a": 2, "b": 2})


def test_entries_inherit_notebook_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ptest.yaml"
    path.write_text("profile: ptest\ndefaults:\n  week2_sst2_baseline: {preset: tiny-qwen3, rank: 4}\nruns:\n"
                    "  - name: a\n    notebook: notebooks/week2_sst2_baseline.md\n    parameters: {rank: 16}\n")
    profile = load_profile(path)
    assert profile.entries[0].parameters == {"preset": "tiny-qwen3", "rank": 16}
    path.write_text("profile: ptest\ndefaults:\n  week2_sst2: {rank: 4}\nruns:\n"
                    "  - name: a\n    notebook: notebooks/week2_sst2_baseline.md\n")
    with pytest.raises(QLoraError, match="defaults for \\['week2_sst2'\\] match no notebook"):
        load_profile(path)


def test_a_run_that_another_live_runner_holds_is_skipped(tmp_path: Path) -> None:
    """Two runners over one profile never execute the same experiment at once."""
    path = _profile(tmp_path, "  - name: busy\n    notebook: notebooks/week7_analysis.md\n")
    profile = load_profile(path)
    entry = profile.entries[0]
    run_dir = profile.runs_dir(tmp_path / "runs") / "busy"
    mark_started(run_dir, entry.notebook, entry.parameters, profile.name)
    RunLock(run_dir).path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "now"}))  # live
    results = run_profile(profile, root=tmp_path / "runs", allow_dirty=True)
    assert results == {"busy": "skipped (running in another process)"}
    assert not (run_dir / "notebook.ipynb").exists()


FAKE_RUNNER = """
import json, os, sys, time
from pathlib import Path
from qlora_utils.core.records import mark_finished, mark_started
run_dir, notebook, parameters = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
state = mark_started(run_dir, notebook, parameters, "ptest")
begin = time.time()
(run_dir / "begun").write_text("")
peer = run_dir.parent / {"a": "b", "b": "a"}.get(run_dir.name, "-")  # a and b wait for each other (30 s at most),
while peer.name != "-" and not (peer / "begun").exists() and time.time() < begin + 30:  # so a slow start of one
    time.sleep(0.05)  # cannot make them miss each other; run one after the other, they do not overlap
time.sleep(0.8)
(run_dir / "notebook.ipynb").write_text("{}")
(run_dir / "metrics.json").write_text("{}")
(run_dir / "times.json").write_text(json.dumps({"begin": begin, "end": time.time(),
                                                "threads": os.environ["OMP_NUM_THREADS"]}))
mark_finished(run_dir, state, started)
"""


@pytest.mark.slow
def test_parallel_jobs_respect_needs_and_exclusive_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 2: two at a time with half the cores each; `needs` waits for its run; `exclusive` runs alone."""
    import sys

    import qlora_utils.grid.runner as runner

    root = tmp_path / "runs"
    monkeypatch.setattr(runner, "runner_command", lambda profile, entry, force, allow_dirty: [
        sys.executable, "-c", FAKE_RUNNER, str(root / profile.name / entry.name), entry.notebook,
        json.dumps(entry.parameters)])
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    notebook = f"    notebook: {WEEK1}\n"  # not an analysis, which would wait for every earlier run
    path = _profile(tmp_path, f"  - name: a\n{notebook}  - name: b\n{notebook}  - name: c\n{notebook}"
                              f"    needs: [a]\n  - name: d\n{notebook}    exclusive: true\n  - name: e\n{notebook}")
    results = run_profile(load_profile(path), root=root, jobs=2, validate=False, allow_dirty=True)
    assert results == {name: "done" for name in "abcde"}
    times = {n: json.loads((root / "ptest" / n / "times.json").read_text()) for n in "abcde"}
    assert times["a"]["begin"] < times["b"]["end"] and times["b"]["begin"] < times["a"]["end"], "a and b overlap"
    assert times["c"]["begin"] >= times["a"]["end"], "c needs a"
    assert all(times["d"]["begin"] >= times[n]["end"] for n in "abc") and times["e"]["begin"] >= times["d"]["end"]
    assert [times[n]["threads"] for n in "abcde"] == ["2", "2", "2", "4", "2"]
    assert (root / "ptest" / "a.log").is_file()


def test_needs_must_name_an_earlier_run(tmp_path: Path) -> None:
    path = _profile(tmp_path, "  - name: a\n    notebook: notebooks/week7_analysis.md\n    needs: [b]\n"
                              "  - name: b\n    notebook: notebooks/week7_analysis.md\n")
    with pytest.raises(QLoraError, match=r"run 'a' needs \['b'\], which match no earlier run"):
        load_profile(path)


def test_busy_seconds_counts_overlapping_runs_once(tmp_path: Path) -> None:
    from qlora_utils.core.records import Run, busy_seconds

    def run(start: str, end: str) -> Run:
        return Run(tmp_path, {}, {"started": f"2026-01-01T{start}+00:00", "finished": f"2026-01-01T{end}+00:00"}, {}, {})

    # 10:00-10:10 and 10:05-10:20 overlap (20 min), then a pause, then 11:00-11:01
    assert busy_seconds([run("11:00:00", "11:01:00"), run("10:00:00", "10:10:00"), run("10:05:00", "10:20:00")]) == 1260
    assert busy_seconds([]) == 0
    assert busy_seconds([run("10:00:00", "10:30:00"), run("10:05:00", "10:10:00")]) == 1800, "a run inside another"


@pytest.mark.parametrize("needs", ["    needs: ['*']\n", ""])
def test_an_analysis_is_stale_once_a_run_it_needs_finished_after_it(tmp_path: Path, needs: str) -> None:
    """With `needs` or without (the smoke profile's weeks 7 and 8 have none): an analysis reads every earlier run."""
    from qlora_utils.grid.runner import entry_state

    path = _profile(tmp_path, "  - name: a\n    notebook: notebooks/week7_analysis.md\n"
                              f"  - name: b\n    notebook: notebooks/week8_report.md\n{needs}")
    profile = load_profile(path)
    root = tmp_path / "runs"

    def finish(entry, started: str, finished: str) -> None:
        run_dir = profile.runs_dir(root) / entry.name
        status = mark_started(run_dir, entry.notebook, entry.parameters, profile.name)
        mark_finished(run_dir, status, 0.0)
        (run_dir / "notebook.ipynb").write_text("{}")
        (run_dir / "metrics.json").write_text("{}")
        done = json.loads((run_dir / "status.json").read_text())
        (run_dir / "status.json").write_text(json.dumps({**done, "started": started, "finished": finished}))

    a, b = profile.entries
    finish(a, "2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")
    finish(b, "2026-01-01T10:06:00+00:00", "2026-01-01T10:07:00+00:00")
    assert entry_state(profile, b, root) == "done"
    finish(a, "2026-01-01T11:00:00+00:00", "2026-01-01T11:05:00+00:00")  # a re-ran: b read old results
    assert entry_state(profile, b, root) == "stale"


def test_the_runs_an_entry_reads_with_needs_or_without() -> None:
    from qlora_utils.grid.profiles import prerequisites

    smoke = load_profile("smoke")
    reads = {e.name: [p.name for p in prerequisites(smoke, e)] for e in smoke.entries}
    names = [e.name for e in smoke.entries]
    assert reads["week7-analysis"] == names[:names.index("week7-analysis")], "an analysis reads every earlier run"
    assert reads["week8-report"] == names[:-1]
    assert reads["week6-winrates"] == ["week6-instruct-qlora-seed0"], "a win-rate run reads the runs it judges"
    assert reads["week2-qlora-seed0"] == [] and reads["week6-instruct-qlora-seed0"] == []
    cpu = load_profile("cpu")
    assert all(prerequisites(cpu, e) == [x for x in cpu.entries[:cpu.entries.index(e)]
                                         if any(pattern_match(x.name, n) for n in e.needs)]
               for e in cpu.entries), "the cpu profile names what each run reads in `needs` already"


def test_wall_time_table_sums_and_overlaps_per_notebook(tmp_path: Path) -> None:
    from qlora_utils.book.report import wall_time_table
    from qlora_utils.core.records import Run

    def run(notebook: str, start: str, end: str, wall: float) -> Run:
        status = {"started": f"2026-01-01T{start}+00:00", "finished": f"2026-01-01T{end}+00:00", "wall_seconds": wall}
        return Run(tmp_path, {"notebook": notebook}, status, {}, {})

    runs = [run("notebooks/week2_a.md", "10:00:00", "10:06:00", 360),  # two side by side
            run("notebooks/week2_a.md", "10:00:00", "10:06:00", 360), run("notebooks/week7_b.md", "10:06:00", "10:07:00", 60)]
    table = wall_time_table(runs).set_index("notebook")
    assert table.loc["week2_a", "sum of wall times (min)"] == 12 and table.loc["week2_a", "elapsed (min)"] == 6
    assert table.loc["whole grid"].tolist() == [3, 13, 7]


def test_a_dirty_tree_is_refused_naming_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import qlora_utils.grid.runner as runner

    monkeypatch.setattr(runner, "changed_files", lambda repo: ["qlora_utils/core/training.py"])
    path = _profile(tmp_path, "  - name: a\n    notebook: notebooks/week7_analysis.md\n")
    with pytest.raises(QLoraError, match=r"uncommitted changes to tracked files: qlora_utils/core/training.py.*--allow-dirty"):
        run_profile(load_profile(path), root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists(), "nothing ran"


def test_changed_files_sees_code_but_not_run_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from qlora_utils.core.environment import changed_files, git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "runs" / "cpu").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "runs" / "cpu" / "metrics.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert changed_files(tmp_path) == [] and not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "runs" / "cpu" / "metrics.json").write_text('{"a": 1}\n')
    assert changed_files(tmp_path) == [], "a run directory written by a run is a result, not code"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert changed_files(tmp_path) == ["code.py"] and git_commit(tmp_path).endswith("+dirty")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("QLORA_GIT_COMMIT", "f" * 40)  # inside a run: the runner's commit, unless a checkout is named
    assert git_commit(tmp_path) == head + "+dirty" and git_commit() == "f" * 40


def test_provenance_problems_name_dirty_code_mixed_commits_and_machine_paths(tmp_path: Path) -> None:
    from qlora_utils.locations import atomic_write_json
    from qlora_utils.core.records import provenance_problems, read_run

    run_dir = tmp_path / "r"
    atomic_write_json(run_dir / "env.json", {"git_commit": "a" * 40})
    atomic_write_json(run_dir / "metrics.json", {"environment": {"git_commit": "a" * 40}, "data": "local:sst2/dev.tsv"})
    assert provenance_problems(read_run(run_dir)) == []
    atomic_write_json(run_dir / "metrics.json", {"environment": {"git_commit": "b" * 40},
                                                 "data": "local:/home/someone/data/sst2/dev.tsv"})
    atomic_write_json(run_dir / "env.json", {"git_commit": "a" * 40 + "+dirty"})
    problems = provenance_problems(read_run(run_dir))
    assert problems[0] == "ran with uncommitted code (no diff)"
    assert problems[1].startswith("metrics.json records commit bbbbbbbbbbbb")
    assert problems[2].startswith("metrics.json holds a machine path (/home/someone/data/sst2/dev.tsv")


def test_scrub_replaces_every_known_machine_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sysconfig

    from qlora_utils.scrub import REPO as CHECKOUT, absolute_paths, scrub

    monkeypatch.setenv("QLORA_DATA_DIR", str(tmp_path))
    site = sysconfig.get_paths()["purelib"]
    import tempfile

    scratch = f"{tempfile.gettempdir()}/qlora-judge-x1/configs.yaml"
    text = (f"{site}/tqdm/auto.py:21 warning; {CHECKOUT}/runs/cpu/x/.source.ipynb; {tmp_path}/sst2/dev.tsv; "
            f"{scratch}")
    cleaned = scrub(text)
    assert cleaned == ("<site-packages>/tqdm/auto.py:21 warning; <repo>/runs/cpu/x/.source.ipynb; "
                       "<data>/sst2/dev.tsv; <tmp>/qlora-judge-x1/configs.yaml")
    assert absolute_paths(text) and not absolute_paths(cleaned)
    runs_elsewhere = tmp_path.parent / "gridruns"  # QLORA_RUNS_DIR outside the checkout (a grid run from a worktree)
    monkeypatch.setenv("QLORA_RUNS_DIR", str(runs_elsewhere))
    assert scrub(f"{runs_elsewhere}/quick/.a.staging/.source.ipynb") == "<runs>/quick/.a.staging/.source.ipynb"


def test_scrub_file_rewrites_the_file(tmp_path: Path) -> None:
    from qlora_utils.scrub import REPO as CHECKOUT, scrub_file

    log = tmp_path / "x.log"
    log.write_text(f"File {CHECKOUT}/qlora_utils/core/records.py:1\n")
    scrub_file(log)
    assert log.read_text() == "File <repo>/qlora_utils/core/records.py:1\n"


def test_kernels_import_this_checkout_even_when_another_is_installed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from qlora_utils.grid.runner import REPO, kernel_environment

    other = tmp_path / "other-clone" / "qlora_utils"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('the other clone was imported')\n")
    monkeypatch.setenv("PYTHONPATH", str(other.parent))  # as if the environment pointed at another checkout
    kernel_environment()
    done = subprocess.run([sys.executable, "-c", "import qlora_utils; print(qlora_utils.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().parent.parent == REPO


def test_result_files_are_readable_by_others(tmp_path: Path) -> None:
    import os
    import stat

    from qlora_utils.locations import atomic_write_json

    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_checkout_at_gives_a_temporary_worktree_of_a_commit_and_removes_it() -> None:
    import subprocess

    from qlora_utils.core.environment import git_commit
    from qlora_utils.grid.reproduce import checkout_at
    from qlora_utils.grid.runner import REPO

    commit = git_commit(REPO).removesuffix("+dirty")
    with checkout_at(commit) as tree:
        assert (tree / "qlora_utils" / "grid" / "runner.py").is_file()
        assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True,
                              text=True).stdout.strip() == commit
    assert not tree.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert str(tree) not in listed
    with pytest.raises(QLoraError, match="cannot check out commit 0000000000"):
        with checkout_at("0" * 40):
            pass


def test_a_profile_budget_is_read_and_checked(tmp_path: Path) -> None:
    assert load_profile("cpu").budget_hours == 4.0 and load_profile("quick").budget_hours == 0.75
    assert load_profile("smoke").budget_hours is None
    path = tmp_path / "budget.yaml"
    path.write_text("profile: budget\nbudget_hours: soon\nruns:\n"
                    "  - name: a\n    notebook: notebooks/week7_analysis.md\n")
    with pytest.raises(QLoraError, match="`budget_hours` must be a positive number of hours, not 'soon'"):
        load_profile(path)


@pytest.mark.parametrize("cell_ran", [False, True])
def test_a_kernel_that_never_started_is_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cell_ran: bool) -> None:
    """Two runners that start kernels at once can pick the same free port; the second kernel dies before any cell
    ran (seen in CI with `speedup`). The runner starts it again; once a cell has run, a failure is the run's."""
    import nbformat
    import papermill

    from qlora_utils.grid import runner

    calls = []

    def execute_notebook(source: str, output: str, cwd: str, **_: object) -> None:
        calls.append(output)
        notebook = nbformat.read(source, as_version=4)
        if len(calls) == 1:
            notebook.cells[0].execution_count = 1 if cell_ran else None
            nbformat.write(notebook, output)
            raise RuntimeError("Kernel died before replying to kernel_info")
        notebook.cells[0].execution_count = 1
        nbformat.write(notebook, output)
        (Path(cwd) / "metrics.json").write_text('{"a": 1}')

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(runner.time, "sleep", lambda seconds: None)
    profile = load_profile("smoke")
    entry = next(e for e in profile.entries if e.name == "week1-setup")
    if cell_ran:
        with pytest.raises(runner.RunFailed, match="Kernel died"):
            runner.execute_entry(entry, profile, root=tmp_path)
        assert len(calls) == 1
    else:
        assert runner.execute_entry(entry, profile, root=tmp_path) == "done"
        assert len(calls) == 2
        assert run_state(profile.runs_dir(tmp_path) / entry.name, entry.config_hash) == "done"



def test_a_first_attempt_keeps_its_state(tmp_path: Path) -> None:
    from qlora_utils.locations import atomic_write_json
    from qlora_utils.core.records import staging_dir

    run_dir = tmp_path / "r"
    for state in ("failed", "interrupted"):
        atomic_write_json(staging_dir(run_dir) / "status.json", {"state": state})
        assert run_state(run_dir) == state
    atomic_write_json(staging_dir(run_dir) / "status.json", {"state": "running"})
    assert run_state(run_dir) == "partial", "started and killed"


def test_clip_error_keeps_a_text_of_exactly_the_limit() -> None:
    from qlora_utils.core.records import clip_error

    assert clip_error("x" * 2000) == "x" * 2000 and clip_error("x" * 2001) != "x" * 2001


def test_replace_run_leaves_nothing_aside(tmp_path: Path) -> None:
    from qlora_utils.core.records import replace_run, staging_dir

    run_dir, staging = tmp_path / "r", staging_dir(tmp_path / "r")
    run_dir.mkdir()
    (run_dir / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_run(staging, run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and [p.name for p in run_dir.iterdir()] == ["new.txt"]


def test_recover_never_puts_an_incomplete_attempt_in_place(tmp_path: Path) -> None:
    from qlora_utils.locations import atomic_write_json
    from qlora_utils.core.records import recover, staging_dir

    run_dir, old = tmp_path / "r", tmp_path / ".r.old"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    atomic_write_json(staging_dir(run_dir) / "status.json", {"state": "done"})  # says done, lacks its files
    recover(run_dir)
    assert (run_dir / "metrics.json").is_file() and not old.exists() and staging_dir(run_dir).is_dir()


def test_a_lock_being_written_is_held_until_it_is_old(tmp_path: Path) -> None:
    import os
    import time

    lock = RunLock(tmp_path / "r")
    lock.path.write_text("")  # created, its owner not yet written (or killed at that instant)
    assert lock.held() and run_state(tmp_path / "r") == "running"
    os.utime(lock.path, (time.time() - 60,) * 2)
    assert not lock.held() and lock.acquire()
    lock.release()


def _done_entries(tmp_path: Path, names: str):
    from qlora_utils.locations import atomic_write_json

    profile = load_profile(_profile(tmp_path, "".join(f"  - {{name: {n}, notebook: {FAST}}}\n" for n in names)))
    for entry in profile.entries:
        run_dir = profile.runs_dir(tmp_path / "runs") / entry.name
        for name in ("config.json", "env.json", "notebook.ipynb", "metrics.json"):
            atomic_write_json(run_dir / name, {})
        atomic_write_json(run_dir / "status.json", {"state": "done", "config_hash": entry.config_hash})
    return profile


def test_only_patterns_are_alternatives(tmp_path: Path) -> None:
    profile = _done_entries(tmp_path, "abc")
    assert run_profile(profile, root=tmp_path / "runs", only=["a", "b"], validate=False, allow_dirty=True) == {
        "a": "skipped (done)", "b": "skipped (done)"}


@pytest.mark.slow
def test_jobs_caps_the_runs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import qlora_utils.grid.runner as runner

    root = tmp_path / "runs"
    monkeypatch.setattr(runner, "runner_command", lambda profile, entry, force, allow_dirty: [
        sys.executable, "-c", FAKE_RUNNER, str(root / profile.name / entry.name), entry.notebook,
        json.dumps(entry.parameters)])
    path = _profile(tmp_path, "".join(f"  - {{name: {n}, notebook: {WEEK1}}}\n" for n in "abc"))
    assert run_profile(load_profile(path), root=root, jobs=2, validate=False, allow_dirty=True) == dict.fromkeys(
        "abc", "done")
    times = {n: json.loads((root / "ptest" / n / "times.json").read_text()) for n in "abc"}
    assert times["c"]["begin"] >= min(times["a"]["end"], times["b"]["end"]), "never three at once with --jobs 2"


def test_check_inputs_names_a_missing_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_utils.grid.runner import check_inputs

    monkeypatch.setenv("QLORA_DATA_DIR", str(tmp_path))
    with pytest.raises(QLoraError, match=r"lacks .*sst2.*which these runs read"):
        check_inputs(list(load_profile(_profile(tmp_path, f"  - {{name: a, notebook: {WEEK2}}}\n")).entries))


@pytest.mark.slow
def test_a_dirty_run_keeps_its_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qlora_utils.core.environment as environment

    monkeypatch.setattr(environment, "changed_files", lambda path=None: ["qlora_utils/edited.py"])
    path = _profile(tmp_path, f"  - {{name: a, notebook: {FAST}}}\n")
    assert run_profile(load_profile(path), root=tmp_path / "runs", validate=False, allow_dirty=True) == {"a": "done"}
    run = tmp_path / "runs" / "ptest" / "a"
    assert json.loads((run / "env.json").read_text())["git_commit"].endswith("+dirty")
    assert (run / "uncommitted.diff").is_file()


def _invalid(tmp_path: Path, notebook: str, parameters: str) -> str:
    with pytest.raises(QLoraError) as info:
        validate_profile(load_profile(_profile(tmp_path, f"  - {{name: w, notebook: {notebook}, "
                                                         f"parameters: {parameters}}}\n")))
    return str(info.value)


def test_value_checks_at_their_edges(tmp_path: Path) -> None:
    assert "'zero_shot'=None is not of type bool" in _invalid(tmp_path, WEEK2, "{zero_shot: null}")
    assert "instruct_runs names ['w']" in _invalid(tmp_path, WEEK6, "{kind: winrates, instruct_runs: [w]}"), \
        "a run cannot judge itself"
    assert "dropout=1.0 must be in [0, 1)" in _invalid(tmp_path, WEEK2, "{dropout: 1.0}")
    assert "judge='openai:' must be local:PRESET" in _invalid(tmp_path, WEEK6, "{kind: winrates, judge: 'openai:'}")


@pytest.mark.slow
def test_a_planned_entry_is_committed_before_it_runs_and_runs_only_when_asked(tmp_path: Path) -> None:
    """The plan is fixed in the profile first; `run` (and so `make book`) leaves it alone, `status` says planned, and
    the book does not wait for it; `run --planned` starts it."""
    from qlora_utils.grid.runner import state_detail, status

    path = _profile(tmp_path, "  - name: ready\n    notebook: notebooks/week7_analysis.md\n"
                              "  - name: later\n    notebook: notebooks/week7_analysis.md\n    planned: true\n")
    profile = load_profile(path)
    assert [e.planned for e in profile.entries] == [False, True]
    root = tmp_path / "runs"
    assert status(profile, root) == [("ready", "missing"), ("later", "planned")]
    assert "run --planned" in state_detail(profile, profile.entries[1], "planned", root)
    results = run_profile(profile, root=root, allow_dirty=True)
    assert list(results) == ["ready"] and results["ready"] == "done"
    assert status(profile, root) == [("ready", "done"), ("later", "planned")]
    results = run_profile(profile, root=root, allow_dirty=True, planned=True, only=["later"])
    assert results == {"later": "done"}
    assert "drop its `planned: true`" in state_detail(profile, profile.entries[1], "done", root)
    assert "planned" not in {s for _, s in status(profile, root)}
    with pytest.raises(QLoraError, match="unknown keys"):
        load_profile(_profile(tmp_path, "  - {name: x, notebook: notebooks/week7_analysis.md, plan: true}\n"))
