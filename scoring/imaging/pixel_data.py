"""DICOM pixel data: the supported transfer syntaxes, checks on compressed frames, and the codecs.

12-bit JPEG extended, lossless JPEG, JPEG-LS, HTJ2K and RLE of unsigned one-sample images are decoded with
imagecodecs first (libjpeg-turbo 3, CharLS, OpenJPH, its own PackBits; BSD-3-Clause, its bundled libraries
permissively licensed); anything it refuses goes to pydicom and these permissively licensed plugins, tried in this
order (a warning from any of them is an error; an exception moves on to the next): JPEG baseline and 8-bit
extended: Pillow, GDCM. 12-bit JPEG extended: GDCM, called directly because pydicom's GDCM plugin declines 12-bit
(it first tries its 8-bit libjpeg, which says so on stderr, hence imagecodecs first). JPEG lossless (process
14, SV1): GDCM. JPEG-LS: pyjpegls, GDCM. JPEG 2000: pylibjpeg-openjpeg, GDCM, Pillow. HTJ2K: pylibjpeg-openjpeg.
RLE: pylibjpeg-rle, pydicom. The GPL pylibjpeg-libjpeg is never asked for, even when installed.

A reduced decode (the scorer needs a few hundred pixels a side) takes a codec's resolution shortcut where there is
one: JPEG 2000 through Pillow's OpenJPEG reduce, HTJ2K through OpenJPH's skipped resolutions, 8-bit JPEG through
Pillow's DCT scaling. None of them is taken for signed pixels (Pillow and the codestream headers read them as
unsigned): those are decoded in full, then averaged down.

A lossless syntax reads as the native file it encodes: the bits above Bits Stored (an old overlay, noise, which a
codestream of a higher precision than Bits Stored keeps) are cleared, or for signed pixels set from the sign bit, as
pydicom does for native pixel data (:func:`clear_unused_bits`), after a full decode of lossless JPEG, JPEG-LS
lossless, JPEG 2000 lossless, HTJ2K lossless and RLE, whichever decoder ran (pydicom itself does it after RLE and
JPEG, not after JPEG-LS and JPEG 2000). Lossy outputs (12-bit and 8-bit JPEG, JPEG-LS near-lossless, JPEG 2000 and
HTJ2K 1.2.840.10008.1.2.4.203, which may be lossy) and the reduced decodes are kept as the codec gives them: such a
value may overshoot its precision by a little, and clearing its high bits would wrap white to black (a codestream
whose precision is Bits Stored, the usual case, has no such bits anyway).

Before any codec runs, the encapsulation is walked, the first frame must end with its
end-of-codestream marker (the JPEG-LS and JPEG 2000 decoders pad a cut stream silently) and a JPEG
frame header must agree with Rows/Columns (GDCM segfaults on some that do not). Only the first
frame is ever decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np

from .errors import CORRUPT, DECODE_FAILED, TRUNCATED, UNSUPPORTED_IMAGE, error, scrub
from .header import MONOCHROME, Geometry, int_value, syntax_name
from .raster import check_jpeg_header, draft

# Transfer syntax UID -> pydicom decoding plugins to try, in order. "" is pydicom's native decoder.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
_J2K_PLUGINS = ("pylibjpeg", "gdcm", "pillow")
_J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
# High-Throughput JPEG 2000 (Part 15): lossless, lossless with RPCL progression, lossless or lossy
HTJ2K_SYNTAXES = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_JPEG_LS_PLUGINS = ("pyjpegls", "gdcm")
PLUGINS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": ("",),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": ("",),  # Explicit VR Little Endian
    DEFLATED: ("",),  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2": ("",),  # Explicit VR Big Endian
    RLE: ("pylibjpeg", "pydicom"),
    JPEG_BASELINE: ("pillow", "gdcm"),
    JPEG_EXTENDED: ("pillow", "gdcm"),
    "1.2.840.10008.1.2.4.57": ("gdcm",),  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": ("gdcm",),  # JPEG Lossless, process 14 SV1
    "1.2.840.10008.1.2.4.80": _JPEG_LS_PLUGINS,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": _JPEG_LS_PLUGINS,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": _J2K_PLUGINS,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": _J2K_PLUGINS,  # JPEG 2000
    **{syntax: ("pylibjpeg",) for syntax in HTJ2K_SYNTAXES},  # pylibjpeg-openjpeg (OpenJPEG 2.5)
}
# Tried before the plugins above (BSD-3-Clause wheel; its bundled libraries are permissively licensed).
_IMAGECODECS_DECODERS = {
    JPEG_EXTENDED: "jpeg8_decode",  # 12-bit only: Pillow takes 8-bit JPEG, which it can decode smaller
    "1.2.840.10008.1.2.4.57": "jpeg8_decode",  # libjpeg-turbo 3 decodes lossless JPEG (process 14)
    "1.2.840.10008.1.2.4.70": "jpeg8_decode",
    "1.2.840.10008.1.2.4.80": "jpegls_decode",  # CharLS
    "1.2.840.10008.1.2.4.81": "jpegls_decode",
    **{syntax: "htj2k_decode" for syntax in HTJ2K_SYNTAXES},  # OpenJPH
    RLE: "dicomrle_decode",  # 8- and 16-bit only (see _imagecodecs_rle)
}
SUPPORTED_TRANSFER_SYNTAXES = frozenset(PLUGINS)
NATIVE_SYNTAXES = frozenset(uid for uid, plugins in PLUGINS.items() if plugins == ("",))
# Every JPEG, JPEG-LS and JPEG 2000 codestream ends with FF D9 (EOI / EOC).
_CODESTREAMS_ENDING_FFD9 = frozenset(PLUGINS) - NATIVE_SYNTAXES - {RLE}
_JPEG_FAMILY = _CODESTREAMS_ENDING_FFD9 - set(_J2K_SYNTAXES) - set(HTJ2K_SYNTAXES)
# Lossless by definition: a full decode gives the stored pixel cells, bits above Bits Stored and all
LOSSLESS_SYNTAXES = frozenset(("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                               _J2K_SYNTAXES[0], *HTJ2K_SYNTAXES[:2], RLE))


# The package that provides each pydicom plugin the reader asks for, to say what to install.
_PLUGIN_PACKAGES = {"pylibjpeg": "pylibjpeg-openjpeg or pylibjpeg-rle", "gdcm": "python-gdcm",
                    "pyjpegls": "pyjpegls", "pillow": "pillow", "pydicom": "pydicom"}


def missing_codecs() -> list[str]:
    """The supported transfer syntaxes that no installed plugin can decode, each with what to install.

    Empty when every codec is there. The scorer checks this before a run: files it cannot decode because a
    codec is missing from this machine would otherwise be recorded as the files' failures, and skipped
    until they change, long after the codec is installed.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    missing = []
    for syntax, plugins in PLUGINS.items():
        if syntax in NATIVE_SYNTAXES:
            continue
        if not set(get_decoder(syntax).available_plugins) & set(plugins):
            packages = " or ".join(dict.fromkeys(_PLUGIN_PACKAGES[p] for p in plugins))
            missing.append(f"{UID(syntax).name} (install {packages})")
    if not _gdcm_importable():
        missing.append(f"{UID(JPEG_EXTENDED).name} at 12 bits (install python-gdcm)")
    return missing


