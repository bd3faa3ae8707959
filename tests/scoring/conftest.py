"""Fixtures for the X-ray reader tests: a real source image and a factory of DICOM files.

``dicom_factory(name, pixels, encoding=..., **attributes)`` writes ``pixels`` (uint8 or uint16)
as a CR chest DICOM in one of ``ENCODINGS`` and returns its path. Encoders: pydicom for the
native syntaxes, deflate and RLE; Pillow for JPEG baseline; GDCM for JPEG extended 12-bit and
JPEG lossless (process 14, SV1); pyjpegls (through pydicom) for JPEG-LS; pylibjpeg-openjpeg
(through pydicom) for JPEG 2000.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

SOURCE_PNG = "normal/dilara_train_n_056.png"
PATIENT_ID = "TEST-PATIENT-0042"
PATIENT_NAME = "Doe^Jane"

# encoding name -> Transfer Syntax UID
ENCODINGS: dict[str, str] = {
    "explicit_le": uid.ExplicitVRLittleEndian,
    "implicit_le": uid.ImplicitVRLittleEndian,
    "explicit_be": uid.ExplicitVRBigEndian,
    "deflated": uid.DeflatedExplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "jpeg_baseline": uid.JPEGBaseline8Bit,
    "jpeg_extended_8": uid.JPEGExtended12Bit,
    "jpeg_extended_12": uid.JPEGExtended12Bit,
    "jpeg_lossless_p14": uid.JPEGLossless,
    "jpeg_lossless_sv1": uid.JPEGLosslessSV1,
    "jpeg_ls_lossless": uid.JPEGLSLossless,
    "jpeg_ls_near_lossless": uid.JPEGLSNearLossless,
    "j2k_lossless": uid.JPEG2000Lossless,
    "j2k_lossy": uid.JPEG2000,
}
JPEG_LS_NEAR = 2  # the largest error JPEG-LS near-lossless may make, in stored units
J2K_LOSSY_RATIO = 20


@pytest.fixture(scope="session")
def source_png(cxr_dev: Path) -> Path:
    """One real 8-bit grey chest X-ray from cxr-dev."""
    path = cxr_dev / SOURCE_PNG
    if not path.is_file():
        path = sorted(cxr_dev.glob("normal/*.png"))[0]
    return path


@pytest.fixture(scope="session")
def source_pixels(source_png: Path) -> np.ndarray:
    with Image.open(source_png) as image:
        assert image.mode == "L"
        return np.asarray(image).copy()


@pytest.fixture(scope="session")
def source_pixels_12bit(source_pixels: np.ndarray) -> np.ndarray:
    """The source spread over 12 bits (0..4080), for the syntaxes that carry more than 8 bits."""
    return source_pixels.astype(np.uint16) * 16


@pytest.fixture
def dicom_factory(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, pixels: np.ndarray, encoding: str = "explicit_le", **attributes: Any) -> Path:
        ds = chest_dataset(pixels, **attributes)
        path = tmp_path / name
        encode_and_save(ds, pixels, encoding, path, tmp_path)
        return path

    return write


@pytest.fixture
def chest_dataset_factory() -> Callable[..., Dataset]:
    return chest_dataset


def chest_dataset(pixels: np.ndarray, **attributes: Any) -> Dataset:
    """A minimal CR chest PA image with identifying data that must never reach ``meta``."""
    bits_stored = attributes.pop("BitsStored", 8 if pixels.dtype == np.uint8 else 12)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.PatientID = PATIENT_ID
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20240131"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "Test Factory"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def encode_and_save(ds: Dataset, pixels: np.ndarray, encoding: str, path: Path, scratch: Path) -> None:
    syntax = ENCODINGS[encoding]
    if encoding in ("explicit_le", "implicit_le", "deflated"):
        ds.file_meta.TransferSyntaxUID = syntax
    elif encoding == "explicit_be":
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    elif encoding == "jpeg_baseline":
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([pillow_jpeg(pixels)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    elif encoding in ("jpeg_extended_8", "jpeg_extended_12", "jpeg_lossless_p14", "jpeg_lossless_sv1"):
        ds = gdcm_transcode(ds, encoding, scratch)
    elif encoding == "jpeg_ls_near_lossless":
        ds.compress(syntax, jls_error=JPEG_LS_NEAR)
    elif encoding == "j2k_lossy":
        ds.compress(syntax, j2k_cr=[J2K_LOSSY_RATIO])
    else:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)


def pillow_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def gdcm_transcode(ds: Dataset, encoding: str, scratch: Path) -> Dataset:
    """Compress ``ds`` with GDCM and return the result as a pydicom dataset."""
    import gdcm

    target = {
        "jpeg_extended_8": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_extended_12": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_lossless_p14": gdcm.TransferSyntax.JPEGLosslessProcess14,
        "jpeg_lossless_sv1": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }[encoding]
    source, result = scratch / f"gdcm-in-{encoding}.dcm", scratch / f"gdcm-out-{encoding}.dcm"
    ds.save_as(source, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), "GDCM cannot read the native source"
    image = reader.GetImage()
    if encoding == "jpeg_extended_12":
        # GDCM picks the JPEG sample precision from Bits Allocated; with 16 it writes a
        # non-standard 16-bit lossy stream. Claiming 12 makes it write a standard 12-bit SOF1.
        pixel_format = image.GetPixelFormat()
        pixel_format.SetBitsAllocated(12)
        image.SetPixelFormat(pixel_format)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(target))
    change.SetInput(image)
    assert change.Change(), f"GDCM cannot encode {encoding}"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(result))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), f"GDCM cannot write {encoding}"
    out = pydicom.dcmread(result)
    out.BitsAllocated = ds.BitsAllocated  # undo the Bits Allocated claim above
    out.BitsStored, out.HighBit = ds.BitsStored, ds.HighBit
    return out
