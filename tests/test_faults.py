"""Fault injection: bad inputs end in one clear error (the file, run or parameter and the fix, no traceback), and
faults (concurrent runners, --force over a bad input, corrupt records, kill, SIGTERM, Ctrl-C, a full disk, a failing
notebook) are survived with nothing lost and no run executed twice."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlora_utils.core.records import profile_runs_dir, read_json, run_state
from qlora_utils.errors import QLoraError
from qlora_utils.grid.profiles import load_profile
from qlora_utils.grid.runner import REPO, run_profile, status

SMOKE_RUN = "notebooks/week2_sst2_baseline.md"


def cli(*args: str, env: dict[str, str] | None = None, **popen: object) -> subprocess.CompletedProcess[str]:
    """The command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "qlora_utils", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900, **popen)


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command line's main() in this process (the same code path, without a new interpreter per case)."""
    from qlora_utils.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def one_clear_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, one `error:` message containing the words, and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    for word in words:  # a profile's problems are listed one per line under the one error
        assert word in done.stderr, (word, done.stderr[-2000:])


def profile(tmp_path: Path, runs: str, name: str = "faults", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"profile: {name}\n{extra}runs:\n{runs}")
    return path


WEEK2 = "notebooks/week2_sst2_baseline.md"
WEEK6 = "notebooks/week6_alpacaeval_efficiency.md"
BAD_PROFILES = [
    # (the run's parameters or a whole bad file, the words the error must contain)
    ("{preset: nope}", ["preset='nope' is not one of"]),
    ("{rank: 0}", ["rank=0 must be positive"]),
    ("{rank: -1}", ["rank=-1 must be positive"]),
    ("{placement: bogus}", ["placement='bogus' is not one of", "attention_mlp"]),
    ("{mode: int3}", ["mode='int3' is not one of", "nf4"]),
    ("{mode: full, rank: 0, placement: bogus}", ["rank=0 must be positive", "mean(s) nothing for mode 'full'"]),
    ("{learning_rate: 0.0}", ["learning_rate=0.0 must be positive"]),
    ("{learning_rate: 3e-05}", ["learning_rate='3e-05' is text, not a number: write it with a dot, e.g. 3.0e-5"]),
    ("{dropout: 1.5}", ["dropout=1.5 must be in [0, 1)"]),
    ("{scheduler: sometimes}", ["scheduler='sometimes' is not one of"]),
    ("{batch_size: 0}", ["batch_size=0 must be positive"]),
    ("{train_examples: -5}", ["train_examples=-5 must be positive"]),
    ("{train_examples: 100000}", ["train_examples=100000 is more than the 66849 sst2 training records",
                                  "less the 500-sentence selection split", "use at most 66849"]),
    ("{eval_examples: -1}", ["eval_examples=-1 must be 0 or more"]),
    ("{eval_examples: 873}", ["eval_examples=873 is more than the 872 records", "or 0 for all of them"]),
    ("{epochs: 0.0}", ["epochs=0.0 must be positive"]),
    ("{rank: eight}", ["parameter 'rank'='eight' is not of type int"]),
    ("{ranks: 8}", ["unknown parameter 'ranks'"]),
    ("{run_dir: /tmp}", ["parameter 'run_dir' is set by the runner"]),
]
BAD_WEEK6 = [
    ("{kind: bogus}", ["kind='bogus' is not one of", "winrates"]),
    ("{kind: winrates, judge: gpt4}", ["judge='gpt4' must be local:PRESET"]),
    ("{kind: winrates, references: [nope]}", ["references=['nope'] must be a non-empty list"]),
    ("{kind: winrates, instruct_runs: [ghost]}", ["instruct_runs names ['ghost']"]),
    ("{max_new_tokens: 0}", ["max_new_tokens=0 must be positive"]),
    ("{kind: instruct, eval_examples: 900}", ["eval_examples=900 is more than the 805 records"]),
]
BAD_FILES = [
    ("profile: faults\nruns: [\n", ["not valid YAML at line", "faults.yaml"]),
    ("- a\n- b\n", ["a profile is a mapping", "holds a list"]),
    ("profile: faults\nruns: {a: 1}\n", ["`runs` must be a list"]),
    ("profile: faults\nruns:\n  - {name: a}\n", ["run #1 needs a `name` and a `notebook`"]),
    (f"profile: faults\nruns:\n  - {{name: a, notebook: {WEEK2}}}\n  - {{name: a, notebook: {WEEK2}}}\n",
     ["run name 'a' is used twice"]),
    (f"profile: faults\nruns:\n  - {{name: a, notebook: {WEEK2}, needs: [b]}}\n",
     ["needs ['b'], which match no earlier"]),
    (f"profile: faults\ndefaults:\n  week9: {{rank: 4}}\nruns:\n  - {{name: a, notebook: {WEEK2}}}\n",
     ["defaults for ['week9'] match no notebook"]),
    (f"profile: faults\nruns:\n  - {{name: a, notebook: {WEEK2}, parameters: [1, 2]}}\n",
     ["`parameters` must be a mapping"]),
    ("profile: faults\nruns:\n  - {name: a, notebook: notebooks/week9.md}\n",
     ["notebook notebooks/week9.md does not exist"]),
    (f"profile: faults\nruns:\n  - {{name: a, notebook: {WEEK2}, group: [1]}}\n", ["`group` must be a name"]),
    (f"profile: faults\ncluster: [1]\nruns:\n  - {{name: a, notebook: {WEEK2}}}\n", ["`cluster` must be a mapping"]),
    (f"profile: faults\ncluster: {{gpus: 1}}\nruns:\n  - {{name: a, notebook: {WEEK2}}}\n",
     ["unknown cluster settings ['gpus']", "gpus_per_run"]),
    (f"profile: faults\ncluster: {{cpus_per_run: 0, time_min: two}}\nruns:\n  - {{name: a, notebook: {WEEK2}}}\n",
     ["cluster settings ['cpus_per_run', 'time_min'] must be positive numbers"]),
]


