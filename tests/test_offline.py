"""Offline means offline: with a local data directory configured, loading data and a local model and computing win
rates make no network connection at all, even with the Hub's own offline switch off (the proxy points at a local
server that counts every connection attempt)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from qlora_utils.grid.runner import REPO

SCRIPT = """
import pandas as pd
from qlora_utils.core.data import load_task
from qlora_utils.core.models import load_model
from qlora_utils.study.winrate import win_rate
load_task("sst2", "validation", n=8)
load_model("tiny-qwen2", "bf16")
pairs = pd.DataFrame({"preference": [1.0, 2.0, 1.5, 2.0], "consistent": [True, False, True, True],
                      "generator_1": "a", "generator_2": "b", "output_1": ["x"] * 4, "output_2": ["yy"] * 4,
                      "instruction": ["i"] * 4, "index": range(4)})
result = win_rate(pairs)
print("LC:", result["length_controlled_note"])
"""


@pytest.mark.slow
def test_offline_runs_make_no_connection(data_dir: Path, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    attempts: list[tuple] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, address = server.accept()
            except OSError:
                continue
            attempts.append(address)
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                                   "TRANSFORMERS_OFFLINE"))}
    env.update(QLORA_DATA_DIR=str(data_dir), HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy,
               https_proxy=proxy, ALL_PROXY=proxy, NO_PROXY="", no_proxy="", HF_HOME=str(tmp_path / "hf"))
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LC: not computed: offline" in done.stdout
    assert attempts == [], f"{len(attempts)} connection attempt(s) through the proxy"
