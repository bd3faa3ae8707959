"""imagecodecs' decoders (libjpeg-turbo 3 for 12-bit and lossless JPEG, CharLS for JPEG-LS, OpenJPH for HTJ2K,
PackBits for RLE), which go before the pydicom plugins, against those plugins (GDCM, pyjpegls, pylibjpeg-openjpeg,
pylibjpeg-rle) on real films: the very same pixels, and whatever imagecodecs refuses is decoded, or refused with its
typed reason, as before."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest

from scoring import imaging
from scoring.imaging import pixel_data
from scoring.imaging.header import Geometry
from scoring.imaging.pixel_data import RLE

ENCODINGS = ("jpeg_lossless_p14", "jpeg_lossless_sv1", "jpeg_ls_lossless", "jpeg_ls_near_lossless",
             "htj2k_lossless", "htj2k_lossy", "rle")
DECODER = {"jpeg_lossless_p14": "jpeg8_decode", "jpeg_lossless_sv1": "jpeg8_decode",
           "jpeg_ls_lossless": "jpegls_decode", "jpeg_ls_near_lossless": "jpegls_decode",
           "htj2k_lossless": "htj2k_decode", "htj2k_lossy": "htj2k_decode", "rle": "dicomrle_decode"}

# Reader units ([0, 1]); measured at most 2.5e-4 (one stored unit of the 12-bit film) and 5.7e-5 (two of RG1's
# 15 bits).
LOSSY_TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def films(pydicom_data, dicom_dir, cxr_dev) -> dict[str, np.ndarray]:
    """Real pixels: RG1's 15-bit CR film (1955x1841), the SIIM film (8-bit, 1024x1024) and a cxr-dev PNG spread
    over 12 bits."""
    from PIL import Image

    with Image.open(sorted(cxr_dev.glob("covid/*.png"))[0]) as png:
        grey = np.asarray(png.convert("L"))
    return {"RG1": pydicom.dcmread(pydicom_data("RG1_UNCR.dcm")).pixel_array.astype(np.uint16),
            "SIIM": pydicom.dcmread(next(dicom_dir.glob("1.2.276.*.dcm"))).pixel_array,
            "cxr-dev-12": grey.astype(np.uint16) * 16}


def counting(monkeypatch, name: str) -> list[int]:
    """Count the calls of an imagecodecs decoder (the reader looks it up at each decode)."""
    calls: list[int] = []
    real: Callable = getattr(imagecodecs, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(imagecodecs, name, counted)
    return calls


def pixels_without_imagecodecs(path: Path, monkeypatch, **options) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(pixel_data, "_IMAGECODECS_DECODERS", {})
        return imaging.read_xray(path, timeout=None, **options).pixels


@pytest.mark.parametrize("film", ["RG1", "SIIM", "cxr-dev-12"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_imagecodecs_gives_the_pixels_of_the_plugins(films, dicom_factory, monkeypatch, film, encoding):
    pixels = films[film]
    bits = {"RG1": 15, "SIIM": 8, "cxr-dev-12": 12}[film]
    path = dicom_factory(f"{film}-{encoding}.dcm", pixels, encoding, BitsStored=bits)
    calls = counting(monkeypatch, DECODER[encoding])

    image = imaging.read_xray(path, timeout=None)

    assert calls, "imagecodecs was not asked"
    expected = pixels_without_imagecodecs(path, monkeypatch)
    if encoding == "htj2k_lossy":  # the irreversible wavelet: OpenJPH and OpenJPEG round a unit apart here and there
        np.testing.assert_allclose(image.pixels, expected, rtol=0, atol=LOSSY_TOLERANCE)
    else:
        np.testing.assert_array_equal(image.pixels, expected)
    assert image.meta["transfer_syntax"] == pydicom.dcmread(path).file_meta.TransferSyntaxUID


@pytest.mark.parametrize("film", ["RG1", "SIIM", "cxr-dev-12"])
def test_12bit_jpeg_extended_gives_the_pixels_of_gdcm(films, dicom_factory, monkeypatch, film):
    """Lossy 12-bit JPEG (process 4) written by GDCM: libjpeg-turbo 3 and GDCM's IJG decoder give the very same
    pixels (both the same integer inverse DCT)."""
    twelve_bits = {"RG1": lambda p: p >> 3, "SIIM": lambda p: p.astype(np.uint16) * 16, "cxr-dev-12": lambda p: p}
    pixels = twelve_bits[film](films[film])
    path = dicom_factory(f"{film}-jpeg12.dcm", pixels, "jpeg_extended_12", BitsStored=12)
    calls = counting(monkeypatch, "jpeg8_decode")

    image = imaging.read_xray(path, timeout=None)

    assert calls, "imagecodecs was not asked"
    np.testing.assert_array_equal(image.pixels, pixels_without_imagecodecs(path, monkeypatch))


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG-lossy.dcm"])
def test_real_12bit_jpeg_files_decode_quietly_to_the_pixels_of_gdcm(pydicom_data, monkeypatch, capfd, name):
    """pydicom-data's 12-bit JPEG extended films, not written by GDCM: the same pixels, and nothing on stderr (GDCM
    tries its 8-bit libjpeg first, which prints "Unsupported JPEG data precision 12" into a scoring run's output
    for every such film)."""
    path = pydicom_data(name)
    ds = pydicom.dcmread(path)
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")
    capfd.readouterr()

    decoded = pixel_data._decode_with_imagecodecs(ds, ds.file_meta.TransferSyntaxUID, geometry(ds), frame)

    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(decoded, pixel_data._decode_jpeg12_with_gdcm(frame, geometry(ds), ds, b"x"))
    np.testing.assert_array_equal(imaging.read_xray(path, timeout=None).pixels,
                                  pixels_without_imagecodecs(path, monkeypatch))


@pytest.mark.parametrize("film", ["RG1", "SIIM"])
@pytest.mark.parametrize("encoding", ["jpeg_lossless_sv1", "jpeg_ls_lossless", "htj2k_lossless", "rle"])
def test_lossless_decodes_give_the_stored_values(films, dicom_factory, encoding, film):
    """imagecodecs itself decodes the frame (no fallback to the plugins), to the stored values (of 16- and 8-bit
    films; RG1 has an odd number of pixels)."""
    pixels = films[film]
    path = dicom_factory(f"stored-{encoding}.dcm", pixels, encoding, BitsStored=15 if film == "RG1" else 8)
    ds = pydicom.dcmread(path)
    syntax = ds.file_meta.TransferSyntaxUID
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")
    np.testing.assert_array_equal(pixel_data._decode_with_imagecodecs(ds, syntax, geometry(ds), frame), pixels)
    decoded, photometric, scale = pixel_data.decode_compressed(ds, syntax, geometry(ds), frame, b"x")
    np.testing.assert_array_equal(decoded, pixels)
    assert (decoded.dtype, photometric, scale) == (pixels.dtype, ds.PhotometricInterpretation, 1)


def test_a_real_rle_file_gives_the_pixels_of_the_plugins(pydicom_data, monkeypatch):
    """pydicom-data's emri_small_RLE (an MR, 12 of 16 bits, 10 frames; the reader takes the first), not written by
    our encoder: imagecodecs decodes it, to pylibjpeg-rle's pixels."""
    path = pydicom_data("emri_small_RLE.dcm")
    ds = pydicom.dcmread(path)
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")
    decoded = pixel_data._decode_with_imagecodecs(ds, RLE, geometry(ds), frame)

    np.testing.assert_array_equal(decoded, ds.pixel_array[0])
    np.testing.assert_array_equal(imaging.read_xray(path, timeout=None).pixels,
                                  pixels_without_imagecodecs(path, monkeypatch))


