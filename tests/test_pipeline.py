"""End to end: every notebook through the runner with the smoke profile, the book built from the runs with warnings
as errors, and a run killed in the middle reported as partial and resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlora_utils.book.build import build_book
from qlora_utils.book.svgcheck import is_placeholder, mark_problems
from qlora_utils.core.records import read_run
from qlora_utils.grid.profiles import load_profile
from qlora_utils.grid.runner import REPO, run_profile, status

FIGURES = {"week2_sst2_baseline": 2, "week3_scaling": 2, "week5_ablations": 1, "week7_analysis": 1}


def check_book_images(html: Path) -> dict[str, int]:
    """Every SVG image of every page of a built book (chapters and the appendix's run notebooks) draws its data
    marks (`svgcheck.mark_problems`: no blank bars, no NaN); returns the drawn, non-placeholder images per page.
    Placeholders (a text-only chart for a week without runs) pass here; FIGURES says where drawn charts must be."""
    drawn = {}
    for path in sorted(html.rglob("*.html")):
        page = path.read_text(encoding="utf-8")
        rel = path.relative_to(html).as_posix()
        drawn[rel] = 0
        for source in re.findall(r'<img [^>]*src="((?:\.\./)*_images/[^"]+\.svg)"', page):
            svg = (path.parent / source).read_text(encoding="utf-8")
            problems = mark_problems(svg)
            assert problems == [], f"{rel}: {source} is not drawn: {problems}"
            drawn[rel] += int(not is_placeholder(svg))
    return drawn


def test_smoke_profile_runs_every_notebook_and_builds_the_book(tmp_path: Path, data_dir: Path) -> None:
    profile = load_profile("smoke")
    shutil.rmtree(profile.runs_dir(REPO / "runs"), ignore_errors=True)
    results = run_profile(profile, root=REPO / "runs", allow_dirty=True)
    assert set(results.values()) == {"done"}, results
    assert {Path(e.notebook).stem[:5] for e in profile.entries} == {f"week{i}" for i in range(1, 9)}
    for entry in profile.entries:
        run = read_run(profile.runs_dir(REPO / "runs") / entry.name)
        assert run.status["state"] == "done" and run.status["wall_seconds"] > 0
        assert run.config["parameters"] == entry.parameters and run.env["versions"]["torch"]
        assert run.metrics, f"{entry.name} recorded no metrics"
    assert run_profile(profile, root=REPO / "runs", allow_dirty=True) == {e.name: "skipped (done)" for e in profile.entries}

    html = build_book("smoke", output=tmp_path)
    drawn = check_book_images(html)
    for stem, figures in FIGURES.items():
        page = (html / "book" / f"{stem}.html").read_text(encoding="utf-8")
        images = re.findall(r'<img [^>]*src="\.\./(_images/[0-9a-f]+\.svg)"', page)
        assert len(images) >= figures, f"{stem}: figures missing"
        assert drawn.get(f"book/{stem}.html", 0) >= figures, f"{stem}: placeholders where the smoke runs should draw"
        assert "cdn.jsdelivr.net/npm/vega" not in page, "charts are static SVG, nothing loads Vega from a CDN"
    methods = (html / "book" / "methods.html").read_text(encoding="utf-8")
    assert "mathjax/tex-chtml.js" in methods and "cdn.jsdelivr.net/npm/mathjax" not in methods, \
        "math renders offline: MathJax is served from the build"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    week2_page = (html / "book" / "week2_sst2_baseline.html").read_text(encoding="utf-8")
    assert "Does training move the metric?" in week2_page and "tbl-week2-pilot" in week2_page
    appendix = (html / "book" / "appendix_runs.html").read_text(encoding="utf-8")
    assert appendix.count("<table") >= 2 and "|:--" not in appendix, "run tables render as tables, not as text"
    for entry in profile.entries:
        assert (html / "runs" / "smoke" / entry.name / "notebook.html").is_file()
        assert f"runs/smoke/{entry.name}/notebook.html" in appendix


@pytest.mark.slow
def test_killed_run_is_partial_and_the_rerun_skips_finished_runs(tmp_path: Path) -> None:
    profile = tmp_path / "kill.yaml"
    profile.write_text("profile: kill\nruns:\n"
                       "  - {name: first, notebook: notebooks/week7_analysis.md}\n"
                       "  - {name: second, notebook: notebooks/week1_setup.md, parameters: {length_sample: 2000}}\n")
    env = {**os.environ, "QLORA_RUNS_DIR": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "qlora_utils", "run", str(profile), "--allow-dirty"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    second = tmp_path / "runs" / "kill" / ".second.staging" / "status.json"  # the attempt runs in staging
    deadline = time.time() + 240
    while not second.is_file() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up: as if the machine went away
    process.wait()
    states = dict(status(load_profile(profile), root=tmp_path / "runs"))
    assert states == {"first": "done", "second": "partial"}
    assert json.loads(second.read_text())["state"] == "running"
    rerun = subprocess.run(command + ["--only", "first"], env=env, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0 and "first" in rerun.stdout and "skipped (done)" in rerun.stdout
