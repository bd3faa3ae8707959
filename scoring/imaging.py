"""Read chest X-ray files (PNG, JPEG, DICOM) into normalised grey arrays, safely.

``read_xray(path)`` returns an :class:`XRayImage`: ``pixels`` is a 2-D ``float32`` array in
[0, 1] with bone white (MONOCHROME1 is inverted), ``meta`` a dict of non-identifying metadata.
``in_scope(meta)`` says whether a frontal chest classifier should see the image at all.

Format is detected from content, never from the file name: PNG and JPEG by their signatures,
DICOM by ``DICM`` at byte 128 (so files shorter than 132 bytes cannot be DICOM; there is no
``force=True`` guessing). Anything else is ``not_an_image``.

Failure reasons
---------------
Every failure is an :class:`XRayReadError` whose ``reason`` is one of these constants (all in
``REASONS``) and whose message names the file and the offending value.

=============================== ==================================================================
``empty``                       the file has 0 bytes
``not_an_image``                no PNG/JPEG signature and no ``DICM`` at byte 128
``truncated``                   the file ends early: a PNG chunk cut short or IEND missing, JPEG
                                headers or scan data ending early, a DICOM element or the
                                encapsulated pixel data cut short, native pixel data shorter than
                                Rows x Columns x frames needs, a compressed frame without its FFD9
                                end-of-codestream marker, an RLE segment offset beyond the frame
``corrupt``                     the container is damaged: a bad PNG chunk CRC (always ``corrupt``,
                                never ``decode_failed``), malformed JPEG markers or DICOM
                                elements, unexpected items in encapsulated pixel data, a deflated
                                dataset that does not inflate, Rows/Columns/Bits Allocated missing
``no_pixel_data``               a DICOM file without (7FE0,0010), (7FE0,0008) or (7FE0,0009)
``unsupported_transfer_syntax`` a transfer syntax outside ``SUPPORTED_TRANSFER_SYNTAXES`` (named)
``unsupported_image``           a DICOM image this reader declines: an unknown Photometric
                                Interpretation, MONOCHROME with several samples per pixel
``too_large``                   more than ``MAX_PIXELS`` values per frame (from the header, before
                                decoding), a file or inflated dataset over ``MAX_FILE_BYTES``, or
                                out of memory while decoding
``decode_failed``               a codec failed or warned, a frame header disagreeing with the
                                dataset, native pixel data longer than expected, or the isolated
                                decoder process crashed ("decoder crashed (signal N)")
``not_a_file``                  a directory, FIFO, socket or device (never opened, so never waits)
``unreadable``                  permission denied, or an I/O error while reading
``not_found``                   no such file, a dangling symbolic link, a symlink loop
``timeout``                     no result within the time limit (isolated mode only)
``invalid_pixels``              the display transform gives values that are not finite or do not
                                fit float32: a NaN, infinite or huge Rescale Slope/Intercept, a
                                Modality or VOI LUT whose output is unusable; the final pixels are
                                checked too, so no NaN or value outside [0, 1] is ever returned
=============================== ==================================================================

PNG and JPEG
    Decoded with Pillow. PNG chunk lengths and CRCs are checked first (Pillow skips the CRC of
    IDAT chunks and accepts a file whose last chunks are missing); JPEG marker segments are walked
    up to the first scan. ``MAX_PIXELS`` is checked from IHDR/SOF before Pillow decodes anything,
    and Pillow's own decompression-bomb limit stays in force; ``LOAD_TRUNCATED_IMAGES`` is never
    set. Grey 8-bit is divided by 255, 16-bit (mode ``I;16``) by 65535; palette, RGB(A), CMYK and
    the rest go through Pillow's ``convert("L")`` (ITU-R 601-2 luma, alpha ignored). The EXIF
    orientation is applied.

DICOM
    Decoded with pydicom and these permissively licensed plugins, tried in this order (a warning
    from any of them is an error; an exception moves on to the next):
    JPEG baseline and 8-bit extended: Pillow, GDCM. 12-bit JPEG extended: GDCM, called directly
    because pydicom's GDCM plugin declines 12-bit. JPEG lossless (process 14, SV1): GDCM. JPEG-LS:
    pyjpegls, GDCM. JPEG 2000: pylibjpeg-openjpeg, GDCM, Pillow. RLE: pylibjpeg-rle, pydicom.
    The GPL pylibjpeg-libjpeg is never asked for, even when installed. Before any codec runs, the
    encapsulation is walked, the first frame must end with its end-of-codestream marker (the JPEG-LS
    and JPEG 2000 decoders pad a cut stream silently) and a JPEG frame header must agree with
    Rows/Columns (GDCM segfaults on some that do not).
    Display transform: modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept) -> the
    first VOI LUT Sequence item (output scaled by its declared bit depth), else the FIRST Window
    Centre/Width with VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2-3, mapped
    straight to [0, 1]), else -- also when the window is invalid, e.g. width 0 -- the 0.5-99.5
    percentile range -> [0, 1] -> inverted for MONOCHROME1, after windowing. ``meta["voi"]`` is
    ``"voi_lut"``, ``"window"`` or ``"percentile"`` accordingly. Colour images (RGB, YBR_*,
    PALETTE COLOR) are converted to luma with Pillow's weights and scaled by their bit depth
    without VOI (``voi`` ``"none"``); ``in_scope`` rejects them.

Multi-frame policy
    Only the first frame is decoded; ``meta["frames"]`` holds Number of Frames and ``in_scope``
    returns ``(False, "multi_frame:N")`` for N > 1. ``MAX_PIXELS`` applies to that one frame
    (Rows x Columns x Samples per Pixel); the file-size limit bounds the rest.

Metadata
    Every ``meta`` has the same keys: ``format`` ("png" | "jpeg" | "dicom"), ``rows``, ``cols``
    (the stored size, before any processing: EXIF orientations 5-8 transpose ``pixels``),
    ``mode`` and ``exif_orientation`` (PNG/JPEG; None for DICOM), ``bits_stored`` (8 or 16 for
    PNG, 8 for JPEG) and the DICOM keys ``modality``, ``body_part``, ``view_position``,
    ``study_date``, ``study_uid``, ``series_uid``, ``sop_uid``, ``manufacturer``, ``photometric``,
    ``pixel_spacing`` ([row, col] mm from Pixel Spacing, else Imager Pixel Spacing),
    ``burned_in_annotation``, ``transfer_syntax``, ``frames``, ``voi`` and ``patient_pseudonym``,
    which are None for PNG/JPEG and for absent values. No PatientName, PatientID, BirthDate or
    other identifying data: ``patient_pseudonym`` is ``db.config.pseudonymise(PatientID)``,
    computed in the calling process (so it uses the caller's ``CXR_HOME`` and key).

Isolation and time limit
    With ``timeout`` (default ``DEFAULT_TIMEOUT_S``) the file is decoded in a child process
    (``python -c``, importing only numpy, Pillow, pydicom and the codecs, never torch), started
    lazily and kept alive between calls, one per calling process: a forked process (a DataLoader
    worker) starts its own. The child is stopped and reaped at interpreter exit, and exits by
    itself when its parent disappears. Cheap checks (stat, open, magic bytes) run in the caller
    first. The limit covers decoding and the transfer of the pixels; on expiry the child is
    killed and ``timeout`` raised; if it dies (a segfault in a C codec, a panic) the read fails
    with ``decode_failed``; either way the next call starts a new child. Reads from several
    threads are serialised. ``timeout=None`` decodes in the calling process: no protection from
    crashes or hangs, and meant for one thread at a time (warning filters are process-wide).
    ``start_reader_process()`` starts the child ahead of the first read; the environment variable
    ``CXR_READER_TEST_DELAY_S`` makes the child sleep that long before each read, and exists only
    so that tests can exercise the time limit.
"""

