"""The DICOM encoders on their own (decoded by pydicom, not by the reader): every encoding writes its
transfer syntax and gives back the pixels it was given, exactly where lossless, closely where lossy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from scoring.dicom_encoding import ENCODINGS, JPEG_LS_NEAR, encode_and_save, gdcm_transcode

LOSSLESS = (
    "explicit_le",
    "implicit_le",
    "explicit_be",
    "deflated",
    "rle",
    "jpeg_lossless_p14",
    "jpeg_lossless_sv1",
    "jpeg_ls_lossless",
    "j2k_lossless",
    "j2k_lossless_1level",
)


def _pixels(bits: int) -> np.ndarray:
    """A smooth pattern with some noise, over most of the range of ``bits``."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:64, 0:80]
    image = 0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 9.0) + 0.03 * rng.standard_normal((64, 80))
    return np.rint(np.clip(image, 0.0, 1.0) * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _encode(tmp_path: Path, chest_dataset_factory, pixels: np.ndarray, encoding: str) -> tuple[str, pydicom.Dataset]:
    ds = chest_dataset_factory(pixels)
    original_uid = str(ds.SOPInstanceUID)
    path = tmp_path / f"{encoding}.dcm"
    encode_and_save(ds, pixels, encoding, path, tmp_path)
    written = pydicom.dcmread(path)
    assert written.file_meta.TransferSyntaxUID == ENCODINGS[encoding]
    assert written.SOPInstanceUID == written.file_meta.MediaStorageSOPInstanceUID
    return original_uid, written


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("encoding", LOSSLESS)
def test_lossless_encodings_give_back_the_same_pixels_and_uid(tmp_path, chest_dataset_factory, encoding, bits):
    pixels = _pixels(bits)
    original_uid, written = _encode(tmp_path, chest_dataset_factory, pixels, encoding)
    assert (written.BitsAllocated, written.BitsStored) == ((8, 8) if bits == 8 else (16, 12))
    np.testing.assert_array_equal(written.pixel_array, pixels)
    assert written.SOPInstanceUID == original_uid  # the same image, so the same instance
    # GDCM's temporary files are gone; only the result is left
    assert [p.name for p in tmp_path.iterdir()] == [f"{encoding}.dcm"]


@pytest.mark.parametrize(
    ("encoding", "bits", "mean_error"),  # mean error as a fraction of full scale: 2-5 times what was measured
    [
        ("jpeg_baseline", 8, 0.015),
        ("jpeg_extended_8", 8, 0.002),
        ("jpeg_ls_near_lossless", 8, 0.01),
        ("jpeg_ls_near_lossless", 12, 0.001),
        ("j2k_lossy", 8, 0.05),
        ("j2k_lossy", 12, 0.05),
    ],
)
def test_lossy_encodings_stay_close(tmp_path, chest_dataset_factory, encoding, bits, mean_error):
    pixels = _pixels(bits)
    original_uid, written = _encode(tmp_path, chest_dataset_factory, pixels, encoding)
    error = np.abs(written.pixel_array.astype(np.int64) - pixels.astype(np.int64))
    assert error.mean() / ((1 << bits) - 1) < mean_error
    if encoding == "jpeg_ls_near_lossless":
        assert error.max() <= JPEG_LS_NEAR
    if encoding in ("jpeg_ls_near_lossless", "j2k_lossy"):
        assert written.SOPInstanceUID != original_uid  # lossy: a new instance, as DICOM asks
    if encoding == "jpeg_baseline":
        assert written.LossyImageCompression == "01"


def test_jpeg_extended_12_is_a_standard_12_bit_sof1_stream(tmp_path, chest_dataset_factory):
    # pydicom cannot decode it (the reader's tests do); check the codestream GDCM wrote instead
    _uid, written = _encode(tmp_path, chest_dataset_factory, _pixels(12), "jpeg_extended_12")
    assert (written.BitsAllocated, written.BitsStored, written.HighBit) == (16, 12, 11)
    frame = next(generate_frames(written.PixelData, number_of_frames=1))
    sof1 = frame.index(b"\xff\xc1")
    assert frame[sof1 + 4] == 12  # sample precision


def test_gdcm_encodings_work_without_a_scratch_folder(tmp_path, chest_dataset_factory):
    pixels = _pixels(12)
    path = tmp_path / "sv1.dcm"
    encode_and_save(chest_dataset_factory(pixels), pixels, "jpeg_lossless_sv1", path)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["sv1.dcm"]


def test_refuses_unknown_encodings_and_wide_pixels_for_jpeg_baseline(tmp_path, chest_dataset_factory):
    pixels = _pixels(12)
    with pytest.raises(ValueError, match="unknown encoding"):
        encode_and_save(chest_dataset_factory(pixels), pixels, "jpeg_xl", tmp_path / "a.dcm", tmp_path)
    with pytest.raises(ValueError, match="8-bit"):
        encode_and_save(chest_dataset_factory(pixels), pixels, "jpeg_baseline", tmp_path / "b.dcm", tmp_path)
    with pytest.raises(ValueError, match="GDCM does not encode"):
        gdcm_transcode(chest_dataset_factory(pixels), "rle", tmp_path)
    assert not any(tmp_path.iterdir())


def test_imports_nothing_but_numpy_and_the_standard_library():
    # product code and test support alike: no torch, no training code, no database
    code = (
        "import sys\n"
        "import numpy\n"
        "loaded = set(sys.modules)\n"
        "import scoring.dicom_encoding\n"
        "new = {name.split('.')[0] for name in set(sys.modules) - loaded}\n"
        "extra = sorted(new - set(sys.stdlib_module_names) - {'scoring'})\n"
        "print(extra)\n"
        "raise SystemExit(1 if extra else 0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
