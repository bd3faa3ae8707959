"""Fuzzing the reader with mutated real files: only XRayReadError may come out, never a hang, never NaN.

Seeds are real files (a cxr-dev PNG, a JPEG made from it, the shared CR DICOM and small real DICOMs from
pydicom-data in native, RLE, JPEG-LS, JPEG lossless and JPEG 2000 encodings). Mutations: bit flips,
truncations, and header edits that declare huge sizes, huge frame counts or wrong bit depths. Reads go
through the isolated decoder, as in production, so a crashing codec is a ``decode_failed`` and a stuck one a
``timeout``, which this test counts as a failure (a hang). CI runs a derandomised budget of about a minute;
``CXR_RELIABILITY=long`` runs a random, much longer one.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from scoring import imaging
from scoring.imaging import REASONS, TIMEOUT, XRayReadError, read_xray
from tests.reliability.conftest import LONG, scale

EXAMPLES_PER_SEED = scale(500, 10000)
READ_TIMEOUT_S = 20.0
MEMORY_LIMIT_BYTES = 3 * 1024**3  # the decoder child's peak resident memory over the whole fuzz run
SMALL_DICOMS = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                "JPEG-lossy.dcm", "JPEG2000.dcm", "emri_small_RLE.dcm"]  # unsigned RLE: imagecodecs decodes it

# No shrinking: a slow codec made shrinking one failure outlast five minutes. A failing case is kept as a file
# instead (its path is in the assertion message), which is what one needs to reproduce it.
FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_SEED, deadline=None, derandomize=not LONG, database=None,
                         phases=[Phase.explicit, Phase.reuse, Phase.generate],
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def seeds(cxr_dev, dicom_dir, pydicom_data) -> dict[str, bytes]:
    png = sorted(cxr_dev.glob("normal/*.png"))[0]
    with Image.open(png) as image:
        jpeg = io.BytesIO()
        image.resize((256, 256)).save(jpeg, "JPEG", quality=90)
    found = {"png": png.read_bytes(), "jpeg": jpeg.getvalue(),
             "siim_cr_jpeg_baseline.dcm": next(dicom_dir.glob("1.2.276.*.dcm")).read_bytes()}
    found.update({name: pydicom_data(name).read_bytes() for name in SMALL_DICOMS})
    return found


SEED_NAMES = ["png", "jpeg", "siim_cr_jpeg_baseline.dcm", *SMALL_DICOMS]


# --- mutations -------------------------------------------------------------------------------------------

def flip_bits(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[(position // 8) % len(out)] ^= 1 << (position % 8)
    return bytes(out)


def dicom_header(data: bytes, keyword: str, value) -> bytes:
    """The DICOM with one header element set to ``value`` (written without validation, as a hostile file)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()
    except Exception:  # the seed plus this value cannot even be written: fall back to a plain truncation
        return data[: len(data) // 2]


def png_ihdr(data: bytes, width: int, height: int, depth: int, fix_crc: bool) -> bytes:
    start = data.index(b"IHDR")
    body = bytearray(data[start + 4:start + 17])
    body[0:8] = struct.pack(">II", width, height)
    body[8] = depth
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body))) if fix_crc else data[start + 17:start + 21]
    return data[:start + 4] + bytes(body) + crc + data[start + 21:]


def jpeg_sof(data: bytes, height: int, width: int, precision: int) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[:at + 4] + bytes([precision]) + struct.pack(">HH", height, width) + data[at + 9:]
    return data


DICOM_EDITS = st.one_of(
    st.tuples(st.just("Rows"), st.sampled_from([0, 1, 65535])),
    st.tuples(st.just("Columns"), st.sampled_from([0, 1, 65535])),
    st.tuples(st.just("NumberOfFrames"), st.sampled_from(["0", "2", "999999", "-1", "1e9"])),
    st.tuples(st.just("BitsAllocated"), st.sampled_from([0, 1, 8, 12, 16, 32, 64])),
    st.tuples(st.just("BitsStored"), st.sampled_from([0, 1, 17, 33, 64])),
    st.tuples(st.just("HighBit"), st.sampled_from([0, 63])),
    st.tuples(st.just("SamplesPerPixel"), st.sampled_from([0, 2, 3, 4])),
    st.tuples(st.just("PixelRepresentation"), st.sampled_from([1, 2])),
    st.tuples(st.just("PhotometricInterpretation"), st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "XYZ"])),
    st.tuples(st.just("RescaleSlope"), st.sampled_from(["1e38", "NaN", "-inf", "0"])),
    st.tuples(st.just("WindowWidth"), st.sampled_from(["0", "-5", "NaN", "1e308"])),
)


