"""One file decoded in this process, with whatever pydicom and the codecs say kept out of sight.

pydicom reports a malformed header value with a warning and a record on its ``pydicom`` logger,
both quoting the value (``Invalid value for VR IS: 'Doe^Jane'``). While a file is decoded, warnings
are recorded instead of printed and the ``pydicom`` logger hands its records to a null handler
instead of its own handlers and the root logger's, so neither reaches stderr or the caller's logs.
What mattered becomes part of the failure (see ``dicom`` and ``header``); the rest is dropped.
Both are process-wide settings, hence in-process reads one thread at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .dicom import read_dicom
from .errors import XRayReadError, unexpected
from .files import SNIFF_BYTES, load, sniff
from .raster import read_pillow
from .results import Decoded

_QUIET_LOGGERS = ("pydicom",)  # its children too (pydicom.pixels.decoders.base, ...): they propagate to it
_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []


def decode_file(path: bytes, min_side: int | None = None) -> Decoded:
    """Everything in the calling process; any failure becomes an XRayReadError. ``min_side``: see
    ``downsample``."""
    with quiet_third_parties():
        try:
            data = load(path)
            kind = sniff(data[:SNIFF_BYTES], path)
            if kind == "dicom":
                return read_dicom(data, path, min_side)
            return read_pillow(data, path, kind, min_side)
        except (XRayReadError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # BaseException: Rust codecs panic with pyo3's PanicException
            raise unexpected(path, exc) from None


@contextmanager
def quiet_third_parties() -> Iterator[None]:
    """Record warnings and silence the pydicom loggers for the duration (re-entrant)."""
    _silence_loggers()
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")  # also overrides a caller's "error" filter
            yield
    finally:
        _restore_loggers()


def _silence_loggers() -> None:
    global _quiet_depth
    with _quiet_lock:
        _quiet_depth += 1
        if _quiet_depth > 1:
            return
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            _saved.append((logger, logger.handlers[:], logger.propagate))
            # A handler is needed: a logger with none at all falls back to logging.lastResort (stderr).
            logger.handlers[:] = [logging.NullHandler()]
            logger.propagate = False


def _restore_loggers() -> None:
    global _quiet_depth
    with _quiet_lock:
        _quiet_depth -= 1
        if _quiet_depth > 0:
            return
        while _saved:
            logger, handlers, propagate = _saved.pop()
            logger.handlers[:] = handlers
            logger.propagate = propagate


def _after_fork_in_child() -> None:
    global _quiet_lock
    _quiet_lock = threading.Lock()  # a fork while another thread held it must not deadlock the copy


os.register_at_fork(after_in_child=_after_fork_in_child)
