"""Shared fixtures: the local data directory (../shared/data unless QLORA_DATA_DIR says otherwise), quiet progress bars,
and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO.parent / "shared" / "data"
if not os.environ.get("QLORA_DATA_DIR") and _DEFAULT_DATA.is_dir():
    os.environ["QLORA_DATA_DIR"] = str(_DEFAULT_DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local copy of the benchmark data; tests that need it skip, saying why, when there is none."""
    value = os.environ.get("QLORA_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("no local data: set QLORA_DATA_DIR to a copy of shared/data")
    return Path(value)
