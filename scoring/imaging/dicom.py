"""DICOM files: the file meta group, the dataset, its geometry and metadata, and the read itself.

pydicom parses; the checks around it are ours. The transfer syntax is read from the file meta group
alone and refused unless it is in ``SUPPORTED_TRANSFER_SYNTAXES``; a deflated dataset is inflated
once up front, bounded by ``MAX_FILE_BYTES``, before pydicom inflates it in one go; a file cut short
anywhere is ``truncated`` (pydicom silently accepts most cuts). One ending is not a cut: 1 to 7 bytes
after the last complete element, too few to be the next element's header, in a dataset that has its
Pixel Data (a writer's stray padding, or the start of an element after the pixels): pydicom ignores
them and so does the reader. Without Pixel Data such an ending is ``truncated``, as it may be a cut
through the Pixel Data element's header.

Multi-frame policy: only the first frame is decoded; ``meta["frames"]`` holds Number of Frames and
``in_scope`` returns ``(False, "multi_frame:N")`` for N > 1. ``MAX_PIXELS`` applies to that one
frame (Rows x Columns x Samples per Pixel); the file-size limit bounds the rest.

What pydicom warns about a header value becomes a value-free note (:func:`header.header_problems`)
appended to a failure message; the identifying values of the file are cut out of that message.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from typing import Any

from .display import to_display
from .downsample import reduce_to
from .errors import (
    CORRUPT,
    DECODE_FAILED,
    NO_PIXEL_DATA,
    TOO_LARGE,
    TRUNCATED,
    UNSUPPORTED_IMAGE,
    UNSUPPORTED_TRANSFER_SYNTAX,
    XRayReadError,
    error,
    redact,
    scrub,
    unexpected,
)
from .files import MAX_FILE_BYTES, check_pixel_count
from .header import (
    COLOUR,
    MONOCHROME,
    Geometry,
    header_problems,
    identifying_values,
    int_value,
    shown_number,
    shown_photometric,
    shown_uid,
    syntax_name,
    text,
    upper,
)
from .pixel_data import (
    DEFLATED,
    NATIVE_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    check_frame_end,
    decode_compressed,
    decode_with_pydicom,
    first_frame,
)
from .results import Decoded, base_meta

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TEXT_KEYWORDS = {
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
    "study_date": "StudyDate",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sop_class": "SOPClassUID",
    "presentation_intent": "PresentationIntentType",
    "manufacturer": "Manufacturer",
    "burned_in_annotation": "BurnedInAnnotation",
}
_NOTES_SHOWN = 3


_ELEMENT_HEADER = 8  # bytes pydicom reads for the next element's tag, VR and length (or tag and length)


class _CutShortReader(io.BytesIO):
    """Counts reads that came back short: pydicom silently accepts a file cut almost anywhere.

    A complete file gives exactly one empty read (the next element header at the end); a cut file
    gives a partial read, or several empty ones. A complete dataset followed by fewer bytes than an
    element header gives one partial read of an element header and nothing else (pydicom stops
    there): :attr:`ends_with_a_stub`.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.partial_reads = 0
        self.empty_reads = 0
        self.first_short_read: tuple[int, int] | None = None  # (bytes asked for, bytes there)

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > 0 and len(chunk) < size:
            if chunk:
                self.partial_reads += 1
            else:
                self.empty_reads += 1
            if self.first_short_read is None:
                self.first_short_read = (size, len(chunk))
        return chunk

    @property
    def cut_short(self) -> bool:
        return self.partial_reads > 0 or self.empty_reads > 1

    @property
    def ends_with_a_stub(self) -> bool:
        """The only short read was of the next element's header, with 1 to 7 of its 8 bytes there."""
        return (self.partial_reads, self.empty_reads) == (1, 0) and self.first_short_read is not None \
            and self.first_short_read[0] == _ELEMENT_HEADER


def read_dicom(data: bytes, path: bytes, min_side: int | None = None) -> Decoded:
    syntax, meta_end = _transfer_syntax(data, path)
    if syntax == DEFLATED:
        _check_inflated_size(data, meta_end, path)
    ds = _parse_dataset(data, path)
    problems = header_problems(ds)
    try:
        return _decode_dataset(ds, syntax, path, min_side)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # BaseException: Rust codecs panic with pyo3's PanicException
        failure = exc if isinstance(exc, XRayReadError) else unexpected(path, exc)
        raise redact(_with_notes(failure, problems), path, identifying_values(ds)) from None


def _decode_dataset(ds: Any, syntax: str, path: bytes, min_side: int | None) -> Decoded:
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        sop_class = text(ds, "SOPClassUID")
        sop_class = shown_uid(sop_class) if sop_class else "unknown"
        raise error(NO_PIXEL_DATA, path, f"no Pixel Data element (SOP class {sop_class})")
    geometry = _geometry(ds, path)
    check_pixel_count(path, geometry.rows, geometry.cols, geometry.samples)
    if keyword == "PixelData" and syntax not in NATIVE_SYNTAXES:
        frame = first_frame(ds, geometry, path)
        check_frame_end(frame, syntax, path)
        raw, photometric, scale = decode_compressed(ds, syntax, geometry, frame, path, min_side)
    else:
        _check_native_length(ds[keyword].value, geometry, path)
        raw, photometric = decode_with_pydicom(ds, syntax, ("",), path)
        scale = 1
    if photometric in MONOCHROME and raw.ndim != 2:
        raise error(UNSUPPORTED_IMAGE, path, f"{photometric} with {geometry.samples} samples per pixel")
    if min_side is not None and photometric in MONOCHROME:
        raw, factor = reduce_to(raw, min_side)
        scale *= factor
    pixels, voi = to_display(raw, ds, photometric, geometry, path)
    meta = _dicom_meta(ds, syntax, geometry, voi)
    meta["decode_scale"] = 1.0 / scale
    return Decoded(pixels, meta, text(ds, "PatientID"))


