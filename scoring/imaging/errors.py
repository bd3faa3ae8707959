"""Why a file could not be read: the reason codes, :class:`XRayReadError` and message hygiene.

Every failure is an :class:`XRayReadError` whose ``reason`` is one of these constants (all in
``REASONS``) and whose message names the file and what is wrong with it.

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

Messages are stored (``scoring_failures``) and shown (``cxr-db failures``), so they carry the file
name but never a text value from the file's header: numbers the reader computed (sizes, offsets, a
Rescale Slope as a float) and validated codes (a UID, a Photometric Interpretation) only. Text from
pydicom, Pillow or a codec goes through :func:`scrub` first, since pydicom quotes the offending
element value in its warnings and errors, and that value may be a patient's name.
"""

from __future__ import annotations

import re
import sys
from typing import Any

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


class XRayReadError(Exception):
    """A file that cannot be read as an X-ray; ``reason`` is one of the module's reason constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.message))


def display_path(path: bytes) -> str:
    """The file name for messages: printable and encodable even when it is not valid UTF-8."""
    return path.decode("utf-8", "backslashreplace")


def error(reason: str, path: bytes, detail: str) -> XRayReadError:
    return XRayReadError(reason, f"{display_path(path)}: {detail}")


def unexpected(path: bytes, exc: BaseException) -> XRayReadError:
    """Any other exception while decoding, as a failure."""
    if isinstance(exc, MemoryError):
        return error(TOO_LARGE, path, "out of memory while decoding")
    return error(DECODE_FAILED, path, f"unexpected {type(exc).__name__}: {scrub(exc)}")


# pydicom's value validation: "Invalid value for VR IS: 'Doe^Jane'." and 'Value "nan" is not valid for
# elements with a VR of DS'. The VR is worth keeping; the value is not.
_INVALID_VALUE = re.compile(r"(?:Invalid value for VR|is not valid for elements with a VR of) ([A-Z]{2})\b")
# A quoted value (repr of str or bytes), but not the apostrophe of "doesn't"; Python's own
# "'NoneType' object has no attribute 'encode'" names a type and an attribute, not data.
_QUOTED = re.compile(
    r"""(?<!\w)('\w+' object (?:has no attribute '\w+'|is not \w+))(?!\w)"""
    r"""|(?<!\w)b?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?!\w)"""
)
_LINK = re.compile(r"\s*(?:Please see )?<https?://[^>]*>[^.]*\.?")
_SCRUBBED_LENGTH = 300
_ELEMENT_NAMES: frozenset[str] | None = None  # loaded on first use, from pydicom's dictionary


def scrub(text: object) -> str:
    """Third-party text (an exception, a warning) fit for a failure message: one line, at most 300
    characters, every quoted value replaced by '...', pydicom's value-validation complaints reduced to
    "invalid value for VR XX"."""
    text = " ".join(str(text).split())
    invalid = _INVALID_VALUE.search(text)
    if invalid:
        return f"invalid value for VR {invalid.group(1)}"
    text = _QUOTED.sub(_scrubbed, _LINK.sub("", text))
    return text if len(text) <= _SCRUBBED_LENGTH else text[: _SCRUBBED_LENGTH - 3] + "..."


def _scrubbed(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1)
    quoted = match.group(0)
    return quoted if quoted[1:-1] in _element_names() else "'...'"


def _element_names() -> frozenset[str]:
    """pydicom's element names ("Bits Stored"), which its messages quote beside the tag."""
    global _ELEMENT_NAMES
    if _ELEMENT_NAMES is None:
        if "pydicom" not in sys.modules:  # then the text is not pydicom's; no need to import it
            return frozenset()
        from pydicom.datadict import DicomDictionary

        _ELEMENT_NAMES = frozenset(entry[2] for entry in DicomDictionary.values())
    return _ELEMENT_NAMES


def redact(exc: XRayReadError, path: bytes, values: list[str]) -> XRayReadError:
    """The same error with ``values`` (a file's identifying header values) cut out of the detail; the
    file name before it stays as it is. The last guard behind :func:`scrub`, for unquoted values."""
    prefix = f"{display_path(path)}: "
    if not exc.message.startswith(prefix):
        return exc
    detail = exc.message[len(prefix) :]
    for value in sorted(values, key=len, reverse=True):  # whole words only: an ID of 1234 leaves 12345 alone
        detail = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "...", detail)
    if prefix + detail == exc.message:
        return exc
    return XRayReadError(exc.reason, prefix + detail)
