"""An image read only from bytes that are its own.

An image is its content: the sha256 of the file's bytes when it was scored. A path can come to hold other bytes
(a new study saved under the old name, a symbolic link to another film, a folder refilled), and a folder can move.
So a stored image is never read from a path on trust: each of its known paths is tried in turn, the file's bytes
are copied into a private file while they are hashed, and only a copy whose hash is the image's is decoded. A file
swapped after the check cannot reach the screen or a model, because the copy is what is read. The copy is deleted
once decoded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_BLOCK = 1 << 20


class NoVerifiedCopy(Exception):
    """None of an image's known paths holds its content any more."""

    def __init__(self, places: int, missing: int, changed: int) -> None:
        self.places, self.missing, self.changed = places, missing, changed
        super().__init__(f"no copy of this image is left: of its {places} known place{'s' if places != 1 else ''}, "
                         f"{missing} {'has' if missing == 1 else 'have'} no readable file and {changed} "
                         f"{'holds' if changed == 1 else 'hold'} other content")


def read_verified(paths: Sequence[str | bytes], sha256: str, read: Callable[[str], T], *, workdir: Path) -> T:
    """``read`` applied to a private copy of the first of ``paths`` whose bytes hash to ``sha256``.

    Raises :class:`NoVerifiedCopy` when none does; what ``read`` raises (a decoding error of a verified copy)
    passes through."""
    missing = changed = 0
    for path in paths:
        copy = workdir / f".verified.{secrets.token_hex(8)}"
        try:
            digest = _copy_hashing(path, copy)
        except OSError:
            missing += 1
            copy.unlink(missing_ok=True)
            continue
        try:
            if digest == sha256:
                return read(str(copy))
            changed += 1
        finally:
            copy.unlink(missing_ok=True)
    raise NoVerifiedCopy(len(paths), missing, changed)


def first_holding(paths: Sequence[str | bytes], sha256: str) -> str | bytes | None:
    """The first of ``paths`` that is a regular file whose bytes hash to ``sha256`` now, or None. For readers
    that read a file many times (training): they check once, not at every read."""
    for path in paths:
        try:
            if _hash_blocks(path, lambda block: None) == sha256:
                return path
        except OSError:
            continue
    return None


def _copy_hashing(path: str | bytes, copy: Path) -> str:
    """Copies the file and returns the sha256 of exactly the bytes copied."""
    with os.fdopen(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as target:
        return _hash_blocks(path, target.write)


def _hash_blocks(path: str | bytes, each: Callable[[bytes], object]) -> str:
    """The sha256 of a regular file, handing each block to ``each`` on the way. Never a FIFO or a device: opened
    without blocking and checked before anything is read."""
    source = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise IsADirectoryError(f"not a regular file: {path!r}")
        digest = hashlib.sha256()
        while block := os.read(source, _BLOCK):
            digest.update(block)
            each(block)
        return digest.hexdigest()
    finally:
        os.close(source)
