"""scoring.imaging on bad inputs: a table of broken, truncated, oversized and non-image files (read in
process and isolated), and the other failures that must become an XRayReadError with a reason."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames

from scoring import imaging
from scoring.imaging import XRayReadError, read_xray
from tests.scoring.imaging_checks import jpeg_bytes, with_pixel_bytes

# --------------------------------------------------------------------------------------------
# Bad inputs


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png() -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
    return imaging.PNG_SIGNATURE + header + data + png_chunk(b"IEND", b"")


def bad_idat_crc(png: bytes) -> bytes:
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", png, start)
    crc_at = start + 8 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


def replace_frame(path: Path, cut: Callable[[bytes], bytes]) -> Path:
    """Shorten the first frame's codestream but keep the encapsulation consistent."""
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([cut(frame)])
    ds.save_as(path)
    return path


def truncate(path: Path, keep: Callable[[int], int]) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return path


def cut_into_pixel_data_header(path: Path, keep: int) -> Path:
    """Cut ``keep`` bytes into the (7FE0,0010) Pixel Data element's header: fewer bytes than a header left."""
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00") + keep])
    return path


def with_transfer_syntax(path: Path, syntax: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def without_pixel_data(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def with_size(path: Path, rows: int, cols: int) -> Path:
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path)
    return path


class Sources:
    """What the bad-input builders start from."""

    def __init__(self, tmp_path: Path, png: bytes, pixels: np.ndarray, dicom_factory) -> None:
        self.tmp_path, self.png, self.pixels, self.dicom = tmp_path, png, pixels, dicom_factory

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp_path / name
        path.write_bytes(data)
        return path

    def dcm(self, encoding: str) -> Path:
        return self.dicom(f"src-{encoding}.dcm", self.pixels, encoding)


def fifo(s: Sources) -> Path:
    path = s.tmp_path / "x.png"
    os.mkfifo(path)
    return path


def dangling(s: Sources) -> Path:
    path = s.tmp_path / "link.png"
    path.symlink_to(s.tmp_path / "gone.png")
    return path


def directory(s: Sources) -> Path:
    path = s.tmp_path / "x.png"
    path.mkdir()
    return path


RANDOM = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()

# (id, builder, reason, text the message must contain besides the file name)
BAD_INPUTS = [
    ("empty", lambda s: s.file("e.png", b""), "empty", "0 bytes"),
    ("127_zero_bytes", lambda s: s.file("z.dcm", b"\0" * 127), "not_an_image", "127 bytes"),
    ("127_bytes_of_png", lambda s: s.file("p.png", s.png[:127]), "truncated", "file ends at 127"),
    ("random_bytes", lambda s: s.file("r.png", RANDOM), "not_an_image", RANDOM[:4].hex(" ")),
    ("text_as_dcm", lambda s: s.file("t.dcm", b"patient notes\n" * 40), "not_an_image", "70 61 74"),
    ("text_as_png", lambda s: s.file("t.png", b"hello"), "not_an_image", "5 bytes"),
    (
        "preamble_without_dicm",
        lambda s: s.file("n.dcm", b"\0" * 128 + b"DICX" + b"\0" * 64),
        "not_an_image",
        "DICX",
    ),
    ("bmp", lambda s: s.file("b.png", bmp_bytes(s.pixels)), "not_an_image", "42 4d"),
    ("png_cut_at_50", lambda s: s.file("c50.png", s.png[:50]), "truncated", "file ends at 50"),
    ("png_cut_in_half", lambda s: s.file("c2.png", s.png[: len(s.png) // 2]), "truncated", "IDAT"),
    ("png_without_last_20", lambda s: s.file("c20.png", s.png[:-20]), "truncated", "file ends"),
    ("png_bad_idat_crc", lambda s: s.file("crc.png", bad_idat_crc(s.png)), "corrupt", "bad CRC in IDAT chunk"),
    (
        "png_bad_ihdr_crc",
        lambda s: s.file("ih.png", s.png[:29] + b"\0\0\0\0" + s.png[33:]),
        "corrupt",
        "IHDR",
    ),
    (
        "png_first_chunk_not_a_name",
        lambda s: s.file("nn.png", s.png[:8] + png_chunk(b"\x00\x01\x02\x03", b"") + s.png[8:]),
        "corrupt",
        "first chunk is 00 01 02 03 (0 bytes)",
    ),
    ("png_100000x100000", lambda s: s.file("huge.png", huge_png()), "too_large", "100000x100000"),
    (
        "jpeg_cut_at_20",
        lambda s: s.file("j20.jpg", jpeg_bytes(s.pixels)[:20]),
        "truncated",
        "first JPEG scan",
    ),
    (
        "jpeg_cut_in_half",
        lambda s: s.file("j2.jpg", jpeg_bytes(s.pixels)[: len(jpeg_bytes(s.pixels)) // 2]),
        "truncated",
        "truncated",
    ),
    ("jpeg_without_last_2", lambda s: s.file("je.jpg", jpeg_bytes(s.pixels)[:-2]), "truncated", "truncated"),
    ("dicom_cut_at_200", lambda s: truncate(s.dcm("explicit_le"), lambda n: 200), "truncated", "200"),
    (
        "dicom_cut_mid_pixels",
        lambda s: truncate(s.dcm("explicit_le"), lambda n: n // 2),
        "truncated",
        "ends early",
    ),
    (
        "dicom_without_last_20",
        lambda s: truncate(s.dcm("explicit_le"), lambda n: n - 20),
        "truncated",
        "ends early",
    ),
    # fewer than 8 bytes short, but cut inside an element: not a harmless stub of trailing bytes
    ("dicom_without_last_byte", lambda s: truncate(s.dcm("explicit_le"), lambda n: n - 1), "truncated", "ends early"),
    ("dicom_cut_3_bytes_into_the_pixel_data_header", lambda s: cut_into_pixel_data_header(s.dcm("explicit_le"), 3),
     "truncated", "ends early"),
    ("dicom_cut_7_bytes_into_the_pixel_data_header", lambda s: cut_into_pixel_data_header(s.dcm("explicit_le"), 7),
     "truncated", "ends early"),
    ("j2k_cut_in_the_sequence_delimiter", lambda s: truncate(s.dcm("j2k_lossless"), lambda n: n - 3), "truncated",
     "ends early"),
    ("deflated_cut", lambda s: truncate(s.dcm("deflated"), lambda n: n - 100), "truncated", "deflated"),
    (
        "j2k_cut_mid_frame",
        lambda s: truncate(s.dcm("j2k_lossless"), lambda n: n // 2),
        "truncated",
        "delimiter",
    ),
    (
        "j2k_without_last_20",
        lambda s: truncate(s.dcm("j2k_lossless"), lambda n: n - 20),
        "truncated",
        "ends early",
    ),
    (
        "j2k_codestream_cut",
        lambda s: replace_frame(s.dcm("j2k_lossy"), lambda f: f[: len(f) // 2]),
        "truncated",
        "FFD9",
    ),
    (
        "jpeg_codestream_cut",
        lambda s: replace_frame(s.dcm("jpeg_baseline"), lambda f: f[:-40]),
        "truncated",
        "FFD9",
    ),
    (
        "jpeg_ls_codestream_cut",
        lambda s: replace_frame(s.dcm("jpeg_ls_lossless"), lambda f: f[: len(f) // 3]),
        "truncated",
        "FFD9",
    ),
    (
        "rle_segment_cut",
        lambda s: replace_frame(s.dcm("rle"), lambda f: f[: len(f) // 2]),
        "truncated",
        "RLE",
    ),
    (
        "dicom_without_pixel_data",
        lambda s: without_pixel_data(s.dcm("explicit_le")),
        "no_pixel_data",
        "1.2.840.10008.5.1.4.1.1.1",
    ),
    (
        "pixel_data_too_short",
        lambda s: with_pixel_bytes(s.dcm("explicit_le"), lambda b: b[:-1000]),
        "truncated",
        "needs",
    ),
    (
        "pixel_data_too_long",
        lambda s: with_pixel_bytes(s.dcm("explicit_le"), lambda b: b + b"\0" * 1000),
        "decode_failed",
        "needs",
    ),
    (
        "made_up_transfer_syntax",
        lambda s: with_transfer_syntax(s.dcm("explicit_le"), "1.2.3.4.5.6.7.8"),
        "unsupported_transfer_syntax",
        "1.2.3.4.5.6.7.8",
    ),
    (
        "mpeg2_transfer_syntax",
        lambda s: with_transfer_syntax(s.dcm("explicit_le"), uid.MPEG2MPML),
        "unsupported_transfer_syntax",
        uid.MPEG2MPML,
    ),
    (
        "dicom_60000x60000",
        lambda s: with_size(s.dcm("explicit_le"), 60000, 60000),
        "too_large",
        "60000x60000",
    ),
    ("directory_named_png", directory, "not_a_file", "directory"),
    ("fifo_named_png", fifo, "not_a_file", "FIFO"),
    ("dangling_symlink", dangling, "not_found", "gone.png"),
    ("missing_file", lambda s: s.tmp_path / "nothing-here.png", "not_found", "no such file"),
]


def bmp_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "BMP")
    return buffer.getvalue()


@pytest.fixture
def sources(tmp_path, source_png, source_pixels, dicom_factory) -> Sources:
    return Sources(tmp_path, source_png.read_bytes(), source_pixels, dicom_factory)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
@pytest.mark.parametrize(
    ("builder", "reason", "detail"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input(sources: Sources, builder, reason: str, detail: str, isolated: bool) -> None:
    path = builder(sources)
    started = time.monotonic()
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=10.0 if isolated else None)
    assert time.monotonic() - started < 5
    error = caught.value
    assert error.reason == reason, str(error)
    assert error.reason in imaging.REASONS
    assert str(path) in str(error)
    assert detail in str(error)


def test_bad_input_table_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 20
    assert {reason for _, _, reason, _ in BAD_INPUTS} >= {
        "empty",
        "not_an_image",
        "truncated",
        "corrupt",
        "no_pixel_data",
        "unsupported_transfer_syntax",
        "too_large",
        "decode_failed",
        "not_a_file",
        "not_found",
    }


def test_a_codec_failure_names_each_decoder_once(pydicom_data) -> None:
    """pydicom-data's JPEG 2000 file whose header asks for 14 million tiles: every plugin refuses it."""
    with pytest.raises(XRayReadError) as caught:
        read_xray(pydicom_data("JPEG2000-embedded-sequence-delimiter.dcm"), timeout=None)
    message = str(caught.value)
    assert caught.value.reason == "decode_failed"
    assert "pylibjpeg: Error decoding the J2K data" in message and "pillow: Image size" in message
    assert not any(f"{name}: {name}:" in message for name in ("pylibjpeg", "gdcm", "pillow"))


def test_errors_are_picklable_with_reason() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(XRayReadError("truncated", "x.png: cut")))
    assert (error.reason, str(error)) == ("truncated", "x.png: cut")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files whatever their mode, so chmod 000 proves nothing"
)
def test_unreadable_file(tmp_path, source_png) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(source_png.read_bytes())
    path.chmod(0)
    for timeout in (None, 10.0):
        with pytest.raises(XRayReadError) as caught:
            read_xray(path, timeout=timeout)
        assert caught.value.reason == "unreadable" and "permission denied" in str(caught.value)


def test_permission_error_maps_to_unreadable(tmp_path, source_png, monkeypatch) -> None:
    """Works as root too: the open itself is made to fail as it would for another user."""
    path = tmp_path / "locked.png"
    path.write_bytes(source_png.read_bytes())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imaging.files.os, "open", refuse)
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert caught.value.reason == "unreadable" and str(path) in str(caught.value)


def test_deflate_bomb_is_too_large(dicom_factory, monkeypatch) -> None:
    path = dicom_factory("bomb.dcm", np.zeros((512, 512), np.uint16), "deflated")
    assert path.stat().st_size < 4096
    # Where the inflated-size check looks it up; the file itself is far below the limit anyway.
    monkeypatch.setattr(imaging.dicom, "MAX_FILE_BYTES", 64 * 1024)  # the dataset inflates to 512 kB
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert caught.value.reason == "too_large" and "inflates" in str(caught.value)


def test_non_utf8_file_names(tmp_path, source_png) -> None:
    folder = os.fsencode(tmp_path)
    good = os.path.join(folder, b"\xff\xfe.png")
    with open(good, "wb") as handle:
        handle.write(source_png.read_bytes())
    for timeout in (None, 10.0):
        assert read_xray(good, timeout=timeout).pixels.shape == read_xray(source_png).pixels.shape
        assert read_xray(os.fsdecode(good), timeout=timeout).meta["format"] == "png"

    bad = os.path.join(folder, b"\xfe\xff-bad.png")
    with open(bad, "wb") as handle:
        handle.write(b"not an image at all")
    for timeout in (None, 10.0):
        with pytest.raises(XRayReadError) as caught:
            read_xray(bad, timeout=timeout)
        message = str(caught.value)
        assert caught.value.reason == "not_an_image"
        assert "\\xfe\\xff-bad.png" in message
        message.encode("utf-8")  # printable anywhere: no lone surrogates


def test_a_codestream_asking_for_all_memory_fails_at_once(pydicom_data, tmp_path) -> None:
    """Four bits of pydicom-data's JPEG2000.dcm flipped (found by the fuzz test): its codestream then asks for a
    4-gigapixel image, and OpenJPEG took all 24 GiB of the machine until the kernel killed a process. The isolated
    decoder's address-space limit turns that into a read error."""
    data = bytearray(pydicom_data("JPEG2000.dcm").read_bytes())
    for offset, value in ((59, 0x80), (979, 0x30), (3062, 0x01), (3307, 0x80)):
        data[offset] = value
    path = tmp_path / "hungry.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=60)
    assert caught.value.reason in ("decode_failed", "too_large")  # not a timeout, not a crash
    assert "crashed" not in str(caught.value)