from __future__ import annotations

import atexit
import io
import logging
import math
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, TypeAlias

import numpy as np

EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
NO_PIXEL_DATA = "no_pixel_data"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
UNSUPPORTED_IMAGE = "unsupported_image"
TOO_LARGE = "too_large"
DECODE_FAILED = "decode_failed"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
INVALID_PIXELS = "invalid_pixels"
REASONS = frozenset(
    {
        EMPTY,
        NOT_AN_IMAGE,
        TRUNCATED,
        CORRUPT,
        NO_PIXEL_DATA,
        UNSUPPORTED_TRANSFER_SYNTAX,
        UNSUPPORTED_IMAGE,
        TOO_LARGE,
        DECODE_FAILED,
        NOT_A_FILE,
        UNREADABLE,
        NOT_FOUND,
        TIMEOUT,
        INVALID_PIXELS,
    }
)

DEFAULT_TIMEOUT_S = 30.0
CHILD_START_TIMEOUT_S = 60.0
MAX_PIXELS = 64 * 1024 * 1024  # per decoded frame, samples included: 64 Mi values
MAX_FILE_BYTES = 1024 * 1024 * 1024  # also the limit on an inflated (deflated) DICOM dataset
TEST_DELAY_ENV = "CXR_READER_TEST_DELAY_S"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0-15, SOF55
DICOM_MAGIC_OFFSET = 128
SNIFF_BYTES = DICOM_MAGIC_OFFSET + 4

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

# Transfer syntax UID -> pydicom decoding plugins to try, in order. "" is pydicom's native decoder.
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_J2K_PLUGINS = ("pylibjpeg", "gdcm", "pillow")
_JPEG_LS_PLUGINS = ("pyjpegls", "gdcm")
_PLUGINS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": ("",),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": ("",),  # Explicit VR Little Endian
    _DEFLATED: ("",),  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2": ("",),  # Explicit VR Big Endian
    _RLE: ("pylibjpeg", "pydicom"),
    _JPEG_BASELINE: ("pillow", "gdcm"),
    _JPEG_EXTENDED: ("pillow", "gdcm"),
    "1.2.840.10008.1.2.4.57": ("gdcm",),  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": ("gdcm",),  # JPEG Lossless, process 14 SV1
    "1.2.840.10008.1.2.4.80": _JPEG_LS_PLUGINS,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": _JPEG_LS_PLUGINS,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": _J2K_PLUGINS,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": _J2K_PLUGINS,  # JPEG 2000
}
SUPPORTED_TRANSFER_SYNTAXES = frozenset(_PLUGINS)
_NATIVE_SYNTAXES = frozenset(uid for uid, plugins in _PLUGINS.items() if plugins == ("",))
# Every JPEG, JPEG-LS and JPEG 2000 codestream ends with FF D9 (EOI / EOC).
_CODESTREAMS_ENDING_FFD9 = frozenset(_PLUGINS) - _NATIVE_SYNTAXES - {_RLE}
_JPEG_FAMILY = frozenset(
    uid for uid in _CODESTREAMS_ENDING_FFD9 if not uid.startswith("1.2.840.10008.1.2.4.9")
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PERCENTILES = (0.5, 99.5)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_DICOM_META_KEYS = (
    "modality",
    "body_part",
    "view_position",
    "study_date",
    "study_uid",
    "series_uid",
    "sop_uid",
    "manufacturer",
    "photometric",
    "bits_stored",
    "pixel_spacing",
    "burned_in_annotation",
    "transfer_syntax",
    "frames",
    "voi",
    "patient_pseudonym",
)
_TEXT_KEYWORDS = {
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
    "study_date": "StudyDate",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "manufacturer": "Manufacturer",
    "burned_in_annotation": "BurnedInAnnotation",
}

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORACE"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "LEFT LATERAL", "RIGHT LATERAL"})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})


class XRayReadError(Exception):
    """A file that cannot be read as an X-ray; ``reason`` is one of the module's reason constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.message))


@dataclass(frozen=True, eq=False)
class XRayImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1], bone white
    meta: dict[str, Any]


class _Decoded(NamedTuple):
    pixels: np.ndarray
    meta: dict[str, Any]
    patient_id: str | None  # never leaves this module: replaced by a pseudonym in read_xray


# --------------------------------------------------------------------------------------------
# Public entry points


def read_xray(path: StrOrBytesPath, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> XRayImage:
    """Read a PNG, JPEG or DICOM chest X-ray; raise XRayReadError if it cannot be read."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive or None, not {timeout!r}")
    raw_path = os.fsencode(path)
    if timeout is None:
        decoded = _decode_file(raw_path)
    else:
        _precheck(raw_path)
        decoded = _isolated_reader().read(raw_path, timeout)
    return _finish(decoded, raw_path)


