"""The reduced decode for a model's input (``read_xray(path, min_side=N)``) against the full decode.

Tolerances, on the model input (``preprocess`` output converted back to reader units, [0, 1]), at 224 px
(min_side 448): mean absolute difference at most 0.005 (measured on the real films 0.0006-0.0025), largest at
most 0.15 on the real films (measured up to 0.115: single pixels at sharp edges and at the image border, where
the last partial block rounds differently) and 0.25 on the small test archive (0.19 on a 48-film one); a
cxr-dev PNG at 64 px (min_side 128), mean at most 0.01 and largest at most 0.15 (measured over 60 PNGs: 0.0066
and 0.102). ``preprocess`` takes the stored shape (``source_shape``) with a reduced decode: rounding the
reduced sides (404 x 512 read as 135 x 171) would otherwise resize to 51 rows instead of 50 and move the
padding by a row (mean 0.026, largest 0.89 before). Signed films take no codec shortcut: decoded in full and
averaged down, they are compared with the full display averaged down (their hard edges make the model-input
tolerances meaningless there).

The model is a ResNet-18 trained here for a few steps on real cxr-dev images until it separates the three
classes of its training set: its predictions depend on the image content, so agreement between the two
decodes means something (a random network tends to give one class to everything).
Its predicted class must agree on every file, its probabilities within 0.1.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.encaps import generate_frames

from benchmarks.make_archive import make_archive
from scoring import imaging
from scoring.dicom_encoding import htj2k_copy
from scoring.imaging import pixel_data
from scoring.imaging.downsample import area_downsample, reduce_to
from scoring.imaging.header import Geometry
from scoring.model import Checkpoint, Preprocessing, build_model, calibrated_probabilities, preprocess

REPO = Path(__file__).resolve().parents[2]
MEAN_TOLERANCE = 0.005
MAX_TOLERANCE_REAL = 0.15
MEAN_TOLERANCE_64PX = 0.01
MAX_TOLERANCE_ARCHIVE = 0.25
SIGNED_MEAN_TOLERANCE = 0.02
PROBABILITY_TOLERANCE = 0.1
MODEL_SIZE = 64
CLASSES = ["covid", "normal", "pneumonia"]


def _input_difference(path: Path, size: int) -> tuple[imaging.XRayImage, float, float]:
    full = imaging.read_xray(path, timeout=None)
    reduced = imaging.read_xray(path, timeout=None, min_side=2 * size)
    difference = (preprocess(full.pixels, size)
                  - preprocess(reduced.pixels, size, source_shape=reduced.stored_shape)).abs() * 0.25  # std 0.25
    return reduced, float(difference.mean()), float(difference.max())


@pytest.fixture(scope="module")
def real_films(pydicom_data, dicom_dir, tmp_path_factory) -> dict[str, Path]:
    films = {f"RG1_{kind}": pydicom_data(f"RG1_{kind}.dcm") for kind in ("UNCR", "J2KR", "J2KI")}
    films["SIIM"] = next(dicom_dir.glob("1.2.276.*.dcm"))
    films["RG1_HTJ2K"] = htj2k_copy(films["RG1_UNCR"], tmp_path_factory.mktemp("htj2k") / "RG1_HTJ2K.dcm")
    return films


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory, shared_data) -> list[tuple[Path, str]]:
    """One film of each archive encoding, 1,200-1,400 px (full-size ones take too long to make here)."""
    out = tmp_path_factory.mktemp("archive")
    rows = make_archive(9, out, shared_data, jobs=2, sides=(1200, 1400))
    return [(out / row["file"], row["encoding"]) for row in rows]


@pytest.fixture(scope="module")
def trained(cxr_dev) -> Checkpoint:
    with open(cxr_dev / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [row for label in CLASSES for row in [r for r in rows if r["label"] == label][:10]]
    images = torch.stack([preprocess(imaging.read_xray(cxr_dev / row["file"], timeout=None).pixels, MODEL_SIZE)
                          for row in chosen])
    labels = torch.tensor([CLASSES.index(row["label"]) for row in chosen])
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(20):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    assert accuracy >= 0.8, f"the test model did not learn its training set (accuracy {accuracy:.2f})"
    return Checkpoint("resnet18", CLASSES, Preprocessing(MODEL_SIZE), model.state_dict())


def _probabilities(model: torch.nn.Module, image: imaging.XRayImage) -> torch.Tensor:
    with torch.inference_mode():
        tensor = preprocess(image.pixels, MODEL_SIZE, source_shape=image.stored_shape)
        return calibrated_probabilities(model(tensor[None]), 1.0)[0]


# --- real films ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "scale"), [("RG1_UNCR", 0.25), ("RG1_J2KR", 0.25), ("RG1_J2KI", 0.25),
                                             ("RG1_HTJ2K", 0.25), ("SIIM", 0.5)])
def test_reduced_model_input_matches_the_full_decode_on_real_films(real_films, name, scale):
    reduced, mean, largest = _input_difference(real_films[name], 224)
    assert reduced.meta["decode_scale"] == scale
    assert min(reduced.pixels.shape) >= 448
    assert (reduced.meta["rows"], reduced.meta["cols"]) == ((1024, 1024) if name == "SIIM" else (1955, 1841))
    assert mean <= MEAN_TOLERANCE
    assert largest <= MAX_TOLERANCE_REAL
    assert 0.0 <= reduced.pixels.min() and reduced.pixels.max() <= 1.0


def test_without_min_side_the_reader_returns_the_stored_size(real_films):
    for path in real_films.values():
        image = imaging.read_xray(path)
        assert image.pixels.shape == (image.meta["rows"], image.meta["cols"])
        assert image.meta["decode_scale"] == 1.0


def test_isolated_decoder_passes_min_side_through(real_films):
    path = real_films["RG1_J2KR"]
    isolated = imaging.read_xray(path, min_side=300)
    in_process = imaging.read_xray(path, timeout=None, min_side=300)
    assert isolated.meta == in_process.meta
    np.testing.assert_array_equal(isolated.pixels, in_process.pixels)
    assert isolated.meta["decode_scale"] == 0.25  # J2K level 2 of its 5 (level 3 would be 245 px)


def test_codecs_decode_less_themselves(real_films):
    """The JPEG 2000 reduce factor, HTJ2K's skipped resolutions and the JPEG DCT scaling are used, not only the
    area downsample (a codec upgrade that breaks one would still read correctly, only slowly: this notices it)."""
    for name, factor in (("RG1_J2KR", 4), ("RG1_J2KI", 4), ("RG1_HTJ2K", 4), ("SIIM", 2)):
        ds = pydicom.dcmread(real_films[name])
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        geometry = Geometry(ds.Rows, ds.Columns, 1, 1, ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation)
        precision = 8 if name == "SIIM" else None
        values, used = pixel_data.decode_reduced(ds, ds.file_meta.TransferSyntaxUID, geometry, frame, 448, precision)
        assert used == factor
        assert values.shape == tuple(-(-n // factor) for n in (ds.Rows, ds.Columns))
        if name in ("RG1_J2KR", "RG1_HTJ2K"):  # lossless: the stored 15-bit values, not scaled to 16 bits
            assert values.max() < 2**15


def test_a_refused_codestream_falls_back_to_the_full_decode(real_films, monkeypatch):
    def refuse(frame, level):
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(pixel_data, "_pillow_j2k", refuse)
    reduced, mean, largest = _input_difference(real_films["RG1_J2KR"], 224)
    assert reduced.meta["decode_scale"] == 0.25  # the area downsample alone
    assert mean <= MEAN_TOLERANCE and largest <= MAX_TOLERANCE_REAL


def _signed_jpeg_baseline(pydicom_data, dicom_factory, source_pixels) -> Path:
    """A real chest film as 8-bit JPEG baseline, its Pixel Representation 1: the same bytes read as -128..127."""
    path = dicom_factory("signed-jpeg.dcm", source_pixels, "jpeg_baseline")
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1
    ds.save_as(path)
    return path


# (id, builder) of films with signed pixels, which every codec shortcut would read as unsigned
SIGNED_FILMS = [
    ("693_j2k_lossless_real", lambda d, f, s: Path(d("693_J2KR.dcm"))),  # pydicom-data's CT, 14 bits signed
    ("jpeg_baseline_8bit", _signed_jpeg_baseline),
]


@pytest.mark.parametrize("builder", [case[1] for case in SIGNED_FILMS], ids=[case[0] for case in SIGNED_FILMS])
def test_signed_pixels_take_no_codec_shortcut(pydicom_data, dicom_factory, source_pixels, builder):
    """Decoded in full (as signed values) and averaged down. Pillow's DCT scaling read a signed JPEG's samples as
    unsigned, so the grey levels of the reduced film were those of another picture. Against the full display
    averaged down the same way, mean difference measured 0.011 (JPEG) and 0.010 (CT); 0.51 for the JPEG before.
    (The model-input tolerances above are for chest films: these have hard edges everywhere, the JPEG's where
    its values wrap from 127 to -128, the CT's at its padding.)"""
    path = builder(pydicom_data, dicom_factory, source_pixels)
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    geometry = Geometry(ds.Rows, ds.Columns, 1, 1, ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation)
    precision = 8 if ds.BitsAllocated == 8 else None
    assert pixel_data.decode_reduced(ds, ds.file_meta.TransferSyntaxUID, geometry, frame, 128, precision) is None
    full = imaging.read_xray(path, timeout=None)
    reduced = imaging.read_xray(path, timeout=None, min_side=128)
    factor = round(1 / reduced.meta["decode_scale"])
    assert factor > 1
    averaged = area_downsample(np.rint(full.pixels * 1e6).astype(np.int64), factor) / 1e6
    assert float(np.abs(averaged - reduced.pixels).mean()) <= SIGNED_MEAN_TOLERANCE


def test_png_pixels_are_area_downsampled(cxr_dev):
    path = sorted(cxr_dev.glob("normal/*.png"))[0]
    reduced, mean, largest = _input_difference(path, MODEL_SIZE)  # cxr-dev PNGs are too small to reduce at 224
    assert reduced.meta["decode_scale"] < 1.0
    assert min(reduced.pixels.shape) >= 2 * MODEL_SIZE
    assert mean <= MEAN_TOLERANCE_64PX and largest <= MAX_TOLERANCE_REAL  # no row of padding moved


def test_area_downsample_is_the_rounded_block_mean():
    values = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9) * 1000
    out = area_downsample(values, 3)
    expected = np.rint(values[:6, :9].reshape(2, 3, 3, 3).astype(np.float64).mean(axis=(1, 3))).astype(np.uint16)
    np.testing.assert_array_equal(out[:2], expected)
    np.testing.assert_array_equal(out[2], np.rint(values[6].reshape(3, 3).mean(axis=1)))  # the partial last row
    assert out.shape == (3, 3) and out.dtype == np.uint16
    signed = np.array([[-5, -4], [-3, 30000]], dtype=np.int16)
    assert area_downsample(signed, 2).tolist() == [[7497]]
    assert reduce_to(values.astype(np.float32), 2)[1] == 1  # float pixel data is left alone