def _gdcm_importable() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def first_frame(ds: Any, geometry: Geometry, path: bytes) -> bytes:
    from pydicom.encaps import get_frame

    value = ds.PixelData
    _check_encapsulation(value, path)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(value, 0, number_of_frames=geometry.frames, extended_offsets=offsets)
    except Exception as exc:
        raise error(CORRUPT, path, f"cannot find the first frame: {scrub(exc)}") from None


def check_frame_end(frame: bytes, syntax: str, path: bytes) -> None:
    """Codecs pad or merely warn on a cut codestream; its end marker is the reliable test."""
    if syntax in _CODESTREAMS_ENDING_FFD9:
        end = frame.rstrip(b"\x00\xff")  # writers pad fragments with 00 or FF
        if not end.endswith(b"\xff\xd9"):
            raise error(
                TRUNCATED,
                path,
                f"first frame ({len(frame)} bytes) ends with {frame[-4:].hex()}, not the FFD9 end marker",
            )
    elif syntax == RLE:
        _check_rle_header(frame, path)


def decode_compressed(
    ds: Any, syntax: str, geometry: Geometry, frame: bytes, path: bytes, min_side: int | None = None
) -> tuple[np.ndarray, str, int]:
    """Frame 0 and its photometric interpretation, and how many times smaller than stored it was decoded
    (1 for a full decode). With ``min_side`` the codec may decode less (see ``decode_reduced``)."""
    precision = None
    if syntax in _JPEG_FAMILY:
        precision = _check_jpeg_frame_header(frame, geometry, path)
    jpeg12 = syntax == JPEG_EXTENDED and precision > 8
    if syntax in _IMAGECODECS_DECODERS and (syntax != JPEG_EXTENDED or jpeg12):
        decoded = _decode_with_imagecodecs(ds, syntax, geometry, frame)
        if decoded is not None:
            return _stored_values(decoded, syntax, geometry), geometry.photometric, 1
    if jpeg12:
        return _decode_jpeg12_with_gdcm(frame, geometry, ds, path), geometry.photometric, 1
    if min_side is not None:
        reduced = decode_reduced(ds, syntax, geometry, frame, min_side, precision)
        if reduced is not None:
            return reduced[0], geometry.photometric, reduced[1]
    array, photometric = decode_with_pydicom(ds, syntax, PLUGINS[syntax], path)
    return _stored_values(array, syntax, geometry), photometric, 1


