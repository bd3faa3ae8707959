"""Fixtures for the reliability tests: kills, faults, load, hostile input.

Each test has a short version that CI runs and a long one, selected with ``CXR_RELIABILITY=long``:

    CXR_RELIABILITY=long python -m pytest tests/reliability -q

``docs/RELIABILITY.md`` lists what each test tries and what held, with figures.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import pytest

LONG = os.environ.get("CXR_RELIABILITY", "").lower() == "long"


def scale(short, long):
    """The figure for this mode: the short one in CI, the long one from the documented command."""
    return long if LONG else short


def with_text_chunk(png: bytes, text: str) -> bytes:
    """The same image with a tEXt chunk before IEND: distinct bytes (so a distinct image), still a valid PNG."""
    data = b"cxr-test\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def write_distinct_pngs(sources: list[Path], folder: Path, n: int, *, age_s: float = 7200) -> list[Path]:
    """``n`` PNGs with distinct contents, cycling through ``sources``; settled (mtime ``age_s`` ago)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        source = sources[i % len(sources)]
        target = folder / f"{source.stem}-{i:05d}.png"
        target.write_bytes(with_text_chunk(source.read_bytes(), str(i)) if i >= len(sources)
                           else source.read_bytes())
        written.append(target)
    settle(folder, age_s)
    return written


def settle(folder: Path, age_s: float = 7200) -> None:
    then = time.time() - age_s
    for path in folder.rglob("*"):
        os.utime(path, (then, then))


@pytest.fixture
def corpus_factory(tmp_path, cxr_dev):
    """A folder of ``n_good`` distinct real PNGs and ``n_broken`` truncated ones."""
    sources = sorted(cxr_dev.glob("*/*.png"))

    def make(n_good: int, n_broken: int = 0, name: str = "incoming") -> Path:
        root = tmp_path / name
        write_distinct_pngs(sources, root, n_good)
        sample = sources[0].read_bytes()
        for i in range(n_broken):
            (root / f"broken-{i:03d}.png").write_bytes(sample[: 200 + 97 * i])
        settle(root)
        return root

    return make


def sqlite_value(db_path: Path, sql: str):
    with sqlite3.connect(db_path, timeout=30) as connection:
        return connection.execute(sql).fetchone()[0]


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=shutil.copy2)
    return target