@pytest.mark.parametrize(("shape", "factor"), [((12, 12), 3), ((13, 12), 3), ((12, 14), 3), ((13, 14), 3),
                                             ((2, 9), 4), ((61, 47), 6), ((5, 5), 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32])
def test_area_downsample_rounds_every_block_like_a_float_mean(shape, factor, dtype):
    """Whole blocks, the partial last row and column of blocks and their corner, against a float64 reference
    (half rounded up); a strided (non-contiguous) input as well."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(sum(shape) * factor)
    source = rng.integers(info.min, int(info.max) + 1, (2 * shape[0], shape[1]), dtype=dtype)
    for values in (source[: shape[0]], source[::2]):
        out = area_downsample(values, factor)
        rows, cols = -(-shape[0] // factor), -(-shape[1] // factor)
        expected = np.array([[np.floor(values[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                                       .astype(np.float64).mean() + 0.5) for c in range(cols)] for r in range(rows)])
        assert out.dtype == dtype and out.shape == (rows, cols)
        np.testing.assert_array_equal(out, expected.astype(dtype))


# --- the archive, and the model --------------------------------------------------------------------------

def test_reduced_model_input_matches_the_full_decode_on_the_archive(small_archive):
    for path, encoding in small_archive:
        reduced, mean, largest = _input_difference(path, 224)
        assert reduced.meta["decode_scale"] < 1.0 or min(reduced.pixels.shape) < 896, encoding
        assert mean <= MEAN_TOLERANCE, encoding
        assert largest <= MAX_TOLERANCE_ARCHIVE, encoding


def test_the_model_agrees_on_reduced_and_full_decodes(trained, real_films, small_archive, cxr_dev):
    model = trained.build()
    files = [*real_films.values(), *(path for path, _ in small_archive),
             *sorted(cxr_dev.glob("*/*.png"))[100:130]]  # not among the 60 the model was trained on
    predicted = set()
    for path in files:
        full = _probabilities(model, imaging.read_xray(path, timeout=None))
        reduced = _probabilities(model, imaging.read_xray(path, timeout=None, min_side=2 * MODEL_SIZE))
        assert int(full.argmax()) == int(reduced.argmax()), path.name
        assert float((full - reduced).abs().max()) <= PROBABILITY_TOLERANCE, path.name
        predicted.add(int(full.argmax()))
    assert len(predicted) > 1  # the model does not give one class to everything


# --- the GPU script ---------------------------------------------------------------------------------------

def test_gpu_check_script_is_valid_bash():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0


def test_j2k_encodings_have_the_decomposition_levels_they_claim(tmp_path, chest_dataset_factory, source_pixels):
    """The archive's 1-level JPEG 2000 is like RG1_J2KR; the default one has OpenJPEG's 5 levels."""
    from scoring.dicom_encoding import encode_and_save

    for encoding, levels in (("j2k_lossless", 5), ("j2k_lossless_1level", 1)):
        path = tmp_path / f"{encoding}.dcm"
        encode_and_save(chest_dataset_factory(source_pixels), source_pixels, encoding, path)
        frame = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
        assert frame.startswith(b"\xff\x4f\xff\x51")  # a raw codestream, as DICOM wants
        assert pixel_data._j2k_header(frame)[5] == levels


def test_the_stored_shape_is_oriented_like_the_pixels():
    assert imaging.XRayImage(np.zeros((10, 20), np.float32), {"rows": 41, "cols": 83}).stored_shape == (41, 83)
    assert imaging.XRayImage(np.zeros((20, 10), np.float32), {"rows": 41, "cols": 83}).stored_shape == (83, 41)
    assert imaging.XRayImage(np.zeros((20, 10), np.float32), {}).stored_shape == (20, 10)
