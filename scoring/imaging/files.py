"""File access and format detection: the checks that need no decoder, and the size limits.

The format is detected from content, never from the file name: PNG and JPEG by their signatures,
DICOM by ``DICM`` at byte 128 (so files shorter than 132 bytes cannot be DICOM; there is no
``force=True`` guessing). Anything else is ``not_an_image``. Directories, FIFOs, sockets and
devices are refused from ``stat`` before anything opens them, so a read never waits for a writer.
"""

from __future__ import annotations

import io
import os
import stat

from .errors import EMPTY, NOT_A_FILE, NOT_AN_IMAGE, NOT_FOUND, TOO_LARGE, UNREADABLE, display_path, error

MAX_PIXELS = 64 * 1024 * 1024  # per decoded frame, samples included: 64 Mi values
MAX_FILE_BYTES = 1024 * 1024 * 1024  # also the limit on an inflated (deflated) DICOM dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
SNIFF_BYTES = DICOM_MAGIC_OFFSET + 4


def precheck(path: bytes) -> None:
    """The checks that need no decoder: existence, file type, size, permission, magic bytes."""
    with _open_regular(path) as handle:
        head = _read(handle, path, SNIFF_BYTES)
    sniff(head, path)


def load(path: bytes) -> bytes:
    with _open_regular(path) as handle:
        data = _read(handle, path, -1)
    if len(data) > MAX_FILE_BYTES:  # it grew after the stat
        raise error(TOO_LARGE, path, f"file has {len(data)} bytes, limit {MAX_FILE_BYTES}")
    return data


def sniff(head: bytes, path: bytes) -> str:
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == b"DICM":
        return "dicom"
    size = f"{len(head)} bytes" if len(head) < SNIFF_BYTES else f"at least {SNIFF_BYTES} bytes"
    raise error(
        NOT_AN_IMAGE,
        path,
        f"not a PNG, JPEG or DICOM file ({size}, starting {head[:8].hex(' ')}, "
        f"bytes 128-131 {head[DICOM_MAGIC_OFFSET:SNIFF_BYTES]!r})",
    )


def check_pixel_count(path: bytes, rows: int, cols: int, samples: int) -> None:
    count = rows * cols * samples
    if count > MAX_PIXELS:
        detail = f"{rows}x{cols}" + (f"x{samples} samples" if samples > 1 else "")
        raise error(TOO_LARGE, path, f"{detail} = {count} pixel values exceeds the limit of {MAX_PIXELS}")


def _open_regular(path: bytes) -> io.BufferedReader:
    _check_stat(path, _stat(path))
    try:
        # O_NONBLOCK: if the path became a FIFO since the stat, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(NOT_FOUND, path, "no such file") from None
    except PermissionError as exc:
        raise error(UNREADABLE, path, f"permission denied ({exc.strerror})") from None
    except OSError as exc:
        raise error(UNREADABLE, path, f"cannot open: {exc.strerror}") from None
    try:
        _check_stat(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _stat(path: bytes) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise error(NOT_FOUND, path, f"dangling symbolic link{_link_target(path)}") from None
        raise error(NOT_FOUND, path, "no such file") from None
    except PermissionError as exc:
        raise error(UNREADABLE, path, f"permission denied ({exc.strerror})") from None
    except OSError as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG
        raise error(NOT_FOUND, path, f"cannot stat: {exc.strerror}") from None


def _link_target(path: bytes) -> str:
    try:
        return f" to {display_path(os.readlink(path))}"
    except OSError:
        return ""


def _check_stat(path: bytes, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise error(NOT_A_FILE, path, f"not a regular file but a {_file_kind(info.st_mode)}")
    if info.st_size == 0:
        raise error(EMPTY, path, "empty file (0 bytes)")
    if info.st_size > MAX_FILE_BYTES:
        raise error(TOO_LARGE, path, f"file has {info.st_size} bytes, limit {MAX_FILE_BYTES}")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), f"special file (mode {mode:o})")


def _read(handle: io.BufferedReader, path: bytes, size: int) -> bytes:
    try:
        data = handle.read(size)
    except OSError as exc:
        raise error(UNREADABLE, path, f"read error: {exc.strerror or exc}") from None
    if not data:
        raise error(EMPTY, path, "empty file (0 bytes)")
    return data
