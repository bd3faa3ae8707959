"""Writing files so that a crash or a full disk leaves the old file or the new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable: without it, a power cut can undo a rename the caller reported done."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