@pytest.mark.parametrize("parameters,words", BAD_PROFILES)
def test_bad_week2_parameters_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  parameters: str, words: list[str]) -> None:
    path = profile(tmp_path, f"  - {{name: bad, notebook: {WEEK2}, parameters: {parameters}}}\n")
    one_clear_error(main_in_process(capsys, "validate", str(path)), "run 'bad'", *words)


@pytest.mark.parametrize("parameters,words", BAD_WEEK6)
def test_bad_week6_parameters_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  parameters: str, words: list[str]) -> None:
    path = profile(tmp_path, f"  - {{name: bad, notebook: {WEEK6}, parameters: {parameters}}}\n")
    one_clear_error(main_in_process(capsys, "validate", str(path)), *words)


@pytest.mark.parametrize("text,words", BAD_FILES)
def test_bad_profile_files_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                              words: list[str]) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(text)
    one_clear_error(main_in_process(capsys, "validate", str(path)), *words)


@pytest.mark.parametrize("args,words", [
    (["plan", "--model", "qwen3-8b", "--batch", "0"], ["--batch: must be at least 1"]),
    (["plan", "--model", "qwen3-8b", "--batch", "-3"], ["--batch: must be at least 1"]),
    (["plan", "--model", "qwen3-8b", "--seq", "-5"], ["--seq: must be at least 1"]),
    (["plan", "--model", "qwen3-8b", "--gpu-gib", "-1"], ["--gpu-gib: must be above 0"]),
    (["plan", "--model", "nope"], ["unknown model preset 'nope'"]),
    (["run", "smoke", "--jobs", "0"], ["--jobs: must be at least 1"]),
    (["run", "smoke", "--executor", "pbs"], ["--executor: invalid choice: 'pbs'"]),
    (["run", "smoke", "--executor", "local", "--jobs", "2", "--allow-dirty"], ["--force, --jobs and --keep-going do not apply"]),
    (["run", "nope"], ["no profile 'nope'"]),
    (["run", "smoke", "--only", "week99-*", "--allow-dirty"], ["no run of profile 'smoke' matches",
                                                               "python -m qlora_utils status smoke"]),
    (["status", "nope"], ["no profile 'nope'"]),
    (["book", "--profile", "nope"], ["no profile 'nope'"]),
    (["sst2", "--lr", "-1"], ["--lr: must be above 0"]),
    (["sst2", "--train-examples", "0"], ["--train-examples: must be at least 1"]),
])
def test_bad_command_lines_are_one_clear_error(capsys: pytest.CaptureFixture[str], args: list[str],
                                              words: list[str]) -> None:
    one_clear_error(main_in_process(capsys, *args), *words)


