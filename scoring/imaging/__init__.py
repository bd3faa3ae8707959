"""Read chest X-ray files (PNG, JPEG, DICOM) into normalised grey arrays, safely.

``read_xray(path)`` returns an :class:`XRayImage`: ``pixels`` is a 2-D ``float32`` array in [0, 1]
with bone white (MONOCHROME1 is inverted), ``meta`` a dict of non-identifying metadata. Every
failure is an :class:`XRayReadError` with a machine-readable ``reason``. ``in_scope(meta)`` says
whether a frontal chest classifier should see the image at all. By default each file is decoded in
an isolated child process with a time limit; ``timeout=None`` decodes in the calling process, with
no protection from crashes or hangs, and is meant for one thread at a time.

One module per stage, each documenting its part:

- ``errors``: the failure reasons, :class:`XRayReadError`, what a message may contain
- ``results``: :class:`XRayImage` and the metadata keys
- ``files``: file checks, format sniffing (from content, never the name), size limits
- ``raster``: PNG and JPEG
- ``dicom``, ``header``, ``pixel_data``: DICOM parsing, header values, transfer syntaxes and codecs
- ``display``: modality LUT, VOI LUT or window, percentile window (pixel padding left out), MONOCHROME1
- ``downsample``: the reduced decode for a model's input (``min_side``) and the area downsample
- ``scope``: ``in_scope``
- ``decode``: one file in this process, third-party warnings and logs kept quiet
- ``isolation``: the decoder child and the time limit
- ``viewing``: for a viewer, the values before any window and the header's windows (``read_for_viewing``)
"""

from __future__ import annotations

import os
from typing import TypeAlias

from .decode import decode_file
from .display import check_display_range
from .errors import (
    CORRUPT,
    DECODE_FAILED,
    EMPTY,
    INVALID_PIXELS,
    NO_PIXEL_DATA,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    NOT_FOUND,
    REASONS,
    TIMEOUT,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED_IMAGE,
    UNSUPPORTED_TRANSFER_SYNTAX,
    XRayReadError,
)
from .files import (
    DICOM_MAGIC_OFFSET,
    JPEG_SIGNATURE,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    PNG_SIGNATURE,
    SNIFF_BYTES,
    precheck,
)
from .isolation import (
    CHILD_START_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    TEST_DELAY_ENV,
    read_isolated,
    reader_process_pid,
    start_reader_process,
    stop_reader_process,
)
from .pixel_data import SUPPORTED_TRANSFER_SYNTAXES, missing_codecs
from .results import Decoded, XRayImage
from .scope import CHEST_BODY_PARTS, LATERAL_VIEWS, RADIOGRAPH_MODALITIES, in_scope
from .viewing import AS_READ, ViewingImage, Window, apply_window, read_for_viewing

__all__ = [
    "AS_READ",
    "CHEST_BODY_PARTS",
    "CHILD_START_TIMEOUT_S",
    "CORRUPT",
    "DECODE_FAILED",
    "DEFAULT_TIMEOUT_S",
    "DICOM_MAGIC_OFFSET",
    "EMPTY",
    "INVALID_PIXELS",
    "JPEG_SIGNATURE",
    "LATERAL_VIEWS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "NOT_AN_IMAGE",
    "NOT_A_FILE",
    "NOT_FOUND",
    "NO_PIXEL_DATA",
    "PNG_SIGNATURE",
    "RADIOGRAPH_MODALITIES",
    "REASONS",
    "SNIFF_BYTES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "TEST_DELAY_ENV",
    "TIMEOUT",
    "TOO_LARGE",
    "TRUNCATED",
    "UNREADABLE",
    "UNSUPPORTED_IMAGE",
    "UNSUPPORTED_TRANSFER_SYNTAX",
    "ViewingImage",
    "Window",
    "XRayImage",
    "XRayReadError",
    "apply_window",
    "in_scope",
    "missing_codecs",
    "read_for_viewing",
    "read_xray",
    "reader_process_pid",
    "start_reader_process",
    "stop_reader_process",
]

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"


def read_xray(
    path: StrOrBytesPath, *, timeout: float | None = DEFAULT_TIMEOUT_S, min_side: int | None = None
) -> XRayImage:
    """Read a PNG, JPEG or DICOM chest X-ray; raise XRayReadError if it cannot be read.

    ``min_side`` (for a model's input, never for display): the pixels may be decoded smaller, down to a
    shorter side of ``min_side``; ``meta["decode_scale"]`` says by how much (see ``downsample``).
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive or None, not {timeout!r}")
    if min_side is not None and not (isinstance(min_side, int) and min_side > 0):
        raise ValueError(f"min_side must be a positive int or None, not {min_side!r}")
    raw_path = os.fsencode(path)
    if timeout is None:
        decoded = decode_file(raw_path, min_side)
    else:
        precheck(raw_path)
        decoded = read_isolated(raw_path, timeout, min_side)
    return _finish(decoded, raw_path)


def _finish(decoded: Decoded, path: bytes) -> XRayImage:
    check_display_range(decoded.pixels, path)
    meta = dict(decoded.meta)
    if meta["format"] == "dicom":
        from db.config import pseudonymise  # only the caller needs it, not the decoder child

        meta["patient_pseudonym"] = pseudonymise(decoded.patient_id)
    return XRayImage(pixels=decoded.pixels, meta=meta)