def _stored_values(array: np.ndarray, syntax: str, geometry: Geometry) -> np.ndarray:
    """A full decode's pixels as the native file would read: the bits above Bits Stored cleared (or sign-extended)
    after a lossless syntax, one sample per pixel; anything else as decoded (see the module's docstring)."""
    if syntax not in LOSSLESS_SYNTAXES or geometry.samples != 1 or array.dtype.kind not in "ui":
        return array
    return clear_unused_bits(array if array.flags.writeable else array.copy(), geometry.bits_stored)


def _decode_with_imagecodecs(ds: Any, syntax: str, geometry: Geometry, frame: bytes) -> np.ndarray | None:
    """Frame 0 of an unsigned one-sample image through imagecodecs (libjpeg-turbo 3 for 12-bit and lossless JPEG,
    CharLS for JPEG-LS, OpenJPH for HTJ2K, PackBits for RLE), several times faster: the values GDCM, pyjpegls,
    pylibjpeg-openjpeg and pylibjpeg-rle decode, as the codestream holds them (``decode_compressed`` then clears the
    bits above Bits Stored after a lossless syntax, whichever decoder ran, so the reader's pixels are the same
    either way). None where it does not apply or the codec refuses the frame (or warns): the pydicom plugins then
    decode it, or give the failure its proper reason."""
    if geometry.samples != 1 or int_value(ds, "PixelRepresentation") != 0:
        return None
    try:
        import imagecodecs

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if syntax == RLE:
                return _imagecodecs_rle(frame, geometry)
            array = getattr(imagecodecs, _IMAGECODECS_DECODERS[syntax])(frame)
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        return None
    if array.shape != (geometry.rows, geometry.cols) or array.dtype not in (np.uint8, np.uint16):
        return None
    return array.astype(np.uint16, copy=False) if geometry.bits_allocated == 16 else array


def clear_unused_bits(array: np.ndarray, bits_stored: int) -> np.ndarray:
    """The bits above Bits Stored, in place, as pydicom sets them (PS3.5 8.1.1: their content is not the pixel's):
    cleared for unsigned values, copies of the sign bit for signed ones (12-bit 0x0800 is -2048)."""
    width = array.dtype.itemsize * 8
    if not 0 < bits_stored < width:
        return array
    if array.dtype.kind == "u":
        return np.bitwise_and(array, (1 << bits_stored) - 1, out=array)
    np.left_shift(array, width - bits_stored, out=array)
    return np.right_shift(array, width - bits_stored, out=array)