def _with_notes(exc: XRayReadError, problems: list[str]) -> XRayReadError:
    if not problems:
        return exc
    shown = "; ".join(problems[:_NOTES_SHOWN])
    more = f" (and {len(problems) - _NOTES_SHOWN} more)" if len(problems) > _NOTES_SHOWN else ""
    return XRayReadError(exc.reason, f"{exc.message} [header problems: {shown}{more}]")


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
        raise error(reason, path, f"unreadable file meta information: {scrub(exc)}") from None
    syntax = str(file_meta.get("TransferSyntaxUID", "") or "").strip("\x00 ")
    if reader.partial_reads or (not syntax and reader.tell() >= len(data)):
        raise error(TRUNCATED, path, f"file ends at byte {len(data)} inside the file meta information")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise error(UNSUPPORTED_TRANSFER_SYNTAX, path, f"transfer syntax {syntax_name(syntax)}")
    return syntax, reader.tell()


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
                raise error(
                    TOO_LARGE, path, f"deflated dataset inflates to more than {MAX_FILE_BYTES} bytes"
                )
    except zlib.error as exc:
        raise error(CORRUPT, path, f"deflated dataset does not inflate: {exc}") from None
    if not inflater.eof:
        raise error(TRUNCATED, path, f"deflated dataset ends early ({len(data)} bytes in file)")


def _parse_dataset(data: bytes, path: bytes) -> Any:
    import pydicom

    reader = _CutShortReader(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(reader)
        except Exception as exc:
            reason = TRUNCATED if reader.cut_short else CORRUPT
            raise error(reason, path, f"cannot parse the dataset: {scrub(exc)}") from None
    ended_early = [w for w in caught if "end of file" in str(w.message).lower()]
    trailing_stub = reader.ends_with_a_stub and any(keyword in ds for keyword in _PIXEL_KEYWORDS)
    if ended_early or (reader.cut_short and not trailing_stub):
        detail = scrub(ended_early[0].message) if ended_early else "inside a data element"
        raise error(TRUNCATED, path, f"file ends early, at byte {len(data)} ({detail})")
    return ds


def _geometry(ds: Any, path: bytes) -> Geometry:
    values = {}
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = int_value(ds, keyword)
        if value is None or value <= 0:
            raise error(CORRUPT, path, f"{keyword} is {shown_number(ds, keyword)}")
        values[keyword] = value
    samples = int_value(ds, "SamplesPerPixel") or 1
    frames = int_value(ds, "NumberOfFrames") or 1
    bits_stored = int_value(ds, "BitsStored") or values["BitsAllocated"]
    photometric = upper(ds.get("PhotometricInterpretation")) or ("MONOCHROME2" if samples == 1 else "RGB")
    if photometric not in MONOCHROME + COLOUR:
        raise error(UNSUPPORTED_IMAGE, path, f"Photometric Interpretation {shown_photometric(photometric)}")
    return Geometry(
        values["Rows"], values["Columns"], frames, samples, values["BitsAllocated"], bits_stored, photometric
    )


def _check_native_length(value: bytes, geometry: Geometry, path: bytes) -> None:
    bits = geometry.rows * geometry.cols * geometry.samples * geometry.bits_allocated * geometry.frames
    expected = math.ceil(bits / 8)
    if geometry.photometric == "YBR_FULL_422":
        expected = expected * 2 // 3
    actual = len(value)
    shape = f"{geometry.rows}x{geometry.cols}x{geometry.samples} samples x {geometry.frames} frames"
    if actual < expected:
        raise error(TRUNCATED, path, f"pixel data has {actual} bytes; {shape} needs {expected}")
    if actual > expected + (expected % 2):
        raise error(DECODE_FAILED, path, f"pixel data has {actual} bytes; {shape} needs {expected}")


def _dicom_meta(ds: Any, syntax: str, geometry: Geometry, voi: str) -> dict[str, Any]:
    meta = base_meta("dicom", geometry.rows, geometry.cols)
    meta.update({key: text(ds, keyword) for key, keyword in _TEXT_KEYWORDS.items()})
    meta.update(
        photometric=geometry.photometric,
        bits_stored=geometry.bits_stored,
        pixel_spacing=_pixel_spacing(ds),
        transfer_syntax=syntax,
        frames=geometry.frames,
        voi=voi,
        view_code=_view_code(ds),
    )
    return meta


def _view_code(ds: Any) -> str | None:
    """The first item of View Code Sequence as "SCHEME:VALUE" (``SCT:399173006``), when it is a plain code; None
    otherwise, so that no free text a writer put there travels with the metadata."""
    try:
        item = ds.ViewCodeSequence[0]
        scheme, value = str(item.CodingSchemeDesignator).strip(), str(item.CodeValue).strip()
    except Exception:
        return None
    plain = all(part and len(part) <= 16 and part.replace("-", "").replace(".", "").isalnum()
                for part in (scheme, value))
    return f"{scheme.upper()}:{value.upper()}" if plain else None


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