def in_scope(meta: dict[str, Any]) -> tuple[bool, str]:
    """Whether a frontal chest classifier should see this image, and a short machine-readable why."""
    if meta.get("format") != "dicom":
        return True, "no_metadata"
    modality = _upper(meta.get("modality"))
    if modality not in RADIOGRAPH_MODALITIES:
        return False, f"modality:{modality or 'missing'}"
    frames = meta.get("frames") or 1
    if frames > 1:
        return False, f"multi_frame:{frames}"
    photometric = _upper(meta.get("photometric"))
    if photometric not in _MONOCHROME:
        return False, f"photometric:{photometric or 'missing'}"
    body_part = _upper(meta.get("body_part"))
    if body_part and not _is_chest(body_part):
        return False, f"body_part:{body_part}"
    view = _upper(meta.get("view_position"))
    if view in LATERAL_VIEWS:
        return False, f"lateral_view:{view}"
    return True, "ok" if body_part else "body_part_missing"


def start_reader_process() -> int:
    """Start this process's isolated decoder now (e.g. in a DataLoader ``worker_init_fn``), so
    that the first read does not wait for it; returns its PID."""
    return _isolated_reader().start()


def stop_reader_process() -> None:
    """Stop this process's isolated decoder, if any; the next isolated read starts a new one."""
    reader = _READER
    if reader is not None and reader.owner_pid == os.getpid():
        reader.stop()


def reader_process_pid() -> int | None:
    """PID of this process's isolated decoder, or None when none is running (for tests)."""
    reader = _READER
    if reader is None or reader.owner_pid != os.getpid():
        return None
    return reader.pid


def _finish(decoded: _Decoded, path: bytes) -> XRayImage:
    _check_display_range(decoded.pixels, path)
    meta = dict(decoded.meta)
    if meta["format"] == "dicom":
        from db.config import pseudonymise  # only the caller needs it, not the decoder child

        meta["patient_pseudonym"] = pseudonymise(decoded.patient_id)
    return XRayImage(pixels=decoded.pixels, meta=meta)


def _upper(value: Any) -> str:
    return str(value).strip().upper() if value is not None else ""


def _is_chest(body_part: str) -> bool:
    words = "".join(c if c.isalnum() else " " for c in body_part).split()
    return any(word in CHEST_BODY_PARTS for word in words)


# --------------------------------------------------------------------------------------------
# File access and format detection


def _display(path: bytes) -> str:
    """The file name for messages: printable and encodable even when it is not valid UTF-8."""
    return path.decode("utf-8", "backslashreplace")


def _error(reason: str, path: bytes, detail: str) -> XRayReadError:
    return XRayReadError(reason, f"{_display(path)}: {detail}")


def _precheck(path: bytes) -> None:
    """The checks that need no decoder: existence, file type, size, permission, magic bytes."""
    with _open_regular(path) as handle:
        head = _read(handle, path, SNIFF_BYTES)
    _sniff(head, path)


def _load(path: bytes) -> bytes:
    with _open_regular(path) as handle:
        data = _read(handle, path, -1)
    if len(data) > MAX_FILE_BYTES:  # it grew after the stat
        raise _error(TOO_LARGE, path, f"file has {len(data)} bytes, limit {MAX_FILE_BYTES}")
    return data


def _open_regular(path: bytes) -> io.BufferedReader:
    _check_stat(path, _stat(path))
    try:
        # O_NONBLOCK: if the path became a FIFO since the stat, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _error(NOT_FOUND, path, "no such file") from None
    except PermissionError as exc:
        raise _error(UNREADABLE, path, f"permission denied ({exc.strerror})") from None
    except OSError as exc:
        raise _error(UNREADABLE, path, f"cannot open: {exc.strerror}") from None
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
            raise _error(NOT_FOUND, path, f"dangling symbolic link{_link_target(path)}") from None
        raise _error(NOT_FOUND, path, "no such file") from None
    except PermissionError as exc:
        raise _error(UNREADABLE, path, f"permission denied ({exc.strerror})") from None
    except OSError as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG
        raise _error(NOT_FOUND, path, f"cannot stat: {exc.strerror}") from None


def _link_target(path: bytes) -> str:
    try:
        return f" to {_display(os.readlink(path))}"
    except OSError:
        return ""


