"""Machine paths out of committed files: the places a run's outputs may mention (this checkout, the virtual
environment, the data and cache directories, the home folder, the temporary folder) replaced by stable placeholders."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path

from .locations import CACHE_DIR_ENV, DATA_DIR_ENV, REPO, RUNS_ENV

# An absolute path of a POSIX machine in text: a slash starting a path under one of the usual top folders.
ABSOLUTE_PATH = re.compile(r"(?<![\w./~<>-])/(?:home|root|work|tmp|usr|opt|var|mnt|srv|Users|private)/[\w.@+-]")


def placeholders() -> list[tuple[str, str]]:
    """(absolute path, placeholder) pairs, longest path first so that the most specific one wins."""
    pairs: dict[str, str] = {}
    for key in ("purelib", "platlib"):
        pairs[sysconfig.get_paths()[key]] = "<site-packages>"
    pairs[sys.prefix] = "<venv>"
    pairs[sys.base_prefix] = "<python>"
    pairs[str(REPO)] = "<repo>"
    for variable, name in ((DATA_DIR_ENV, "<data>"), (CACHE_DIR_ENV, "<cache>"), (RUNS_ENV, "<runs>")):
        if os.environ.get(variable):
            pairs[str(Path(os.environ[variable]).expanduser().resolve())] = name
    pairs[str(Path.home())] = "~"
    pairs[tempfile.gettempdir()] = "<tmp>"  # scratch folders (the judge's configuration) named in logs
    for path in list(pairs):
        real = os.path.realpath(path)
        pairs.setdefault(real, pairs[path])
    return sorted(((p, n) for p, n in pairs.items() if len(p) > 1), key=lambda pair: -len(pair[0]))


def scrub(text: str) -> str:
    """The text with every known machine path replaced by its placeholder."""
    for path, name in placeholders():
        text = text.replace(path, name)
    return text


def scrub_file(path: str | os.PathLike[str]) -> None:
    """Scrub a text file (an executed notebook, a log) in place."""
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    cleaned = scrub(text)
    if cleaned != text:
        file.write_text(cleaned, encoding="utf-8")


def absolute_paths(text: str) -> list[str]:
    """The absolute machine paths left in a text (a few characters after each, for the message)."""
    return [re.split(r'["\s]', text[m.start():m.start() + 60])[0] for m in ABSOLUTE_PATH.finditer(text)]