def _imagecodecs_rle(frame: bytes, geometry: Geometry) -> np.ndarray | None:
    """An RLE frame's byte segments put back together by imagecodecs (under a third of pydicom's time with
    pylibjpeg-rle). The segments carry no shape, so every decoded byte must be accounted for."""
    import imagecodecs

    if geometry.bits_allocated not in (8, 16):
        return None
    dtype = np.dtype("<u2" if geometry.bits_allocated == 16 else "u1")
    out = np.empty(geometry.rows * geometry.cols * dtype.itemsize, np.uint8)
    decoded = imagecodecs.dicomrle_decode(frame, dtype.str, out=out)
    if decoded is not out or len(decoded) != out.size:
        return None
    return out.view(dtype).reshape(geometry.rows, geometry.cols)


def decode_reduced(
    ds: Any, syntax: str, geometry: Geometry, frame: bytes, min_side: int, jpeg_precision: int | None
) -> tuple[np.ndarray, int] | None:
    """Frame 0 of a one-sample monochrome image decoded smaller by the codec itself (shorter side still at
    least ``min_side``), with the reduction factor; None where there is no shortcut or the codestream refuses
    it, and the caller decodes in full (which also gives any failure its proper reason)."""
    if geometry.samples != 1 or geometry.photometric not in MONOCHROME:
        return None
    if int_value(ds, "PixelRepresentation") not in (None, 0):  # every shortcut reads its samples as unsigned
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if syntax in _J2K_SYNTAXES:
                return _j2k_reduced(frame, geometry, ds, min_side)
            if syntax in HTJ2K_SYNTAXES:
                return _htj2k_reduced(frame, geometry, ds, min_side)
            if syntax in (JPEG_BASELINE, JPEG_EXTENDED) and jpeg_precision == 8 and geometry.bits_allocated == 8:
                return _jpeg_draft(frame, geometry, min_side)
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # Pillow refused the shortcut: the full decode tries every plugin and reports properly
        return None
    return None


def _j2k_reduced(frame: bytes, geometry: Geometry, ds: Any, min_side: int) -> tuple[np.ndarray, int] | None:
    """OpenJPEG's reduce factor through Pillow, on the raw codestream: the coarsest resolution level whose
    shorter side is still at least ``min_side``, no coarser than the codestream's decomposition levels.

    Pillow returns samples of more than 8 bits scaled up to 16 (a 12-bit 4095 comes back as 65520); the
    shift back gives the stored values the modality LUT and the window expect. Signed samples, several
    components, image offsets or a size that disagrees with the dataset are left to the full decode.
    """
    found = _reduction_level(frame, geometry, ds, min_side)
    if found is None:
        return None
    level, precision = found
    for attempt in range(level, 0, -1):  # a codestream may refuse a level (e.g. precincts); try finer ones
        try:
            values = _pillow_j2k(frame, attempt)
        except OSError:
            continue
        if precision > 8:
            values = values >> (16 - precision)
        return values, 1 << attempt
    return None


