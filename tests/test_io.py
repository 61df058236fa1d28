"""econlm.io's atomic writes give what they write the modes a plain open() / mkdir would: results
are meant to be read by other users and tools, as the umask allows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from econlm.io import OUTPUT_MARKER, atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask-{m:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_files_get_the_mode_a_plain_open_gives(umask, tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic_write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    atomic_write_bytes(tmp_path / "curve.png", b"\x89PNG")
    assert mode(plain) == 0o666 & ~umask
    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "curve.png") == mode(plain)


def test_a_replaced_file_gets_the_mode_of_a_new_one(umask, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_json(target, {"accuracy": 1.0})
    assert mode(target) == 0o666 & ~umask


def test_directories_get_the_mode_a_plain_mkdir_gives(umask, tmp_path):
    (tmp_path / "plain").mkdir()
    with atomic_dir(tmp_path / "eval") as out:
        atomic_write_json(out / "metrics.json", {"accuracy": 1.0})
    assert mode(tmp_path / "eval") == mode(tmp_path / "plain") == 0o777 & ~umask
    assert mode(tmp_path / "eval" / "metrics.json") == mode(tmp_path / "eval" / OUTPUT_MARKER) == 0o666 & ~umask



def test_a_path_for_other_writers_gets_the_same_mode_and_is_gone_when_they_fail(umask, tmp_path):
    with atomic_path(tmp_path / "model.gguf") as tmp:
        tmp.write_bytes(b"GGUF")  # what a writer given a path does: open it anew
    assert mode(tmp_path / "model.gguf") == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "other.gguf"):
        raise RuntimeError("quantiser failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
