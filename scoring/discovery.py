"""Finding the files a scoring run should look at.

Directories are walked recursively. Symbolic links are followed, but each directory is entered once (by
device and inode), so a link loop ends the descent instead of recursing forever. Hidden files and folders
(a leading dot), names that copy tools give partial files, sidecar documents (``.csv``, ``.txt``, ``.json``,
reports), and files modified in the last few seconds (probably still being written) are left alone.

A file dated in the future (a modality or share whose clock is ahead, or a preserved timestamp of 2099) is never
left alone for that reason alone, or it would wait forever: see :func:`last_change_ns`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from db.errors import CannotRun
from db.results import FileStat

log = logging.getLogger("cxr.score")

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", "~")
# Sidecar files that share folders with images (label lists, reports, exports): never X-rays, whatever
# their content, so they are not worth a failure record every night.
SIDECAR_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".md", ".xml", ".html", ".htm", ".log", ".yaml", ".yml",
                    ".ini", ".pdf")


class CannotScan(CannotRun):
    """A path given to the run does not exist or cannot be read (an unmounted share, a typo)."""


@dataclass
class Discovery:
    files: list[FileStat]
    deferred: int  # too recently changed: probably still being written
    ignored: int  # hidden, partial names, sockets, devices
    future: int = 0  # modification time later than this machine's clock (in files or deferred, by last_change_ns)
    future_deferred: int = 0  # ... of which deferred, their change time being recent


def discover(paths: list[str | os.PathLike], *, settle_seconds: float = 30.0) -> Discovery:
    result = Discovery(files=[], deferred=0, ignored=0)
    now_ns, settle_ns = time.time_ns(), int(settle_seconds * 1e9)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in paths:
        for path, st in _walk(Path(root), seen_dirs, result, top=True):
            absolute = os.path.abspath(path)
            if absolute in seen_files:
                continue
            seen_files.add(absolute)
            future = st.st_mtime_ns > now_ns
            result.future += future
            if now_ns - settle_ns < last_change_ns(st, now_ns, settle_ns) <= now_ns + settle_ns:
                result.deferred += 1
                result.future_deferred += future
                continue
            result.files.append(FileStat(absolute, st.st_size, st.st_mtime_ns))
    result.files.sort(key=lambda f: f.path)
    return result


def last_change_ns(st: os.stat_result, now_ns: int, settle_ns: int) -> int:
    """When the file last changed, as far as its times can tell; a file is deferred while this lies within the
    settle time of now, on either side (a clock a few seconds ahead still dates a write in progress).

    A modification time further in the future says nothing about when the file was written. Copy tools that keep
    a timestamp (``cp -p``, ``rsync -t``, robocopy) set it after the data is written, and setting it sets the
    change time (ctime, which no tool can set) to the real moment: the ctime tells whether the file is still being
    written. A ctime in the future too means the file system's clock is ahead of ours; then nothing tells the
    file's age, so it is scored rather than deferred forever. A file cut short by a write still going on fails as
    truncated, and its failure is retried once its size or mtime changes.
    """
    if st.st_mtime_ns <= now_ns + settle_ns:
        return st.st_mtime_ns
    return st.st_ctime_ns


def is_ignored_name(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES + SIDECAR_SUFFIXES)


def _walk(path: Path, seen_dirs: set[tuple[int, int]], result: Discovery,
          top: bool = False) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        st = path.stat()
    except OSError as exc:
        if top:
            raise CannotScan(f"cannot scan {path}: {exc.strerror}") from exc
        # A dangling link or a file removed while walking is still a file the run should report.
        if path.is_symlink():
            yield path, path.lstat()
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            log.debug("not entering %s again (link loop or second link)", path)
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            # Folder names can identify patients: the path only at debug level (-v), never in the nightly log.
            log.warning("cannot list a folder: %s (run with -v to see which)", exc.strerror)
            log.debug("cannot list %s", path)
            return
        for entry in entries:
            if is_ignored_name(entry.name):
                result.ignored += 1
                continue
            yield from _walk(Path(entry.path), seen_dirs, result)
    elif stat.S_ISREG(st.st_mode):
        yield path, st
    else:
        result.ignored += 1  # FIFOs, sockets, devices: never opened, they could block the run
