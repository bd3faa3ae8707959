"""DICOM encoders, one for each transfer syntax named in :data:`ENCODINGS`.

Product code (the demo cohort stores its DICOM phantoms with them) and test support (the reader's
tests write their DICOMs in the same ways), so it imports neither torch, ``model_training`` nor ``db``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# encoding name -> Transfer Syntax UID; the names that tests/scoring/conftest.py uses too
ENCODINGS: dict[str, str] = {
    "explicit_le": "1.2.840.10008.1.2.1",
    "implicit_le": "1.2.840.10008.1.2",
    "explicit_be": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_extended_8": "1.2.840.10008.1.2.4.51",
    "jpeg_extended_12": "1.2.840.10008.1.2.4.51",
    "jpeg_lossless_p14": "1.2.840.10008.1.2.4.57",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpeg_ls_lossless": "1.2.840.10008.1.2.4.80",
    "jpeg_ls_near_lossless": "1.2.840.10008.1.2.4.81",
    "j2k_lossless": "1.2.840.10008.1.2.4.90",  # 5 decomposition levels (OpenJPEG's default)
    "j2k_lossless_1level": "1.2.840.10008.1.2.4.90",  # 1 level, like pydicom-data's RG1_J2KR
    "j2k_lossy": "1.2.840.10008.1.2.4.91",
    "htj2k_lossless": "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000, reversible (OpenJPH)
    "htj2k_lossy": "1.2.840.10008.1.2.4.203",  # irreversible, quantisation step HTJ2K_LOSSY_STEP
}
JPEG_LS_NEAR = 2  # the largest error JPEG-LS near-lossless may make, in stored units
J2K_LOSSY_RATIO = 20
HTJ2K_LOSSY_STEP = 0.001  # OpenJPH's base quantisation step: about 5:1 on RG1's 15-bit film
_NATIVE_ENCODINGS = ("explicit_le", "implicit_le", "deflated")
_GDCM_ENCODINGS = ("jpeg_extended_8", "jpeg_extended_12", "jpeg_lossless_p14", "jpeg_lossless_sv1")


def pillow_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """An 8-bit grey JPEG baseline codestream made by Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def pillow_j2k(pixels: np.ndarray, levels: int) -> bytes:
    """A lossless raw JPEG 2000 codestream with ``levels`` decomposition levels made by Pillow (OpenJPEG).
    16-bit input is written with a precision of 16, whatever its Bits Stored."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG2000", no_jp2=True, num_resolutions=levels + 1, irreversible=False)
    return buffer.getvalue()


def openjph_htj2k(pixels: np.ndarray, lossless: bool = True) -> bytes:
    """A raw HTJ2K codestream made by OpenJPH (through imagecodecs), 5 decomposition levels; 16-bit input is
    written with a precision of 16, whatever its Bits Stored."""
    import imagecodecs

    if lossless:
        return imagecodecs.htj2k_encode(pixels, reversible=True)
    return imagecodecs.htj2k_encode(pixels, reversible=False, level=HTJ2K_LOSSY_STEP)


def htj2k_copy(source: Path, path: Path) -> Path:
    """A DICOM file as new archives store it: HTJ2K lossless (OpenJPH), every other element kept."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(source)
    ds.PixelData = encapsulate([openjph_htj2k(ds.pixel_array)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ENCODINGS["htj2k_lossless"]
    ds.save_as(path, enforce_file_format=True)
    return path


def gdcm_transcode(ds: Any, encoding: str, scratch: Path) -> Any:
    """Compress ``ds`` with GDCM (JPEG extended 8/12-bit, JPEG lossless process 14 or SV1) and
    return the result as a pydicom dataset; ``scratch`` is a folder for the two temporary files."""
    import gdcm
    import pydicom

    targets = {
        "jpeg_extended_8": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_extended_12": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_lossless_p14": gdcm.TransferSyntax.JPEGLosslessProcess14,
        "jpeg_lossless_sv1": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }
    if encoding not in targets:
        raise ValueError(f"GDCM does not encode {encoding!r} here; expected one of {', '.join(targets)}")
    source, result = Path(scratch) / f"gdcm-in-{encoding}.dcm", Path(scratch) / f"gdcm-out-{encoding}.dcm"
    ds.save_as(source, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("GDCM cannot read the native source")
    image = reader.GetImage()
    if encoding == "jpeg_extended_12":
        # GDCM picks the JPEG sample precision from Bits Allocated; with 16 it writes a
        # non-standard 16-bit lossy stream. Claiming 12 makes it write a standard 12-bit SOF1.
        pixel_format = image.GetPixelFormat()
        pixel_format.SetBitsAllocated(12)
        image.SetPixelFormat(pixel_format)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(targets[encoding]))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {encoding}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(result))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {encoding}")
    out = pydicom.dcmread(result)
    out.BitsAllocated = ds.BitsAllocated  # undo the Bits Allocated claim above
    out.BitsStored, out.HighBit = ds.BitsStored, ds.HighBit
    source.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    return out


def encode_and_save(ds: Any, pixels: np.ndarray, encoding: str, path: Path, scratch: Path | None = None) -> None:
    """Store ``ds`` (native pixel data equal to ``pixels``) at ``path`` in ``encoding``, a key of
    :data:`ENCODINGS`. Encoders: pydicom for the native syntaxes, deflate and RLE; Pillow for
    JPEG baseline (8-bit) and 1-level JPEG 2000; GDCM for JPEG extended and JPEG lossless; pyjpegls (through pydicom)
    for JPEG-LS; pylibjpeg-openjpeg (through pydicom) for JPEG 2000; OpenJPH (through imagecodecs) for HTJ2K.
    Lossless encodings keep the SOP Instance UID, the lossy JPEG-LS, JPEG 2000 and HTJ2K ones get a new one.
    ``scratch`` is a folder for GDCM's temporary files (a temporary folder when None)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    syntax = ENCODINGS[encoding]
    if encoding in _NATIVE_ENCODINGS:
        ds.file_meta.TransferSyntaxUID = syntax
    elif encoding == "explicit_be":
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    elif encoding == "jpeg_baseline":
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG baseline needs 8-bit pixels")
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([pillow_jpeg(pixels)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    elif encoding == "j2k_lossless_1level":
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([pillow_j2k(pixels, levels=1)])
        ds["PixelData"].VR = "OB"
    elif encoding in ("htj2k_lossless", "htj2k_lossy"):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([openjph_htj2k(pixels, lossless=encoding == "htj2k_lossless")])
        ds["PixelData"].VR = "OB"
        if encoding == "htj2k_lossy":
            ds.LossyImageCompression = "01"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    elif encoding in _GDCM_ENCODINGS:
        if scratch is None:
            with tempfile.TemporaryDirectory(prefix="cxr-gdcm-") as tmp:
                ds = gdcm_transcode(ds, encoding, Path(tmp))
        else:
            ds = gdcm_transcode(ds, encoding, scratch)
    elif encoding == "jpeg_ls_near_lossless":  # lossy: a new SOP Instance UID, as DICOM asks
        ds.compress(syntax, jls_error=JPEG_LS_NEAR)
    elif encoding == "j2k_lossy":
        ds.compress(syntax, j2k_cr=[J2K_LOSSY_RATIO])
    else:  # lossless: the same image, so the same SOP Instance UID (and reproducible files)
        ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
