"""Locations: this checkout, the configurable data, cache and run folders, and atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import QLoraError

REPO = Path(__file__).resolve().parents[1]  # the checkout this package lives in
DATA_DIR_ENV = "QLORA_DATA_DIR"
CACHE_DIR_ENV = "QLORA_CACHE_DIR"
RUNS_ENV = "QLORA_RUNS_DIR"  # where run directories go (default runs/); the book needs them inside the repository
DATA_DIR_WAYS = f"${DATA_DIR_ENV}, --data-dir on the command line or data_dir= in Python"  # how to name the folder
DATA_LAYOUT = "laid out like ../shared/data (sst2/, squad_v1.1/, alpaca_train/, alpaca_eval/; see its README)"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data directory (argument, else $QLORA_DATA_DIR), or None to use the Hugging Face Hub."""
    value = override if override is not None else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        given = "--data-dir / data_dir=" if override is not None else f"${DATA_DIR_ENV}"
        raise QLoraError(f"data directory {str(value)!r} (from {given}) does not exist; name a folder {DATA_LAYOUT} "
                         f"({DATA_DIR_WAYS}), or set none to use the Hub")
    return path


def offline() -> bool:
    """Whether this process must not reach the network: a local data directory is configured ($QLORA_DATA_DIR), or
    the Hugging Face libraries are told to stay offline (HF_HUB_OFFLINE)."""
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(os.environ.get(DATA_DIR_ENV)) or hub_offline


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory for converted models (argument, else $QLORA_CACHE_DIR, else ~/.cache/qlora_utils)."""
    value = override if override is not None else os.environ.get(CACHE_DIR_ENV)
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "qlora_utils"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to path through a temporary file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write obj as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
