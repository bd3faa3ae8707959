"""Fixtures for the X-ray reader tests: a real source image and a factory of DICOM files.

``dicom_factory(name, pixels, encoding=..., **attributes)`` writes ``pixels`` (uint8 or uint16)
as a CR chest DICOM in one of ``ENCODINGS`` and returns its path. Encoders: pydicom for the
native syntaxes, deflate and RLE; Pillow for JPEG baseline; GDCM for JPEG extended 12-bit and
JPEG lossless (process 14, SV1); pyjpegls (through pydicom) for JPEG-LS; pylibjpeg-openjpeg
(through pydicom) for JPEG 2000.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

# The encoders are the product's own (the demo cohort uses them); the tests reuse them.
from scoring.dicom_encoding import encode_and_save

SOURCE_PNG = "normal/dilara_train_n_056.png"
PATIENT_ID = "TEST-PATIENT-0042"
PATIENT_NAME = "Doe^Jane"

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
