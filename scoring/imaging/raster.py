"""PNG and JPEG, decoded with Pillow after checks of our own.

PNG chunk lengths and CRCs are checked first (Pillow skips the CRC of IDAT chunks and accepts a
file whose last chunks are missing); JPEG marker segments are walked up to the first scan.
``MAX_PIXELS`` is checked from IHDR/SOF before Pillow decodes anything, and Pillow's own
decompression-bomb limit stays in force; ``LOAD_TRUNCATED_IMAGES`` is never set. Grey 8-bit is
divided by 255, 16-bit (mode ``I;16``) by 65535; palette, RGB(A), CMYK and the rest go through
Pillow's ``convert("L")`` (ITU-R 601-2 luma, alpha ignored). The EXIF orientation is applied.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np

from .display import scaled
from .downsample import reduce_to
from .errors import CORRUPT, DECODE_FAILED, TOO_LARGE, TRUNCATED, error, scrub
from .files import PNG_SIGNATURE, check_pixel_count
from .results import Decoded, base_meta

_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0-15, SOF55


def read_pillow(data: bytes, path: bytes, kind: str, min_side: int | None = None) -> Decoded:
    from PIL import ImageOps

    if kind == "png":
        height, width, bits = _check_png_chunks(data, path)
    else:
        height, width, bits = check_jpeg_header(data, path)
    check_pixel_count(path, height, width, 1)
    image = _open_pillow(data, path)
    width, height = image.size
    check_pixel_count(path, height, width, 1)
    mode = image.mode
    scale = draft(image, min_side) if kind == "jpeg" and min_side is not None else 1
    _load_pillow(image, path)
    orientation = _exif_orientation(image)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    meta = base_meta(kind, height, width)
    meta.update(mode=mode, exif_orientation=orientation, bits_stored=16 if bits == 16 else 8)
    if min_side is None:
        return Decoded(_pillow_to_float(image), meta, None)
    values, top = _pillow_grey(image)
    values, factor = reduce_to(values, min_side)
    meta["decode_scale"] = 1.0 / (scale * factor)
    return Decoded(_grey_to_float(values, top), meta, None)


def draft(image: Any, min_side: int) -> int:
    """Pillow's DCT scaling for an unloaded JPEG: the largest of 1/2, 1/4, 1/8 that keeps the shorter side at
    least ``min_side``. Returns the scale denominator (1: no scaling)."""
    width, height = image.size
    scale = 1
    while scale < 8 and min(-(-width // (scale * 2)), -(-height // (scale * 2))) >= min_side:
        scale *= 2
    if scale == 1 or image.draft(None, (width // scale, height // scale)) is None:
        return 1
    return round(width / image.size[0])


def check_jpeg_header(data: bytes, path: bytes) -> tuple[int, int, int]:
    """Walk the marker segments up to the first scan; returns (rows, cols, precision) from SOF.

    Pillow reports a file cut inside these headers only as "cannot identify image file". Also
    used for JPEG, JPEG lossless and JPEG-LS frames inside DICOM.
    """
    pos, size = 2, None
    while True:
        while data[pos : pos + 2] == b"\xff\xff":  # fill bytes
            pos += 1
        if pos + 4 > len(data):
            raise error(TRUNCATED, path, f"file ends at byte {len(data)} before the first JPEG scan")
        if data[pos] != 0xFF:
            raise error(CORRUPT, path, f"expected a JPEG marker at byte {pos}, found {data[pos]:02X}")
        marker = data[pos + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            reason = CORRUPT if length < 2 else TRUNCATED
            raise error(
                reason,
                path,
                f"JPEG marker FF{marker:02X} at byte {pos} has length {length}; file has {len(data)} bytes",
            )
        if marker in _JPEG_FRAME_MARKERS and length >= 7:
            precision, rows, cols = struct.unpack_from(">BHH", data, pos + 4)
            size = (rows, cols, precision)
        if marker == 0xDA:  # start of scan
            if size is None:
                raise error(CORRUPT, path, "JPEG scan before any frame header")
            return size
        pos += 2 + length


def _open_pillow(data: bytes, path: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise error(TOO_LARGE, path, scrub(exc)) from None
    except UnidentifiedImageError:
        raise error(DECODE_FAILED, path, "Pillow cannot identify the image") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise error(_pillow_reason(exc), path, f"bad header: {scrub(exc)}") from None


def _load_pillow(image: Any, path: bytes) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image.load()
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error, Warning) as exc:
        raise error(_pillow_reason(exc), path, f"cannot decode: {scrub(exc)}") from None


def _pillow_reason(exc: BaseException) -> str:
    return TRUNCATED if "truncated" in str(exc).lower() else DECODE_FAILED


def _exif_orientation(image: Any) -> int | None:
    try:
        value = image.getexif().get(0x0112)  # Orientation
    except Exception:  # a damaged EXIF block must not stop us reading the pixels
        return None
    return int(value) if isinstance(value, int) else None


def _pillow_to_float(image: Any) -> np.ndarray:
    return _grey_to_float(*_pillow_grey(image))


def _pillow_grey(image: Any) -> tuple[np.ndarray, float]:
    """The grey samples as integers, and the value that means white."""
    if image.mode.startswith("I;16") or image.mode == "I":  # "I": 32-bit grey, Pillow's mode for some 16-bit files
        return np.asarray(image), 65535.0
    if image.mode in ("LA", "La"):
        image = image.getchannel(0)
    elif image.mode != "L":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency advice: alpha is ignored anyway
            image = image.convert("L")
    return np.asarray(image), 255.0


def _grey_to_float(values: np.ndarray, top: float) -> np.ndarray:
    out = scaled(values, top)
    return np.clip(out, 0.0, 1.0, out=out) if values.dtype.itemsize > 2 else out


def _check_png_chunks(data: bytes, path: bytes) -> tuple[int, int, int]:
    """Walk every chunk: lengths within the file, CRCs right, IHDR first, IEND present.

    Returns (rows, cols, bit depth) from IHDR.
    """
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    header: tuple[int, int, int] | None = None
    while True:
        if pos + 12 > len(data):
            raise error(TRUNCATED, path, f"file ends at byte {len(data)} before the IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF:
            raise error(CORRUPT, path, f"{_chunk_name(kind)} chunk at byte {pos} claims {length} bytes")
        if end > len(data):
            raise error(
                TRUNCATED,
                path,
                f"{_chunk_name(kind)} chunk at byte {pos} needs {length} bytes; file ends at {len(data)}",
            )
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise error(CORRUPT, path, f"bad CRC in {_chunk_name(kind)} chunk at byte {pos}")
        if header is None:
            header = _png_header(data, pos, kind, length, path)
        if kind == b"IEND":
            return header
        pos = end


def _png_header(data: bytes, pos: int, kind: bytes, length: int, path: bytes) -> tuple[int, int, int]:
    if kind != b"IHDR" or length != 13:
        raise error(CORRUPT, path, f"first chunk is {_chunk_name(kind)} ({length} bytes), not a 13-byte IHDR")
    width, height, bit_depth = struct.unpack_from(">IIB", data, pos + 8)
    return height, width, bit_depth


def _chunk_name(kind: bytes) -> str:
    """A chunk type as the PNG specification writes it (IDAT), or its bytes in hex when they are not letters."""
    return kind.decode("ascii") if kind.isalpha() else kind.hex(" ")