# The lossless encodings: their decoders give the pixel cells, with whatever a writer left above Bits Stored
LOSSLESS = ("rle", "jpeg_lossless_p14", "jpeg_lossless_sv1", "jpeg_ls_lossless", "j2k_lossless", "htj2k_lossless")


@pytest.mark.parametrize("encoding", LOSSLESS)
def test_lossless_syntaxes_read_as_the_native_file_with_bits_above_bits_stored(films, dicom_factory, monkeypatch,
                                                                              encoding):
    """RG1's 15-bit film with bit 15 set in every third pixel (an old overlay, noise), encoded at 16 bits and then
    labelled Bits Stored 15: the high bit is no part of the pixel (PS3.5 8.1.1), and every lossless syntax reads as
    the native file does (pydicom clears it there, and after RLE and JPEG, but not after JPEG-LS and JPEG 2000),
    through imagecodecs or the plugins."""
    pixels = films["RG1"]  # 15 bits stored
    dirty = pixels | (np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 3 == 0).astype(np.uint16) << 15
    native = dicom_factory("dirty-native.dcm", dirty, BitsStored=15)
    path = dicom_factory(f"dirty-{encoding}.dcm", dirty, encoding, BitsStored=16)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 15, 14
    ds.save_as(path, enforce_file_format=True)
    syntax = ds.file_meta.TransferSyntaxUID
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")

    decoded, _, _ = pixel_data.decode_compressed(ds, syntax, geometry(ds), frame, b"x")
    np.testing.assert_array_equal(decoded, pixels)
    expected = imaging.read_xray(native, timeout=None).pixels
    np.testing.assert_array_equal(imaging.read_xray(path, timeout=None).pixels, expected)
    np.testing.assert_array_equal(pixels_without_imagecodecs(path, monkeypatch), expected)


# (dtype, Bits Stored): pydicom's reading of native pixel data whose every bit is random is the reference
UNUSED_BITS = [(np.uint16, 12), (np.uint16, 15), (np.uint16, 16), (np.int16, 12), (np.int16, 14), (np.uint8, 6),
               (np.int8, 5)]