@pytest.mark.slow
def test_a_copied_profile_that_kept_the_originals_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of smoke.yaml under another file name that kept `profile: smoke` would write into runs/smoke/ (the run
    folder follows the key): it is refused and nothing of the original's runs changes; renamed, it writes only under
    its own name."""
    root = tmp_path / "runs"
    finished = root / "smoke" / "week2-qlora-seed0"  # the original's finished run
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text('{"accuracy": 0.5}')
    monkeypatch.setenv("QLORA_RUNS_DIR", str(root))
    copy = tmp_path / "b-copyname.yaml"
    text = (REPO / "profiles" / "smoke.yaml").read_text().replace("learning_rate: 0.01", "learning_rate: 0.02", 1)
    copy.write_text(text)
    one_clear_error(main_in_process(capsys, "run", str(copy), "--only", "week2-qlora-seed0", "--allow-dirty"),
                    "`profile: smoke` disagrees with the file's name 'b-copyname'",
                    "rename the key to `profile: b-copyname` or the file to smoke.yaml")
    assert [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))] == [
        "smoke", "smoke/week2-qlora-seed0", "smoke/week2-qlora-seed0/metrics.json"]
    copy.write_text(text.replace("profile: smoke", "profile: b-copyname", 1))
    results = run_profile(load_profile(copy), only=["week7-analysis"], validate=False, allow_dirty=True)
    assert results == {"week7-analysis": "done"}
    assert sorted(p.name for p in root.iterdir()) == ["b-copyname", "smoke"]
    assert run_state(root / "b-copyname" / "week7-analysis") == "done"
    assert [p.name for p in (root / "smoke").iterdir()] == ["week2-qlora-seed0"]
    assert (finished / "metrics.json").read_text() == '{"accuracy": 0.5}'


def test_a_failed_experiment_leaves_no_empty_output_folder(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    output = tmp_path / "out"
    one_clear_error(main_in_process(capsys, "sst2", "--model", "nope", "--output", str(output)),
                    "unknown model preset 'nope'")
    assert not output.exists()


SST2_HEADER = "sentence\tlabel\n"


@pytest.mark.parametrize("content,words", [
    (SST2_HEADER + "a fine film\t1\nhalf a li", ["line 3", "a label 0 or 1"]),
    (SST2_HEADER + "a fine film\t1\nno label here\n", ["line 3"]),
    (SST2_HEADER + "a fine film\t2\n", ["line 2", "label='2'"]),
    (SST2_HEADER, ["holds no records"]),
    ("", ["line 1 must be the header"]),
    ("text\tscore\nx\t1\n", ["line 1 must be the header"]),
])
def test_bad_sst2_files_name_the_file_and_line(tmp_path: Path, data_dir: Path, content: str,
                                               words: list[str]) -> None:
    from qlora_utils.core.data import load_task

    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_text(content)
    with pytest.raises(QLoraError) as caught:
        load_task("sst2", "validation", data_dir=tmp_path)
    assert "dev.tsv" in str(caught.value) and all(w in str(caught.value) for w in words), str(caught.value)


@pytest.mark.parametrize("relative,content,words", [
    ("squad_v1.1/dev-v1.1.json", '{"data": [', ["line 1", "not valid JSON"]),
    ("squad_v1.1/dev-v1.1.json", '{"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}',
     ["article 0, paragraph 0, question 0 lacks 'question'"]),
    ("alpaca_train/alpaca_data.json", '{"instruction": "x"}', ["expected a non-empty JSON list"]),
    ("alpaca_train/alpaca_data.json", '[{"instruction": "x"}]', ["lack the column(s) ['input', 'output']"]),
])
def test_bad_json_files_name_the_file(tmp_path: Path, relative: str, content: str, words: list[str]) -> None:
    from qlora_utils.core.data import load_task

    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(content)
    task, split = ("squad", "validation") if "squad" in relative else ("alpaca", "train")
    with pytest.raises(QLoraError) as caught:
        load_task(task, split, data_dir=tmp_path)
    assert all(w in str(caught.value) for w in words), str(caught.value)


# ---------------------------------------------------------------- faults, on real runs of tiny notebooks

FAST = "notebooks/week7_analysis.md"  # reads runs, trains nothing: a run of seconds
SLOW = "notebooks/week1_setup.md"  # loads tokenizers and data: long enough to be interrupted


def _runs_env(tmp_path: Path) -> dict[str, str]:
    return {"QLORA_RUNS_DIR": str(tmp_path / "runs")}


def _wait_for(path: Path, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
def test_two_runners_never_execute_one_run_twice(tmp_path: Path, data_dir: Path) -> None:
    path = profile(tmp_path, f"  - {{name: slow, notebook: {SLOW}, parameters: {{model: tiny-qwen2, "
                             "table_presets: [tiny-qwen2], peft_check_presets: [tiny-qwen2], length_sample: 400}}\n")
    command = [sys.executable, "-m", "qlora_utils", "run", str(path), "--force", "--allow-dirty"]
    env = {**os.environ, **_runs_env(tmp_path)}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "runs" / "faults" / ".slow.lock")
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "slow" in out and "done" in out
    assert second.returncode == 0 and "skipped (running in another process)" in second.stdout
    run = tmp_path / "runs" / "faults" / "slow"
    assert run_state(run) == "done" and not (tmp_path / "runs" / "faults" / ".slow.lock").exists()


@pytest.mark.slow
def test_force_over_a_bad_data_directory_keeps_the_finished_run(tmp_path: Path) -> None:
    path = profile(tmp_path, f"  - {{name: fast, notebook: {FAST}}}\n")
    assert cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path)).returncode == 0
    metrics = tmp_path / "runs" / "faults" / "fast" / "metrics.json"
    before = metrics.read_text()
    done = cli("run", str(path), "--only", "fast", "--force", "--allow-dirty",
               env={**_runs_env(tmp_path), "QLORA_DATA_DIR": "/nonexistent"})
    one_clear_error(done, "data directory '/nonexistent' (from $QLORA_DATA_DIR) does not exist", "--data-dir")
    assert metrics.read_text() == before and run_state(metrics.parent) == "done"


@pytest.mark.slow
def test_a_failing_attempt_keeps_the_finished_run_and_shows_its_cause(tmp_path: Path, data_dir: Path) -> None:
    path = profile(tmp_path, "  - {name: squad, notebook: notebooks/week4_squad.md, parameters: {train_examples: 4, "
                             "eval_examples: 2, max_new_tokens: 4, batch_size: 2, zero_shot: false}}\n")
    assert cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path)).returncode == 0
    run = tmp_path / "runs" / "faults" / "squad"
    before = (run / "metrics.json").read_text()
    path.write_text(path.read_text().replace("batch_size: 2", "batch_size: 2, max_length: 1"))
    done = cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path))
    one_clear_error(done, "run 'squad' failed: QLoraError: every squad example is longer than max_length=1",
                    "The previous finished run is kept", ".squad.staging")
    assert (run / "metrics.json").read_text() == before, "the finished run is untouched"
    assert read_json(tmp_path / "runs" / "faults" / ".squad.staging" / "status.json")["state"] == "failed"
    assert read_json(tmp_path / "runs" / "faults" / ".squad.staging" / "notebook.failed.ipynb") is not None


@pytest.mark.slow
def test_corrupt_records_are_found_redone_and_block_the_book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = profile(tmp_path, f"  - {{name: a, notebook: {FAST}}}\n  - {{name: b, notebook: {FAST}}}\n")
    assert cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path)).returncode == 0
    runs = tmp_path / "runs" / "faults"
    metrics = (runs / "a" / "metrics.json").read_text()
    (runs / "a" / "metrics.json").write_text(metrics[: len(metrics) // 2])  # cut in half
    (runs / "b" / "status.json").unlink()
    shown = cli("status", str(path), env=_runs_env(tmp_path))
    assert "corrupt" in shown.stdout.split("a ", 1)[1].splitlines()[0] and shown.stdout.count("corrupt") >= 2
    import qlora_utils.book.build as book

    monkeypatch.setenv("QLORA_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(QLoraError, match=r"the book reads runs/smoke/ of this repository, but QLORA_RUNS_DIR"):
        book.build_book("smoke")  # its table of contents would glob the repository's runs/, not these
    monkeypatch.delenv("QLORA_RUNS_DIR")
    monkeypatch.setattr(book, "status", lambda prof: [("a", "corrupt"), ("b", "corrupt"), ("c", "done")])
    monkeypatch.setattr(book, "profile_runs_dir", lambda name: REPO / "runs")
    with pytest.raises(QLoraError, match=r"needs every run finished; 2 are not: a \(corrupt\), b \(corrupt\).*--partial"):
        book.build_book("smoke")
    again = cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path))
    assert again.returncode == 0 and again.stdout.count("done") == 2, again.stdout
    assert json.loads((runs / "a" / "metrics.json").read_text()) and (runs / "b" / "status.json").is_file()


def test_a_run_that_changes_while_the_book_builds_fails_the_book(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`book` started, then `run smoke --only 'week2-*' --force` finished runs during the build: the book exited 0 with
    an appendix of the old runs and embedded notebooks of the new. The build (jupyter-book, faked here) is checked
    against a snapshot of the runs taken at its start."""
    import qlora_utils.book.build as book

    runs = tmp_path / "runs" / "smoke"
    for name in ("week1-setup", "week2-qlora-seed0", "week2-full-seed0"):
        (runs / name).mkdir(parents=True)
        (runs / name / "status.json").write_text('{"state": "done", "finished": "2026-01-01T10:00:00+00:00"}')
        (runs / name / "metrics.json").write_text('{"accuracy": 0.5}')
    for target, value in [("REPO", tmp_path), ("profile_runs_dir", lambda name: tmp_path / "runs" / name),
                          ("toc_for", lambda name: tmp_path / "_toc.yml"), ("kernel_environment", lambda: None),
                          ("status", lambda prof: [(e.name, "done") for e in prof.entries])]:
        monkeypatch.setattr(book, target, value)
    rerun: list[str] = []

    def jupyter_book(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        for name in rerun:  # a runner replaces these runs while the pages are being executed
            (runs / name / "status.json").write_text('{"state": "done", "finished": "2026-01-01T10:00:15+00:00"}')
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(book.subprocess, "run", jupyter_book)
    assert book.build_book("smoke", output=tmp_path) == tmp_path / "_build" / "html", "nothing changed: built"
    rerun[:] = ["week2-qlora-seed0", "week2-full-seed0"]
    with pytest.raises(QLoraError) as caught:
        book.build_book("smoke", output=tmp_path)
    assert str(caught.value) == ("run(s) week2-full-seed0, week2-qlora-seed0 of profile 'smoke' changed while the book "
                                 "was being built (a runner finished them), so its pages may mix their old and new "
                                 "states; build it again once no runner is writing runs/smoke/")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_recorded_as_interrupted_and_the_finished_run_survives(tmp_path: Path, data_dir: Path,
                                                                           sig: signal.Signals) -> None:
    path = profile(tmp_path, f"  - {{name: slow, notebook: {SLOW}, parameters: {{model: tiny-qwen2, "
                             "table_presets: [tiny-qwen2], peft_check_presets: [tiny-qwen2], length_sample: 400}}\n")
    assert cli("run", str(path), "--allow-dirty", env=_runs_env(tmp_path)).returncode == 0
    run = tmp_path / "runs" / "faults" / "slow"
    before = (run / "metrics.json").read_text()
    # as typed in a terminal: SIGINT handled, even when this test itself runs in a background job (which inherits
    # SIGINT ignored, and Python keeps an inherited "ignore")
    process = subprocess.Popen([sys.executable, "-m", "qlora_utils", "run", str(path), "--force", "--allow-dirty"],
                               cwd=REPO, env={**os.environ, **_runs_env(tmp_path)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(tmp_path / "runs" / "faults" / ".slow.staging" / "notebook.partial.ipynb")
    time.sleep(2)
    os.killpg(process.pid, sig)  # Ctrl-C reaches the whole process group; `kill` only the runner
    _, err = process.communicate(timeout=300)
    # the runner ends with its one message and no traceback, neither its own nor the kernel's: a kernel stopped
    # mid-cell logs its shutdown (`[IPKernelApp] ERROR … ZMQError: Socket operation on non-socket`) into the
    # attempt's kernel.log, not onto the terminal
    assert process.returncode == 130 and err.rstrip().splitlines()[-1].startswith("interrupted:"), err[-2000:]
    for noise in ("Traceback", "KeyboardInterrupt", "ZMQError", "IPKernelApp", "qlora_utils/grid/runner.py"):
        assert noise not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.strip() and not line.startswith("faults: ")]  # no bar
    assert len(said) == 1, f"one line: {err[-3000:]}"
    attempt = read_json(tmp_path / "runs" / "faults" / ".slow.staging" / "status.json")
    assert attempt["state"] == "interrupted"
    assert (tmp_path / "runs" / "faults" / ".slow.staging" / "kernel.log").is_file()
    assert (run / "metrics.json").read_text() == before and run_state(run) == "done"
    assert not (tmp_path / "runs" / "faults" / ".slow.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args,codes", [(["status", "smoke"], {141}), (["--help"], {0, 141})])
def test_output_into_a_closed_pipe_ends_quietly(args: list[str], codes: set[int]) -> None:
    """`python -m qlora_utils status smoke | head -3` printed a BrokenPipeError traceback. A reader that left ends the
    command as it ends a Unix tool: no traceback, no message, status 141 (argparse's help ignores the closed pipe)."""
    command = [sys.executable, "-m", "qlora_utils", *args]
    head = subprocess.run(" ".join(command) + " | head -1", shell=True, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert len(head.stdout.splitlines()) == 1 and head.stderr == "", head.stderr[-2000:]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader left before the first line was written
    err = process.stderr.read()
    assert process.wait(timeout=300) in codes and err == "", err[-2000:]


@pytest.mark.slow
def test_a_full_disk_is_named_and_leaves_no_broken_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    path = profile(tmp_path, f"  - {{name: fast, notebook: {FAST}}}\n")
    root = tmp_path / "runs"
    assert run_profile(load_profile(path), root=root, allow_dirty=True) == {"fast": "done"}
    before = (root / "faults" / "fast" / "metrics.json").read_text()

    def disk_full(source: str, output: str, **_: object) -> None:
        Path(output).write_text('{"cells": [')  # the disk filled while papermill saved the notebook
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", disk_full)
    with pytest.raises(QLoraError, match=r"no space left on the disk that holds .*free some space.*previous finished"):
        run_profile(load_profile(path), root=root, force=True, allow_dirty=True)
    staging = root / "faults" / ".fast.staging"
    assert not (staging / "notebook.failed.ipynb").exists() and not (staging / "notebook.partial.ipynb").exists()
    assert read_json(staging / "status.json")["state"] == "failed"
    assert (root / "faults" / "fast" / "metrics.json").read_text() == before
    assert dict(status(load_profile(path), root=root)) == {"fast": "done"}


@pytest.mark.parametrize("refused", ["lock", "staging"])
def test_a_runs_folder_that_cannot_be_written_is_named_and_no_folder_that_was_never_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str) -> None:
    """A read-only runs folder (simulated: tests may run as root, who writes anywhere): the run's lock or its attempt
    cannot be created. The error names the folder and the fix, and no folder that does not exist (it once said "The
    attempt is in …/.NAME.staging", never created)."""
    from qlora_utils.grid import runner

    runs = tmp_path / "runs" / "faults"
    runs.mkdir(parents=True)

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(runs / f".fast.{refused}"))

    monkeypatch.setattr(*((runner.RunLock, "acquire") if refused == "lock" else (runner, "mark_started")), refuse)
    path = profile(tmp_path, f"  - {{name: fast, notebook: {FAST}}}\n")
    with pytest.raises(QLoraError) as caught:
        run_profile(load_profile(path), root=tmp_path / "runs", validate=False, allow_dirty=True)
    assert str(caught.value) == (f"run 'fast': cannot write in {runs} (Permission denied); make it writable, or set "
                                 "QLORA_RUNS_DIR to a folder you can write in. There was no earlier finished run.")
    assert sorted(runs.iterdir()) == []


def test_failure_cause_names_the_exception_and_where() -> None:
    from qlora_utils.scrub import placeholders
    from qlora_utils.grid.runner import failure_cause

    site = next(p for p, name in placeholders() if name == "<site-packages>")

    class Fake(Exception):
        ename, evalue, exec_count = "ValueError", "boom", 3
        traceback = ["\x1b[0;31mValueError\x1b[0m Traceback", f"File {site}/lib/x.py:12, in f()", "ValueError: boom"]

    assert failure_cause(Fake()) == "ValueError: boom (File <site-packages>/lib/x.py:12, in f)"


@pytest.mark.slow
def test_status_says_why(tmp_path: Path) -> None:
    from qlora_utils.grid.runner import state_detail

    path = profile(tmp_path, f"  - {{name: a, notebook: {FAST}}}\n")
    prof = load_profile(path)
    assert run_profile(prof, root=tmp_path / "runs", allow_dirty=True) == {"a": "done"}
    (tmp_path / "runs" / "faults" / "a" / "notebook.ipynb").unlink()
    (state,) = [s for _, s in status(prof, root=tmp_path / "runs")]
    assert state == "corrupt"
    assert state_detail(prof, prof.entries[0], state, root=tmp_path / "runs") == "notebook.ipynb is missing"


@pytest.mark.slow
def test_a_tree_changed_mid_grid_stops_before_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clean-tree check runs again before each run: code edited while a grid runs never passes for the commit
    (the finished run is kept, the next one does not start)."""
    from qlora_utils.grid import runner

    answers = iter([[], [], ["qlora_utils/edited.py"]])  # the start, run one, then run two
    monkeypatch.setattr(runner, "changed_files", lambda repo: next(answers))
    path = profile(tmp_path, f"  - {{name: one, notebook: {FAST}}}\n  - {{name: two, notebook: {FAST}}}\n")
    with pytest.raises(QLoraError, match="uncommitted changes to tracked files: qlora_utils/edited.py"):
        run_profile(load_profile(path), root=tmp_path / "runs")
    runs = tmp_path / "runs" / "faults"
    assert run_state(runs / "one") == "done" and not (runs / "two").exists()