@st.composite
def mutated(draw, data: bytes, kind: str) -> bytes:
    choices = ["flips", "truncate", "flips+truncate"]
    if kind == "dicom":
        choices.append("header")
    elif kind == "png":
        choices.append("ihdr")
    else:
        choices.append("sof")
    how = draw(st.sampled_from(choices))
    if how == "header":
        keyword, value = draw(DICOM_EDITS)
        return dicom_header(data, keyword, value)
    if how == "ihdr":
        return png_ihdr(data, draw(st.sampled_from([0, 1, 2**31 - 1, 100_000])),
                        draw(st.sampled_from([0, 1, 2**31 - 1, 100_000])),
                        draw(st.sampled_from([1, 8, 16, 3, 0])), draw(st.booleans()))
    if how == "sof":
        return jpeg_sof(data, draw(st.sampled_from([0, 1, 65535])), draw(st.sampled_from([0, 1, 65535])),
                        draw(st.sampled_from([8, 12, 16, 0])))
    out = data
    if "flips" in how:
        out = flip_bits(out, draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=16)))
    if "truncate" in how:
        # Mostly deep into the file (where the pixel data is); the short prefixes are few and soon covered.
        out = out[: int(len(out) * draw(st.floats(0.0, 0.999)) ** 0.25)]
    return out


# --- the property ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(scale(300, 7200))
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_mutated_files_give_an_image_or_a_read_error(seed_name, seeds, tmp_path_factory):
    data = seeds[seed_name]
    kind = "dicom" if seed_name.endswith(".dcm") else seed_name
    folder = tmp_path_factory.mktemp("fuzz")
    outcomes: dict[str, int] = {}

    @FUZZ_SETTINGS
    @given(mutated(data, kind))
    def read_one(content: bytes) -> None:
        path = folder / f"case.{'dcm' if kind == 'dicom' else kind}"
        path.write_bytes(content)
        kept = folder / f"failing-{hashlib.sha256(content).hexdigest()[:16]}.{path.suffix[1:]}"
        started = time.perf_counter()
        try:
            image = read_xray(path, timeout=READ_TIMEOUT_S)
        except XRayReadError as exc:
            if exc.reason not in REASONS or exc.reason == TIMEOUT:
                kept.write_bytes(content)
                pytest.fail(f"{exc.reason} after {time.perf_counter() - started:.1f} s on a mutation of {seed_name}, "
                            f"kept as {kept}")
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            return
        except BaseException:
            kept.write_bytes(content)
            raise
        if not (image.pixels.ndim == 2 and image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()
                and 0.0 <= float(image.pixels.min()) <= float(image.pixels.max()) <= 1.0):
            kept.write_bytes(content)
            pytest.fail(f"bad pixels from a mutation of {seed_name}, kept as {kept}")
        outcomes["read"] = outcomes.get("read", 0) + 1

    read_one()
    assert sum(outcomes.values()) >= min(EXAMPLES_PER_SEED, 50)
    peak = decoder_peak_memory()
    assert peak is None or peak < MEMORY_LIMIT_BYTES
    print(f"\n{seed_name}: {sum(outcomes.values())} cases {dict(sorted(outcomes.items()))}, "
          f"decoder peak RSS {peak and peak // 2**20} MiB")


def decoder_peak_memory() -> int | None:
    """Peak resident memory (VmHWM) of this process's isolated decoder child, in bytes."""
    pid = imaging.reader_process_pid()
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def test_the_mutations_change_what_they_claim(seeds):
    png = seeds["png"]
    assert png_ihdr(png, 7, 9, 16, fix_crc=True)[16:24] == struct.pack(">II", 7, 9)
    assert flip_bits(b"\x00\x00", [9]) == b"\x00\x02"
    ds = pydicom.dcmread(io.BytesIO(dicom_header(seeds["MR_small.dcm"], "Rows", 65535)), force=True)
    assert ds.Rows == 65535
