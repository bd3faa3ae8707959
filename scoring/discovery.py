"""Finding the files a scoring run should look at.

Directories are walked recursively. Symbolic links are followed, but each directory is entered once (by
device and inode), so a link loop ends the descent instead of recursing forever. Hidden files and folders
(a leading dot), names that copy tools give partial files, sidecar documents (``.csv``, ``.txt``, ``.json``,
reports), and files modified in the last few seconds (probably still being written) are left alone.
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
    deferred: int  # too recently modified: probably still being written
    ignored: int  # hidden, partial names, sockets, devices


def discover(paths: list[str | os.PathLike], *, settle_seconds: float = 30.0) -> Discovery:
    result = Discovery(files=[], deferred=0, ignored=0)
    newest_allowed_ns = time.time_ns() - int(settle_seconds * 1e9)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in paths:
        for path, st in _walk(Path(root), seen_dirs, result, top=True):
            absolute = os.path.abspath(path)
            if absolute in seen_files:
                continue
            seen_files.add(absolute)
            if st.st_mtime_ns > newest_allowed_ns:
                result.deferred += 1
                continue
            result.files.append(FileStat(absolute, st.st_size, st.st_mtime_ns))
    result.files.sort(key=lambda f: f.path)
    return result


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
