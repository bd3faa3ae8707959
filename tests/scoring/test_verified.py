"""scoring.imaging.verified: an image is read only from a private copy of bytes whose hash is its own."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from scoring.imaging.verified import NoVerifiedCopy, read_verified


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"film A")
    (tmp_path / "b.png").write_bytes(b"film B")
    return tmp_path


def _reader(seen: list):
    def read(copy: str) -> bytes:
        info = os.stat(copy)
        seen.append((copy, stat.S_IMODE(info.st_mode)))
        return Path(copy).read_bytes()
    return read


def test_the_first_path_that_holds_the_content_is_read_from_a_private_copy(files, tmp_path):
    seen = []
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    paths = [str(files / "gone.png"), str(files / "b.png"), str(files / "a.png")]
    assert read_verified(paths, _sha(b"film A"), _reader(seen), workdir=work) == b"film A"
    copy, mode = seen[0]
    assert Path(copy).parent == work and mode == 0o600
    assert list(work.iterdir()) == []  # the copy is gone once read


def test_a_path_now_holding_another_film_is_never_read(files, tmp_path):
    (files / "a.png").unlink()
    (files / "a.png").symlink_to(files / "b.png")  # A replaced by a link to B
    with pytest.raises(NoVerifiedCopy, match="of its 1 known place, 0 have no readable file and 1 holds other"):
        read_verified([str(files / "a.png")], _sha(b"film A"), _reader([]), workdir=tmp_path)


def test_a_fifo_is_skipped_without_waiting(files, tmp_path):
    os.mkfifo(files / "pipe.png")
    result = []
    worker = threading.Thread(target=lambda: result.append(read_verified(
        [str(files / "pipe.png"), str(files / "a.png")], _sha(b"film A"), _reader([]), workdir=tmp_path)))
    worker.start()
    worker.join(timeout=10)
    assert result == [b"film A"]


def test_the_copy_is_removed_when_reading_it_fails(files, tmp_path):
    work = tmp_path / "work"
    work.mkdir()

    def broken(copy: str):
        raise ValueError("decoder failed")

    with pytest.raises(ValueError):
        read_verified([str(files / "a.png")], _sha(b"film A"), broken, workdir=work)
    assert list(work.iterdir()) == []


def test_a_file_changed_after_the_check_cannot_reach_the_reader(files, tmp_path):
    """The reader gets the bytes that were hashed, whatever happens to the original afterwards."""
    def swap_then_read(copy: str) -> bytes:
        (files / "a.png").write_bytes(b"film B")  # the original changes between the check and the read
        return Path(copy).read_bytes()

    assert read_verified([str(files / "a.png")], _sha(b"film A"), swap_then_read, workdir=tmp_path) == b"film A"