def _reduction_level(frame: bytes, geometry: Geometry, ds: Any, min_side: int) -> tuple[int, int] | None:
    """For a (HT)JPEG 2000 codestream of one unsigned component the size the dataset says (the caller has checked
    that the dataset's pixels are unsigned too): the coarsest
    resolution level whose shorter side is still at least ``min_side``, no coarser than its decomposition levels,
    and the sample precision; None where the shortcut does not apply."""
    header = _j2k_header(frame)
    if header is None:
        return None
    cols, rows, components, precision, signed, levels = header
    if (rows, cols) != (geometry.rows, geometry.cols) or components != 1 or signed or not 1 <= precision <= 16:
        return None
    level = 0
    while level < levels and min(-(-rows // (2 << level)), -(-cols // (2 << level))) >= min_side:
        level += 1
    return level, precision


def _htj2k_reduced(frame: bytes, geometry: Geometry, ds: Any, min_side: int) -> tuple[np.ndarray, int] | None:
    """OpenJPH (through imagecodecs) skipping the finest resolutions, as OpenJPEG's reduce does for JPEG 2000; its
    samples come back as stored, not scaled to 16 bits."""
    import imagecodecs

    found = _reduction_level(frame, geometry, ds, min_side)
    if found is None or found[0] == 0:
        return None
    level = found[0]
    values = imagecodecs.htj2k_decode(frame, skipres=level)
    expected = (-(-geometry.rows // (1 << level)), -(-geometry.cols // (1 << level)))
    if values.shape != expected:
        return None
    return values, 1 << level


def _pillow_j2k(frame: bytes, level: int) -> np.ndarray:
    """Pillow's ``reduce`` property rounds the reduced size to nearest, OpenJPEG rounds it up, and the
    mismatch fails as "broken data stream" whenever a side divided by 2**level has a remainder below one
    half (Pillow 13). So the reduced tile is set here, with OpenJPEG's size."""
    from PIL import Image, ImageFile

    image = Image.open(io.BytesIO(frame))
    if image.format != "JPEG2000" or len(image.tile) != 1:
        raise OSError("not a single-tile JPEG 2000 codestream for Pillow")
    tile = image.tile[0]
    args = tile.args
    if not isinstance(args, tuple) or len(args) != 5:
        raise OSError("unexpected Pillow JPEG 2000 tile arguments")
    width, height = (-(-n // (1 << level)) for n in image.size)
    image._size = (width, height)
    image.tile = [ImageFile._Tile(tile.codec_name, (0, 0, width, height), tile.offset,
                                  (args[0], level, *args[2:]))]
    image.load()
    values = np.asarray(image)
    if values.shape != (height, width):
        raise OSError(f"Pillow decoded {values.shape}, expected {(height, width)}")
    return values


def _j2k_header(frame: bytes) -> tuple[int, int, int, int, bool, int] | None:
    """(width, height, components, precision of the first, signed, decomposition levels) from the SIZ and
    COD markers of a raw codestream; None if it is not one, or the image has an offset."""
    if not frame.startswith(b"\xff\x4f\xff\x51") or len(frame) < 45:
        return None
    (siz_length, _, width, height, x_offset, y_offset) = struct.unpack_from(">HHIIII", frame, 4)
    (components,) = struct.unpack_from(">H", frame, 40)
    if x_offset or y_offset or components < 1:
        return None
    sample = frame[42]
    pos = 4 + siz_length
    while pos + 10 <= len(frame) and frame[pos] == 0xFF and frame[pos + 1] != 0x90:  # up to the first tile
        if frame[pos + 1] == 0x52:  # COD: Lcod, Scod, progression, layers (2), MCT, decomposition levels
            return width, height, components, (sample & 0x7F) + 1, bool(sample & 0x80), frame[pos + 9]
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        pos += 2 + length
    return None


def _jpeg_draft(frame: bytes, geometry: Geometry, min_side: int) -> tuple[np.ndarray, int] | None:
    """An 8-bit grey JPEG frame decoded with Pillow's DCT scaling (see ``raster.draft``)."""
    from PIL import Image

    image = Image.open(io.BytesIO(frame))
    if image.mode != "L" or image.size != (geometry.cols, geometry.rows):
        return None
    scale = draft(image, min_side)
    if scale == 1:
        return None
    image.load()
    return np.asarray(image), scale


def decode_with_pydicom(
    ds: Any, syntax: str, plugins: tuple[str, ...], path: bytes
) -> tuple[np.ndarray, str]:
    """Decode frame 0 with the first plugin that succeeds; a warning from any plugin is fatal."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    available = set(decoder.available_plugins)
    candidates = [p for p in plugins if p == "" or p in available]
    if not candidates:
        raise error(
            DECODE_FAILED, path, f"no decoder installed for {syntax_name(syntax)} (need one of {plugins})"
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
            # The reason comes from the raw text; the message gets the scrubbed one (pydicom quotes values).
            raise error(
                _codec_reason(str(exc)), path, f"decoder warning ({plugin or 'native'}): {scrub(exc)}"
            ) from None
        except BaseException as exc:  # including pyo3's PanicException from pylibjpeg-rle
            name = plugin or "native"
            failures.append((name, _last_line(exc).removeprefix(f"{name}: ")))  # pydicom's line may name it too
    reason = _codec_reason("; ".join(line for _, line in failures))
    detail = "; ".join(f"{plugin}: {scrub(line)}" for plugin, line in failures)
    raise error(reason, path, f"cannot decode {syntax_name(syntax)}: {detail}")


def _check_encapsulation(value: bytes, path: bytes) -> None:
    """Items (FFFE,E000) with lengths inside the data, the first being the offset table."""
    pos = 0
    items = 0
    while pos < len(value):
        if pos + 8 > len(value):
            raise error(TRUNCATED, path, f"encapsulated pixel data ends inside an item header at byte {pos}")
        group, element, length = struct.unpack_from("<HHI", value, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise error(
                CORRUPT, path, f"unexpected tag ({group:04X},{element:04X}) in encapsulated pixel data"
            )
        if pos + 8 + length > len(value):
            raise error(
                TRUNCATED,
                path,
                f"fragment at byte {pos} claims {length} bytes; only {len(value) - pos - 8} left",
            )
        pos += 8 + length
        items += 1
    if items < 2:
        raise error(TRUNCATED, path, "encapsulated pixel data has no fragments")


def _check_rle_header(frame: bytes, path: bytes) -> None:
    if len(frame) < 64:
        raise error(TRUNCATED, path, f"RLE frame has {len(frame)} bytes, less than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", frame)
    if not 1 <= count <= 15:
        raise error(CORRUPT, path, f"RLE header claims {count} segments")
    for offset in offsets[:count]:
        if offset >= len(frame):
            raise error(TRUNCATED, path, f"RLE segment offset {offset} beyond the {len(frame)}-byte frame")


def _check_jpeg_frame_header(frame: bytes, geometry: Geometry, path: bytes) -> int:
    """The frame header must describe the image the dataset describes; C codecs trust it blindly."""
    if not frame.startswith(b"\xff\xd8"):
        raise error(CORRUPT, path, f"first frame starts with {frame[:4].hex()}, not a JPEG SOI marker")
    rows, cols, precision = check_jpeg_header(frame, path)
    if (rows not in (0, geometry.rows)) or cols != geometry.cols or not 2 <= precision <= 16:
        raise error(
            DECODE_FAILED,
            path,
            f"JPEG frame header says {rows}x{cols} with {precision}-bit samples; "
            f"the dataset says {geometry.rows}x{geometry.cols}",
        )
    return precision


def _codec_reason(message: str) -> str:
    lowered = message.lower()
    early_end = ("truncat", "end of the data", "less than expected", "premature end", "insufficient data")
    return TRUNCATED if any(s in lowered for s in early_end) else DECODE_FAILED


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _decode_jpeg12_with_gdcm(frame: bytes, geometry: Geometry, ds: Any, path: bytes) -> np.ndarray:
    """12-bit JPEG extended (process 4): pydicom's GDCM plugin declines it, GDCM itself does not."""
    try:
        import gdcm
    except ImportError:
        raise error(DECODE_FAILED, path, "12-bit JPEG extended needs python-gdcm") from None
    if geometry.samples != 1:
        raise error(
            UNSUPPORTED_IMAGE, path, f"12-bit JPEG extended with {geometry.samples} samples per pixel"
        )
    signed = int_value(ds, "PixelRepresentation") == 1
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
        raise error(DECODE_FAILED, path, "GDCM could not decode the 12-bit JPEG frame")
    raw = buffer.encode("utf-8", "surrogateescape")  # GDCM hands back char* as str
    if len(raw) != expected:
        raise error(DECODE_FAILED, path, f"GDCM returned {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype="<i2" if signed else "<u2").reshape(geometry.rows, geometry.cols)
