"""A realistic benchmark archive: N distinct full-size chest films in the mix of encodings a PACS export has.

    python benchmarks/make_archive.py 100 /tmp/cxr-archive [--seed 0] [--jobs 2]

Pixels come from the real films at hand: pydicom-data's RG1 (a 15-bit CR chest, MONOCHROME1, kept at 15 bits
with its window), the SIIM chest in the shared dicom folder and the cxr-dev PNGs (8-bit, upscaled and spread
over 12 bits, MONOCHROME2, no window: the reader's percentile window). Every film is resized so that its
longer side is 2,048-3,000 px (drawn per file) and gets a little noise of its own (0.1 % of full scale), so
no two files have the same pixels or bytes. Sources are used in turn: RG1, SIIM, then the PNGs.

The mix, in every run of 20 files (the first 9 files hold one of each):

    encoding              share  transfer syntax / container
    explicit_le            20 %  uncompressed, explicit VR little endian
    jpeg_lossless_sv1      15 %  JPEG lossless, process 14 SV1 (GDCM)
    j2k_lossless           20 %  JPEG 2000 lossless, 5 decomposition levels (OpenJPEG's default)
    j2k_lossless_1level    10 %  JPEG 2000 lossless, 1 decomposition level, like RG1_J2KR (Pillow)
    j2k_lossy              10 %  JPEG 2000 lossy (ratio 20, 5 levels)
    jpeg_ls_lossless       10 %  JPEG-LS lossless (CharLS)
    rle                     5 %  RLE lossless
    jpeg_baseline           5 %  8-bit JPEG baseline (Pillow, quality 95)
    png16                   5 %  16-bit grey PNG (bone white, values spread over 16 bits)

``OUT/manifest.csv`` lists file, encoding, source, rows, cols, bits stored. Every file's mtime is set an
hour back, so ``cxr-score`` (which leaves fresh files for the next run) takes them at once. Write the
archive outside the repository (e.g. under /tmp): it is hundreds of megabytes for 100 files.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from scoring.dicom_encoding import encode_and_save

REPO = Path(__file__).resolve().parents[1]
# One run of 20 files; the first 9 entries are one of each encoding.
MIX = (
    "explicit_le", "jpeg_lossless_sv1", "j2k_lossless", "j2k_lossless_1level", "j2k_lossy",
    "jpeg_ls_lossless", "rle", "jpeg_baseline", "png16",
    "explicit_le", "j2k_lossless", "jpeg_lossless_sv1", "explicit_le", "j2k_lossless", "j2k_lossless_1level",
    "j2k_lossy", "jpeg_ls_lossless", "explicit_le", "j2k_lossless", "jpeg_lossless_sv1",
)
SIDE_RANGE = (2048, 3000)
NOISE = 0.001  # of full scale
SIIM_NAME = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    bits: int  # bits stored in the films made from it
    monochrome1: bool
    window: tuple[float, float] | None


@dataclass(frozen=True)
class Film:
    index: int
    encoding: str
    source: Source
    seed: int
    sides: tuple[int, int] = SIDE_RANGE  # the range of the longer side


def sources(shared: Path) -> list[Source]:
    from pydicom.data import get_testdata_file

    rg1 = Path(get_testdata_file("RG1_UNCR.dcm"))
    header = pydicom.dcmread(rg1, stop_before_pixels=True)
    found = [Source("RG1", rg1, int(header.BitsStored), True,
                    (float(header.WindowCenter), float(header.WindowWidth)))]
    siim = shared / "dicom" / SIIM_NAME
    if siim.is_file():
        found.append(Source("SIIM", siim, 12, False, None))
    found += [Source(f"cxr-dev/{p.parent.name}/{p.name}", p, 12, False, None)
              for p in sorted((shared / "cxr-dev").glob("*/*.png"))]
    return found


def source_pixels(source: Source) -> np.ndarray:
    """The source's grey values as float32 in [0, 1] of its own range, as stored (MONOCHROME1 not inverted)."""
    if source.path.suffix == ".dcm":
        ds = pydicom.dcmread(source.path)
        values = ds.pixel_array.astype(np.float32)
        return values / float(2 ** int(ds.BitsStored) - 1)
    with Image.open(source.path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def film_pixels(film: Film) -> np.ndarray:
    """The source resized to a longer side in SIDE_RANGE, with noise, quantised to the film's bits."""
    rng = np.random.default_rng([film.seed, film.index])
    values = source_pixels(film.source)
    rows, cols = values.shape
    longer = int(rng.integers(film.sides[0], film.sides[1] + 1))
    scale = longer / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    resized = np.asarray(Image.fromarray(values).resize(size, Image.Resampling.BICUBIC))
    noisy = resized + rng.normal(0.0, NOISE, resized.shape).astype(np.float32)
    top = 2**film.source.bits - 1
    return np.rint(np.clip(noisy, 0.0, 1.0) * top).astype(np.uint16)


def dataset(film: Film, pixels: np.ndarray, bits: int) -> pydicom.Dataset:
    """A CR chest PA header (RG1's, a real one) with this film's geometry, new UIDs and a made-up patient."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = ds.StudyID = f"ARCHIVE-{film.index:05d}"
    ds.PatientName = f"Archive^{film.index:05d}"
    ds.ImageComments = f"benchmark archive film {film.index} from {film.source.name}"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if film.source.monochrome1 else "MONOCHROME2"
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            del ds[keyword]
    if film.source.window is not None:
        shrink = 2 ** (film.source.bits - bits)
        ds.WindowCenter, ds.WindowWidth = (round(v / shrink, 1) for v in film.source.window)
    ds.PixelData = pixels.tobytes()
    return ds


def write_film(film: Film, out: Path) -> dict[str, object]:
    pixels = film_pixels(film)
    bits = film.source.bits
    if film.encoding == "png16":
        shifted = pixels.astype(np.uint16) << (16 - bits)
        if film.source.monochrome1:  # a PNG is bone white
            shifted = np.uint16(65535) - shifted
        path = out / f"{film.index:05d}_{film.encoding}.png"
        Image.fromarray(shifted).save(path)
    else:
        if film.encoding == "jpeg_baseline":
            pixels, bits = (pixels >> (bits - 8)).astype(np.uint8), 8
        path = out / f"{film.index:05d}_{film.encoding}.dcm"
        ds = dataset(film, pixels, bits)
        encode_and_save(ds, pixels, film.encoding, path)  # GDCM scratch: a temporary folder per film
    old = time.time() - 3600
    os.utime(path, (old, old))
    return {"file": path.name, "encoding": film.encoding, "source": film.source.name,
            "rows": pixels.shape[0], "cols": pixels.shape[1], "bits_stored": bits}


def plan(n_files: int, found: list[Source], seed: int, sides: tuple[int, int] = SIDE_RANGE) -> list[Film]:
    return [Film(i, MIX[i % len(MIX)], found[i % len(found)], seed, sides) for i in range(n_files)]


def make_archive(n_files: int, out: Path, shared: Path, seed: int = 0, jobs: int | None = None,
                 sides: tuple[int, int] = SIDE_RANGE) -> list[dict]:
    """Write the archive; returns the manifest rows (also written to ``out/manifest.csv``). ``sides``: the
    range of the longer side (tests make smaller films)."""
    out.mkdir(parents=True, exist_ok=True)
    films = plan(n_files, sources(shared), seed, sides)
    with ProcessPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        rows = list(pool.map(write_film, films, [out] * len(films)))
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="number of films")
    parser.add_argument("out", type=Path, help="folder to write (outside the repository)")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None, help="encoding processes (default: the CPU cores)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("N must be at least 1")
    if args.out.resolve().is_relative_to(REPO):
        parser.error("write the archive outside the repository, e.g. under /tmp")
    start = time.perf_counter()
    rows = make_archive(args.n, args.out, args.shared, args.seed, args.jobs)
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["encoding"])] = counts.get(str(row["encoding"]), 0) + 1
    size = sum((args.out / str(row["file"])).stat().st_size for row in rows)
    print(f"wrote {len(rows)} films ({size / 2**20:.0f} MiB) to {args.out} in {time.perf_counter() - start:.0f} s")
    for encoding, count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"  {encoding:20s} {count:5d}  ({count / len(rows):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