@pytest.mark.parametrize(("dtype", "bits_stored"), UNUSED_BITS, ids=[f"{np.dtype(d).name}-{b}" for d, b in UNUSED_BITS])
def test_clear_unused_bits_reads_as_pydicom(chest_dataset_factory, tmp_path, dtype, bits_stored):
    """Unsigned: the high bits cleared; signed: copies of Bits Stored's sign bit (12-bit 0x800 is -2048)."""
    raw = np.random.default_rng(bits_stored).integers(0, 256, 64 * 64 * np.dtype(dtype).itemsize, dtype=np.uint8)
    values = raw.view(dtype).reshape(64, 64)
    ds = chest_dataset_factory(values.view(np.uint16 if values.itemsize == 2 else np.uint8), BitsStored=bits_stored)
    ds.PixelRepresentation = int(np.dtype(dtype).kind == "i")
    ds.save_as(tmp_path / "bits.dcm", enforce_file_format=True)
    expected = pydicom.dcmread(tmp_path / "bits.dcm").pixel_array

    cleared = pixel_data.clear_unused_bits(values.copy(), bits_stored)
    assert cleared.dtype == expected.dtype
    np.testing.assert_array_equal(cleared, expected)


def test_lossy_outputs_keep_their_high_bits():
    """A lossy value may overshoot its precision; clearing its high bits would wrap white to black."""
    lossy = {pixel_data.JPEG_BASELINE, pixel_data.JPEG_EXTENDED, "1.2.840.10008.1.2.4.81",
             "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
    assert lossy <= set(pixel_data.PLUGINS) and not lossy & pixel_data.LOSSLESS_SYNTAXES


def test_an_rle_frame_short_of_pixels_keeps_its_reason(films, dicom_factory, monkeypatch):
    """Segments that decode to fewer bytes than Rows x Columns: imagecodecs does not complain, the reader does."""
    pixels = films["cxr-dev-12"]
    path = dicom_factory("short.dcm", pixels[:-2], "rle", BitsStored=12)
    ds = pydicom.dcmread(path)
    ds.Rows = pixels.shape[0]
    ds.save_as(path, enforce_file_format=True)
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")

    assert pixel_data._decode_with_imagecodecs(ds, RLE, geometry(ds), frame) is None
    with pytest.raises(imaging.XRayReadError) as refused:
        imaging.read_xray(path, timeout=None)
    with monkeypatch.context() as patch, pytest.raises(imaging.XRayReadError) as refused_before:
        patch.setattr(pixel_data, "_IMAGECODECS_DECODERS", {})
        imaging.read_xray(path, timeout=None)
    assert refused.value.reason == refused_before.value.reason == imaging.DECODE_FAILED


def geometry(ds) -> Geometry:
    return Geometry(ds.Rows, ds.Columns, 1, 1, ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation)


def test_a_frame_imagecodecs_refuses_goes_to_the_plugins(films, dicom_factory, monkeypatch):
    path = dicom_factory("refused.dcm", films["cxr-dev-12"], "jpeg_lossless_sv1", BitsStored=12)
    expected = pixels_without_imagecodecs(path, monkeypatch)

    def refuse(data, *args, **kwargs):
        raise imagecodecs.Jpeg8Error("refused on purpose")

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", refuse)
    np.testing.assert_array_equal(imaging.read_xray(path, timeout=None).pixels, expected)


def test_signed_pixels_are_left_to_the_plugins(films, dicom_factory):
    path = dicom_factory("signed.dcm", films["cxr-dev-12"], "jpeg_ls_lossless", BitsStored=12)
    ds = pydicom.dcmread(path)
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")
    ds.PixelRepresentation = 1
    assert pixel_data._decode_with_imagecodecs(ds, ds.file_meta.TransferSyntaxUID, geometry(ds), frame) is None


@pytest.mark.parametrize("encoding", ["jpeg_lossless_sv1", "jpeg_ls_lossless", "htj2k_lossless"])
def test_a_cut_frame_keeps_its_reason(films, dicom_factory, encoding, tmp_path):
    """A frame cut short (no end marker) is refused before any codec runs, whichever decodes it."""
    from pydicom.encaps import encapsulate

    path = dicom_factory(f"cut-{encoding}.dcm", films["cxr-dev-12"], encoding, BitsStored=12)
    ds = pydicom.dcmread(path)
    frame = pixel_data.first_frame(ds, geometry(ds), b"x")
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    cut = tmp_path / f"cut-{encoding}-half.dcm"
    ds.save_as(cut, enforce_file_format=True)
    with pytest.raises(imaging.XRayReadError) as refused:
        imaging.read_xray(cut, timeout=None)
    assert refused.value.reason == imaging.TRUNCATED