def _check_stat(path: bytes, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _error(NOT_A_FILE, path, f"not a regular file but a {_file_kind(info.st_mode)}")
    if info.st_size == 0:
        raise _error(EMPTY, path, "empty file (0 bytes)")
    if info.st_size > MAX_FILE_BYTES:
        raise _error(TOO_LARGE, path, f"file has {info.st_size} bytes, limit {MAX_FILE_BYTES}")


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
        raise _error(UNREADABLE, path, f"read error: {exc.strerror or exc}") from None
    if not data:
        raise _error(EMPTY, path, "empty file (0 bytes)")
    return data


def _sniff(head: bytes, path: bytes) -> str:
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == b"DICM":
        return "dicom"
    size = f"{len(head)} bytes" if len(head) < SNIFF_BYTES else f"at least {SNIFF_BYTES} bytes"
    raise _error(
        NOT_AN_IMAGE,
        path,
        f"not a PNG, JPEG or DICOM file ({size}, starting {head[:8].hex(' ')}, "
        f"bytes 128-131 {head[DICOM_MAGIC_OFFSET:SNIFF_BYTES]!r})",
    )


def _decode_file(path: bytes) -> _Decoded:
    """Everything in the calling process; any failure becomes an XRayReadError."""
    try:
        data = _load(path)
        kind = _sniff(data[:SNIFF_BYTES], path)
        if kind == "dicom":
            return _read_dicom(data, path)
        return _read_pillow(data, path, kind)
    except (XRayReadError, KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise _error(TOO_LARGE, path, "out of memory while decoding") from None
    except BaseException as exc:  # BaseException: Rust codecs panic with pyo3's PanicException
        raise _error(DECODE_FAILED, path, f"unexpected {type(exc).__name__}: {exc}") from None


def _base_meta(kind: str, rows: int, cols: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": kind, "rows": rows, "cols": cols, "mode": None}
    meta["exif_orientation"] = None
    meta.update(dict.fromkeys(_DICOM_META_KEYS))
    return meta


# --------------------------------------------------------------------------------------------
# PNG and JPEG


def _read_pillow(data: bytes, path: bytes, kind: str) -> _Decoded:
    from PIL import ImageOps

    if kind == "png":
        height, width, bits = _check_png_chunks(data, path)
    else:
        height, width, bits = _check_jpeg_header(data, path)
    _check_pixel_count(path, height, width, 1)
    image = _open_pillow(data, path)
    width, height = image.size
    _check_pixel_count(path, height, width, 1)
    mode = image.mode
    _load_pillow(image, path)
    orientation = _exif_orientation(image)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    meta = _base_meta(kind, height, width)
    meta.update(mode=mode, exif_orientation=orientation, bits_stored=16 if bits == 16 else 8)
    return _Decoded(_pillow_to_float(image), meta, None)


def _open_pillow(data: bytes, path: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _error(TOO_LARGE, path, str(exc)) from None
    except UnidentifiedImageError:
        raise _error(DECODE_FAILED, path, "Pillow cannot identify the image") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise _error(_pillow_reason(exc), path, f"bad header: {exc}") from None


def _load_pillow(image: Any, path: bytes) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image.load()
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error, Warning) as exc:
        raise _error(_pillow_reason(exc), path, f"cannot decode: {exc}") from None


def _pillow_reason(exc: BaseException) -> str:
    return TRUNCATED if "truncated" in str(exc).lower() else DECODE_FAILED


def _exif_orientation(image: Any) -> int | None:
    try:
        value = image.getexif().get(0x0112)  # Orientation
    except Exception:  # a damaged EXIF block must not stop us reading the pixels
        return None
    return int(value) if isinstance(value, int) else None


def _pillow_to_float(image: Any) -> np.ndarray:
    if image.mode.startswith("I;16"):
        return _scaled(np.asarray(image), 65535.0)
    if image.mode == "I":  # 32-bit integer grey: Pillow's mode for some 16-bit files
        return np.clip(_scaled(np.asarray(image), 65535.0), 0.0, 1.0)
    if image.mode in ("LA", "La"):
        image = image.getchannel(0)
    elif image.mode != "L":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency advice: alpha is ignored anyway
            image = image.convert("L")
    return _scaled(np.asarray(image), 255.0)


def _scaled(values: np.ndarray, top: float) -> np.ndarray:
    out = values.astype(np.float32)
    out *= np.float32(1.0 / top)
    return out


def _check_png_chunks(data: bytes, path: bytes) -> tuple[int, int, int]:
    """Walk every chunk: lengths within the file, CRCs right, IHDR first, IEND present.

    Returns (rows, cols, bit depth) from IHDR.
    """
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    header: tuple[int, int, int] | None = None
    while True:
        if pos + 12 > len(data):
            raise _error(TRUNCATED, path, f"file ends at byte {len(data)} before the IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF:
            raise _error(CORRUPT, path, f"{kind!r} chunk at byte {pos} claims {length} bytes")
        if end > len(data):
            raise _error(
                TRUNCATED,
                path,
                f"{kind!r} chunk at byte {pos} needs {length} bytes; file ends at {len(data)}",
            )
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise _error(CORRUPT, path, f"bad CRC in {kind!r} chunk at byte {pos}")
        if header is None:
            header = _png_header(data, pos, kind, length, path)
        if kind == b"IEND":
            return header
        pos = end


def _png_header(data: bytes, pos: int, kind: bytes, length: int, path: bytes) -> tuple[int, int, int]:
    if kind != b"IHDR" or length != 13:
        raise _error(CORRUPT, path, f"first chunk is {kind!r} ({length} bytes), not a 13-byte IHDR")
    width, height, bit_depth = struct.unpack_from(">IIB", data, pos + 8)
    return height, width, bit_depth


def _check_jpeg_header(data: bytes, path: bytes) -> tuple[int, int, int]:
    """Walk the marker segments up to the first scan; returns (rows, cols, precision) from SOF.

    Pillow reports a file cut inside these headers only as "cannot identify image file". Also
    used for JPEG, JPEG lossless and JPEG-LS frames inside DICOM.
    """
    pos, size = 2, None
    while True:
        while data[pos : pos + 2] == b"\xff\xff":  # fill bytes
            pos += 1
        if pos + 4 > len(data):
            raise _error(TRUNCATED, path, f"file ends at byte {len(data)} before the first JPEG scan")
        if data[pos] != 0xFF:
            raise _error(CORRUPT, path, f"expected a JPEG marker at byte {pos}, found {data[pos]:02X}")
        marker = data[pos + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            reason = CORRUPT if length < 2 else TRUNCATED
            raise _error(
                reason,
                path,
                f"JPEG marker FF{marker:02X} at byte {pos} has length {length}; file has {len(data)} bytes",
            )
        if marker in _JPEG_FRAME_MARKERS and length >= 7:
            precision, rows, cols = struct.unpack_from(">BHH", data, pos + 4)
            size = (rows, cols, precision)
        if marker == 0xDA:  # start of scan
            if size is None:
                raise _error(CORRUPT, path, "JPEG scan before any frame header")
            return size
        pos += 2 + length


def _check_pixel_count(path: bytes, rows: int, cols: int, samples: int) -> None:
    count = rows * cols * samples
    if count > MAX_PIXELS:
        detail = f"{rows}x{cols}" + (f"x{samples} samples" if samples > 1 else "")
        raise _error(TOO_LARGE, path, f"{detail} = {count} pixel values exceeds the limit of {MAX_PIXELS}")


# --------------------------------------------------------------------------------------------
# DICOM: container


class _Geometry(NamedTuple):
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str


class _CutShortReader(io.BytesIO):
    """Counts reads that came back short: pydicom silently accepts a file cut almost anywhere.

    A complete file gives exactly one empty read (the next element header at the end); a cut file
    gives a partial read, or several empty ones.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.partial_reads = 0
        self.empty_reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > 0 and len(chunk) < size:
            if chunk:
                self.partial_reads += 1
            else:
                self.empty_reads += 1
        return chunk

    @property
    def cut_short(self) -> bool:
        return self.partial_reads > 0 or self.empty_reads > 1


def _read_dicom(data: bytes, path: bytes) -> _Decoded:
    syntax, meta_end = _transfer_syntax(data, path)
    if syntax == _DEFLATED:
        _check_inflated_size(data, meta_end, path)
    ds = _parse_dataset(data, path)
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        sop_class = _text(ds, "SOPClassUID") or "unknown"
        raise _error(NO_PIXEL_DATA, path, f"no Pixel Data element (SOP class {sop_class})")
    geometry = _geometry(ds, path)
    _check_pixel_count(path, geometry.rows, geometry.cols, geometry.samples)
    if keyword == "PixelData" and syntax not in _NATIVE_SYNTAXES:
        frame = _first_frame(ds, geometry, path)
        _check_frame_end(frame, syntax, path)
        raw, photometric = _decode_compressed(ds, syntax, geometry, frame, path)
    else:
        _check_native_length(ds[keyword].value, geometry, path)
        raw, photometric = _decode_with_pydicom(ds, syntax, ("",), path)
    if photometric in _MONOCHROME and raw.ndim != 2:
        raise _error(UNSUPPORTED_IMAGE, path, f"{photometric} with {geometry.samples} samples per pixel")
    pixels, voi = _to_display(raw, ds, photometric, geometry, path)
    meta = _dicom_meta(ds, syntax, geometry, voi)
    return _Decoded(pixels, meta, _text(ds, "PatientID"))


def _transfer_syntax(data: bytes, path: bytes) -> tuple[str, int]:
    """The Transfer Syntax UID and where the dataset starts, from the file meta group alone."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    # read_file_meta_info() only takes a path; its two steps take the bytes we already hold.
    reader = _CutShortReader(data)
    try:
        with warnings.catch_warnings(record=True):
            read_preamble(reader, False)
            file_meta = _read_file_meta_info(reader)
    except Exception as exc:
        reason = TRUNCATED if reader.partial_reads else CORRUPT
        raise _error(reason, path, f"unreadable file meta information: {exc}") from None
    syntax = str(file_meta.get("TransferSyntaxUID", "") or "").strip("\x00 ")
    if reader.partial_reads or (not syntax and reader.tell() >= len(data)):
        raise _error(TRUNCATED, path, f"file ends at byte {len(data)} inside the file meta information")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise _error(UNSUPPORTED_TRANSFER_SYNTAX, path, f"transfer syntax {_syntax_name(syntax)}")
    return syntax, reader.tell()


def _syntax_name(syntax: str) -> str:
    from pydicom.uid import UID

    if not syntax:
        return "missing"
    name = UID(syntax).name
    return syntax if name == syntax else f"{syntax} ({name})"


def _check_inflated_size(data: bytes, start: int, path: bytes) -> None:
    """pydicom inflates a deflated dataset in one go; refuse zip bombs before it tries."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(data)[start:]
    total = 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 24))
            pending = memoryview(inflater.unconsumed_tail)
            if total > MAX_FILE_BYTES:
                raise _error(
                    TOO_LARGE, path, f"deflated dataset inflates to more than {MAX_FILE_BYTES} bytes"
                )
    except zlib.error as exc:
        raise _error(CORRUPT, path, f"deflated dataset does not inflate: {exc}") from None
    if not inflater.eof:
        raise _error(TRUNCATED, path, f"deflated dataset ends early ({len(data)} bytes in file)")


def _parse_dataset(data: bytes, path: bytes) -> Any:
    import pydicom

    reader = _CutShortReader(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(reader)
        except Exception as exc:
            reason = TRUNCATED if reader.cut_short else CORRUPT
            raise _error(reason, path, f"cannot parse the dataset: {exc}") from None
    ended_early = [w for w in caught if "end of file" in str(w.message).lower()]
    if ended_early or reader.cut_short:
        detail = str(ended_early[0].message) if ended_early else "inside a data element"
        raise _error(TRUNCATED, path, f"file ends early, at byte {len(data)} ({detail})")
    return ds


def _geometry(ds: Any, path: bytes) -> _Geometry:
    values = {}
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = _int(ds, keyword)
        if value is None or value <= 0:
            raise _error(CORRUPT, path, f"{keyword} is {ds.get(keyword)!r}")
        values[keyword] = value
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    bits_stored = _int(ds, "BitsStored") or values["BitsAllocated"]
    photometric = _upper(ds.get("PhotometricInterpretation")) or ("MONOCHROME2" if samples == 1 else "RGB")
    if photometric not in _MONOCHROME + _COLOUR:
        raise _error(UNSUPPORTED_IMAGE, path, f"Photometric Interpretation {photometric!r}")
    return _Geometry(
        values["Rows"], values["Columns"], frames, samples, values["BitsAllocated"], bits_stored, photometric
    )


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _check_native_length(value: bytes, geometry: _Geometry, path: bytes) -> None:
    bits = geometry.rows * geometry.cols * geometry.samples * geometry.bits_allocated * geometry.frames
    expected = math.ceil(bits / 8)
    if geometry.photometric == "YBR_FULL_422":
        expected = expected * 2 // 3
    actual = len(value)
    shape = f"{geometry.rows}x{geometry.cols}x{geometry.samples} samples x {geometry.frames} frames"
    if actual < expected:
        raise _error(TRUNCATED, path, f"pixel data has {actual} bytes; {shape} needs {expected}")
    if actual > expected + (expected % 2):
        raise _error(DECODE_FAILED, path, f"pixel data has {actual} bytes; {shape} needs {expected}")


def _first_frame(ds: Any, geometry: _Geometry, path: bytes) -> bytes:
    from pydicom.encaps import get_frame

    value = ds.PixelData
    _check_encapsulation(value, path)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(value, 0, number_of_frames=geometry.frames, extended_offsets=offsets)
    except Exception as exc:
        raise _error(CORRUPT, path, f"cannot find the first frame: {exc}") from None


def _check_encapsulation(value: bytes, path: bytes) -> None:
    """Items (FFFE,E000) with lengths inside the data, the first being the offset table."""
    pos = 0
    items = 0
    while pos < len(value):
        if pos + 8 > len(value):
            raise _error(TRUNCATED, path, f"encapsulated pixel data ends inside an item header at byte {pos}")
        group, element, length = struct.unpack_from("<HHI", value, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise _error(
                CORRUPT, path, f"unexpected tag ({group:04X},{element:04X}) in encapsulated pixel data"
            )
        if pos + 8 + length > len(value):
            raise _error(
                TRUNCATED,
                path,
                f"fragment at byte {pos} claims {length} bytes; only {len(value) - pos - 8} left",
            )
        pos += 8 + length
        items += 1
    if items < 2:
        raise _error(TRUNCATED, path, "encapsulated pixel data has no fragments")


def _check_frame_end(frame: bytes, syntax: str, path: bytes) -> None:
    """Codecs pad or merely warn on a cut codestream; its end marker is the reliable test."""
    if syntax in _CODESTREAMS_ENDING_FFD9:
        end = frame.rstrip(b"\x00\xff")  # writers pad fragments with 00 or FF
        if not end.endswith(b"\xff\xd9"):
            raise _error(
                TRUNCATED,
                path,
                f"first frame ({len(frame)} bytes) ends with {frame[-4:].hex()}, not the FFD9 end marker",
            )
    elif syntax == _RLE:
        _check_rle_header(frame, path)


def _check_rle_header(frame: bytes, path: bytes) -> None:
    if len(frame) < 64:
        raise _error(TRUNCATED, path, f"RLE frame has {len(frame)} bytes, less than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", frame)
    if not 1 <= count <= 15:
        raise _error(CORRUPT, path, f"RLE header claims {count} segments")
    for offset in offsets[:count]:
        if offset >= len(frame):
            raise _error(TRUNCATED, path, f"RLE segment offset {offset} beyond the {len(frame)}-byte frame")


# --------------------------------------------------------------------------------------------
# DICOM: decoding


def _decode_compressed(
    ds: Any, syntax: str, geometry: _Geometry, frame: bytes, path: bytes
) -> tuple[np.ndarray, str]:
    if syntax in _JPEG_FAMILY:
        precision = _check_jpeg_frame_header(frame, geometry, path)
        if syntax == _JPEG_EXTENDED and precision > 8:
            return _decode_jpeg12_with_gdcm(frame, geometry, ds, path), geometry.photometric
    return _decode_with_pydicom(ds, syntax, _PLUGINS[syntax], path)


def _check_jpeg_frame_header(frame: bytes, geometry: _Geometry, path: bytes) -> int:
    """The frame header must describe the image the dataset describes; C codecs trust it blindly."""
    if not frame.startswith(b"\xff\xd8"):
        raise _error(CORRUPT, path, f"first frame starts with {frame[:4].hex()}, not a JPEG SOI marker")
    rows, cols, precision = _check_jpeg_header(frame, path)
    if (rows not in (0, geometry.rows)) or cols != geometry.cols or not 2 <= precision <= 16:
        raise _error(
            DECODE_FAILED,
            path,
            f"JPEG frame header says {rows}x{cols} with {precision}-bit samples; "
            f"the dataset says {geometry.rows}x{geometry.cols}",
        )
    return precision


def _decode_with_pydicom(
    ds: Any, syntax: str, plugins: tuple[str, ...], path: bytes
) -> tuple[np.ndarray, str]:
    """Decode frame 0 with the first plugin that succeeds; a warning from any plugin is fatal."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    available = set(decoder.available_plugins)
    candidates = [p for p in plugins if p == "" or p in available]
    if not candidates:
        raise _error(
            DECODE_FAILED, path, f"no decoder installed for {_syntax_name(syntax)} (need one of {plugins})"
        )
    failures = []
    for plugin in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                array, info = decoder.as_array(ds, index=0, decoding_plugin=plugin, as_rgb=True)
            return array, str(info.get("photometric_interpretation", ds.PhotometricInterpretation))
        except (MemoryError, KeyboardInterrupt, SystemExit):
            raise
        except Warning as exc:
            raise _error(
                _codec_reason(str(exc)), path, f"decoder warning ({plugin or 'native'}): {exc}"
            ) from None
        except BaseException as exc:  # including pyo3's PanicException from pylibjpeg-rle
            failures.append(f"{plugin or 'native'}: {_last_line(exc)}")
    detail = "; ".join(failures)
    raise _error(_codec_reason(detail), path, f"cannot decode {_syntax_name(syntax)}: {detail}")


def _codec_reason(message: str) -> str:
    lowered = message.lower()
    early_end = ("truncat", "end of the data", "less than expected", "premature end", "insufficient data")
    return TRUNCATED if any(s in lowered for s in early_end) else DECODE_FAILED


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _decode_jpeg12_with_gdcm(frame: bytes, geometry: _Geometry, ds: Any, path: bytes) -> np.ndarray:
    """12-bit JPEG extended (process 4): pydicom's GDCM plugin declines it, GDCM itself does not."""
    try:
        import gdcm
    except ImportError:
        raise _error(DECODE_FAILED, path, "12-bit JPEG extended needs python-gdcm") from None
    if geometry.samples != 1:
        raise _error(
            UNSUPPORTED_IMAGE, path, f"12-bit JPEG extended with {geometry.samples} samples per pixel"
        )
    signed = _int(ds, "PixelRepresentation") == 1
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((geometry.cols, geometry.rows, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2)
    )
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, geometry.bits_stored, geometry.bits_stored - 1, int(signed)))
    buffer = image.GetBuffer()
    expected = geometry.rows * geometry.cols * 2
    if buffer is None:
        raise _error(DECODE_FAILED, path, "GDCM could not decode the 12-bit JPEG frame")
    raw = buffer.encode("utf-8", "surrogateescape")  # GDCM hands back char* as str
    if len(raw) != expected:
        raise _error(DECODE_FAILED, path, f"GDCM returned {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype="<i2" if signed else "<u2").reshape(geometry.rows, geometry.cols)


# --------------------------------------------------------------------------------------------
# DICOM: display transform


def _to_display(
    raw: np.ndarray, ds: Any, photometric: str, geometry: _Geometry, path: bytes
) -> tuple[np.ndarray, str]:
    if photometric in _MONOCHROME:
        # Overflow and NaN are checked for explicitly (here and in _finish); numpy's warnings would only
        # reach stderr.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            values = _modality_lut(raw, ds)
            _check_modality_output(values, ds, path)
            scaled, voi = _apply_voi(values, ds)
        if photometric == "MONOCHROME1":
            scaled = np.subtract(np.float32(1.0), scaled, out=scaled)
        return np.ascontiguousarray(scaled, dtype=np.float32), voi
    return _colour_to_grey(raw, ds, photometric, geometry), "none"


def _modality_lut(raw: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        try:
            return apply_modality_lut(raw, ds)
        except Exception:  # a broken modality LUT: the stored values are the best we have
            return raw
    return raw


def _check_modality_output(values: np.ndarray, ds: Any, path: bytes) -> None:
    """A NaN, infinite or huge Rescale Slope/Intercept (valid DS strings all) would turn every pixel into
    NaN further on; refuse the image here, naming the values, instead of scoring noise."""
    if values.size == 0 or np.issubdtype(values.dtype, np.integer):
        return
    low, high = float(values.min()), float(values.max())  # NaN propagates through min/max
    if math.isfinite(low) and math.isfinite(high) and max(-low, high) <= _FLOAT32_MAX:
        return
    if "ModalityLUTSequence" in ds:
        source = "the Modality LUT Sequence"
    else:
        slope, intercept = _first_value_or_text(ds, "RescaleSlope"), _first_value_or_text(ds, "RescaleIntercept")
        source = f"Rescale Slope {slope} and Intercept {intercept}"
    raise _error(INVALID_PIXELS, path, f"{source} give pixel values in [{low:g}, {high:g}], "
                                       "not finite float32 values")


def _first_value_or_text(ds: Any, keyword: str) -> str:
    try:
        value = _first_value(ds.get(keyword))
    except (TypeError, ValueError):
        return "(unreadable)"
    return "(absent)" if value is None else f"{value:g}"


def _check_display_range(pixels: np.ndarray, path: bytes) -> None:
    """The last guard of every path: what leaves the reader is finite and in [0, 1]."""
    if pixels.size == 0:
        return
    low, high = float(pixels.min()), float(pixels.max())
    if not (0.0 <= low <= high <= 1.0):  # False for NaN too
        raise _error(INVALID_PIXELS, path, f"the display transform gives values in [{low:g}, {high:g}], "
                                           "not in [0, 1]")


def _apply_voi(values: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    lut = _voi_lut(values, ds)
    if lut is not None:
        return lut, "voi_lut"
    window = _first_window(ds)
    if window is not None:
        return _window(values.astype(np.float32), *window), "window"
    return _percentile_window(values.astype(np.float32)), "percentile"


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    from pydicom.pixels import apply_voi

    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    try:
        bits = int(sequence[0].LUTDescriptor[2])
        if not 1 <= bits <= 16:  # PS3.3 C.11.2.1.1 allows 8 to 16; 0 would divide by zero below
            return None
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)
        mapped = apply_voi(values, ds, index=0)
    except Exception:  # unusable LUT: fall back to the window, then the percentiles
        return None
    return np.clip(_scaled(mapped, float(2**bits - 1)), 0.0, 1.0)


def _first_window(ds: Any) -> tuple[float, float, str] | None:
    try:
        center = _first_value(ds.get("WindowCenter"))
        width = _first_value(ds.get("WindowWidth"))
        function = _upper(ds.get("VOILUTFunction")) or "LINEAR"
    except (TypeError, ValueError):
        return None
    if center is None or width is None or not (abs(center) <= _FLOAT32_MAX and abs(width) <= _FLOAT32_MAX):
        return None  # absent, NaN, infinite, or too large for the float32 arithmetic of _window
    valid = width > 0 if function in ("LINEAR_EXACT", "SIGMOID") else width >= 1
    return (center, width, function) if valid else None


def _first_value(value: Any) -> float | None:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 and C.11.2.1.3, straight to [0, 1] (pydicom maps to the stored-bit range)."""
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - np.float32(center)) / np.float32(width)))).astype(
            np.float32
        )
    if function == "LINEAR_EXACT":
        low, span = center - width / 2, width
    else:  # LINEAR, also for unknown functions
        low, span = center - 0.5 - (width - 1) / 2, width - 1
    if span == 0:
        return (values > low).astype(np.float32)
    out = values - np.float32(low)
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    low, high = (float(v) for v in np.percentile(values, _PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = values - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def _colour_to_grey(raw: np.ndarray, ds: Any, photometric: str, geometry: _Geometry) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(raw, ds)
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    else:
        rgb = raw
        top = float(2 ** min(geometry.bits_stored, 32) - 1)
    if rgb.ndim == 2:  # a colour interpretation with one sample: treat it as grey
        grey = rgb.astype(np.float32)
    else:
        grey = rgb[..., :3].astype(np.float32) @ _LUMA
    return np.clip(_scaled(grey, top), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# DICOM: metadata


def _dicom_meta(ds: Any, syntax: str, geometry: _Geometry, voi: str) -> dict[str, Any]:
    meta = _base_meta("dicom", geometry.rows, geometry.cols)
    meta.update({key: _text(ds, keyword) for key, keyword in _TEXT_KEYWORDS.items()})
    meta.update(
        photometric=geometry.photometric,
        bits_stored=geometry.bits_stored,
        pixel_spacing=_pixel_spacing(ds),
        transfer_syntax=syntax,
        frames=geometry.frames,
        voi=voi,
    )
    return meta


def _text(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    text = str(value).strip("\x00 ")
    return text or None


def _pixel_spacing(ds: Any) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            spacing = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(v > 0 and math.isfinite(v) for v in spacing):
            return spacing  # [row spacing, column spacing] in mm; zeros mean "unknown"
    return None


# --------------------------------------------------------------------------------------------
# Isolated decoding in a child process


class _IsolatedReader:
    """One decoder child, owned by the process that created this object.

    Requests and headers travel as pickles over a socket pair; the pixels follow as raw bytes
    received straight into the result array (one kernel copy each way, no pickling).
    """

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def read(self, path: bytes, timeout: float) -> _Decoded:
        with self._lock:
            try:
                self._send(path)
                return self._receive(path, timeout)
            except XRayReadError:
                raise  # the child has already been replaced where that was needed
            except BaseException:
                self._discard()  # interrupted mid-conversation: the child's state is unknown
                raise

    def start(self) -> int:
        with self._lock:
            self._ensure_started()
            assert self._process is not None
            return self._process.pid

    def stop(self) -> None:
        with self._lock:
            self._discard(graceful=True)

    def forget(self) -> None:
        """In a forked copy of the owner: drop our handles on the owner's child, leave it running."""
        for handle in (self._conn, self._sock):
            if handle is not None:
                handle.close()
        self._conn, self._sock, self._process = None, None, None

    def _send(self, path: bytes) -> None:
        for attempt in (1, 2):
            self._ensure_started()
            assert self._conn is not None
            try:
                self._conn.send(path)
                return
            except OSError:  # the child died between calls (killed from outside): start afresh
                self._discard()
                if attempt == 2:
                    raise

    def _receive(self, path: bytes, timeout: float) -> _Decoded:
        deadline = time.monotonic() + timeout
        self._wait(path, deadline, timeout)
        assert self._conn is not None
        try:
            header = self._conn.recv()
        except (EOFError, OSError):
            raise self._crashed(path) from None
        if header[0] == "error":
            raise XRayReadError(header[1], header[2])
        _, meta, patient_id, shape = header
        pixels = np.empty(shape, dtype=np.float32)
        self._receive_into(memoryview(pixels).cast("B"), path, deadline, timeout)
        return _Decoded(pixels, meta, patient_id)

    def _receive_into(self, view: memoryview, path: bytes, deadline: float, timeout: float) -> None:
        assert self._sock is not None
        received = 0
        while received < len(view):
            self._wait(path, deadline, timeout)
            try:
                count = self._sock.recv_into(view[received:])
            except OSError:
                count = 0
            if count == 0:
                raise self._crashed(path)
            received += count

    def _wait(self, path: bytes, deadline: float, timeout: float) -> None:
        assert self._conn is not None
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            self._discard()
            raise _error(TIMEOUT, path, f"no result within the time limit of {timeout:g} s")

    def _crashed(self, path: bytes) -> XRayReadError:
        description = self._exit_description()
        self._discard()
        return _error(DECODE_FAILED, path, f"decoder crashed ({description})")

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._discard()
        if self._conn is None:
            self._start()

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        command = [sys.executable, "-c", "from scoring.imaging import _child_main; _child_main()"]
        try:
            self._process = subprocess.Popen(
                [*command, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is for the caller, not the child
            )
        finally:
            child_sock.close()
        self._sock = parent_sock
        self._conn = Connection(os.dup(parent_sock.fileno()))
        if not self._conn.poll(CHILD_START_TIMEOUT_S):
            self._discard()
            raise RuntimeError(f"the isolated X-ray decoder did not start within {CHILD_START_TIMEOUT_S:g} s")
        try:
            self._conn.recv()  # ("ready", pid)
        except (EOFError, OSError):
            description = self._exit_description()
            self._discard()
            raise RuntimeError(f"the isolated X-ray decoder failed to start ({description})") from None

    def _exit_description(self) -> str:
        process = self._process
        if process is None:
            return "no process"
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "connection lost"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def _discard(self, graceful: bool = False) -> None:
        conn, sock, process = self._conn, self._sock, self._process
        self._conn, self._sock, self._process = None, None, None
        for handle in (conn, sock):
            if handle is not None:
                handle.close()  # EOF for the child, which then exits on its own
        if process is None:
            return
        if graceful:
            try:
                process.wait(timeout=2)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait()


_READER: _IsolatedReader | None = None
_READER_LOCK = threading.Lock()


def _isolated_reader() -> _IsolatedReader:
    global _READER
    with _READER_LOCK:
        if _READER is None or _READER.owner_pid != os.getpid():
            _READER = _IsolatedReader()
        return _READER


def _after_fork_in_child() -> None:
    global _READER, _READER_LOCK
    _READER_LOCK = threading.Lock()
    if _READER is not None:
        _READER.forget()
    _READER = None


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_reader_process)


def _child_main() -> None:
    """The decoder child: read paths from the connection, answer with pixels or an error."""
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=os.dup(fd))
    conn = Connection(fd)
    logging.getLogger("pydicom").addHandler(logging.NullHandler())
    logging.getLogger("pydicom").propagate = False  # its warnings become our error messages
    _warm_up()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return
        delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        _answer(conn, sock, path)


def _answer(conn: Connection, sock: socket.socket, path: bytes) -> None:
    try:
        decoded = _decode_file(path)
    except XRayReadError as exc:
        conn.send(("error", exc.reason, exc.message))
        return
    pixels = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
    conn.send(("ok", decoded.meta, decoded.patient_id, pixels.shape))
    sock.sendall(memoryview(pixels).cast("B"))


def _warm_up() -> None:
    """Import the codecs now, so that their import time does not count against a file's limit."""
    import PIL.Image
    import PIL.JpegImagePlugin  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import pydicom.pixels  # noqa: F401

    PIL.Image.init()
    for module in ("gdcm", "openjpeg", "jpeg_ls", "rle"):
        try:
            __import__(module)
        except ImportError:
            pass
