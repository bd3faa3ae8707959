"""Lossless JPEG decoders compared: libjpeg-turbo 3 (``imagecodecs``, which the reader uses) against GDCM.

Lossless JPEG (process 14, SV1) has no resolution shortcut, so its decoder is most of a read's time. For each
lossless JPEG file of an archive from ``make_archive.py`` this times a whole read for the model
(``read_xray(min_side=448)``, in this process), GDCM's decode of the frame alone (pydicom's ``gdcm`` plugin, the
reader's fallback) and ``imagecodecs.jpeg8_decode`` of the same frame, whose pixels must be identical. Run it
again when either library is upgraded:

    python benchmarks/make_archive.py 192 /tmp/cxr-archive-192
    python benchmarks/lossless_jpeg_decoders.py --archive /tmp/cxr-archive-192
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder

from scoring import imaging


def median_seconds(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="a make_archive.py folder")
    parser.add_argument("--repeat", type=int, default=3, help="timings per file; the median is kept")
    args = parser.parse_args(argv)
    files = sorted(args.archive.glob("*_jpeg_lossless_sv1.dcm"))
    if not files:
        parser.error(f"no *_jpeg_lossless_sv1.dcm in {args.archive}")
    print(f"imagecodecs {imagecodecs.__version__}, libjpeg-turbo {imagecodecs.jpeg8_version()}; {len(files)} files")
    reads, gdcm, turbo = [], [], []
    for path in files:
        read, _ = median_seconds(partial(imaging.read_xray, path, timeout=None, min_side=448), args.repeat)
        ds = pydicom.dcmread(path)
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        by_gdcm, (expected, _) = median_seconds(
            partial(decoder.as_array, ds, index=0, decoding_plugin="gdcm", as_rgb=True), args.repeat)
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        by_turbo, found = median_seconds(partial(imagecodecs.jpeg8_decode, frame), args.repeat)
        if not np.array_equal(np.asarray(found).reshape(expected.shape).astype(np.int64), expected.astype(np.int64)):
            raise SystemExit(f"{path.name}: imagecodecs and GDCM decode different pixels")
        reads.append(read), gdcm.append(by_gdcm), turbo.append(by_turbo)
        print(f"{path.name} {ds.Rows}x{ds.Columns}: read {read * 1e3:.0f} ms, GDCM decode {by_gdcm * 1e3:.0f} ms, "
              f"imagecodecs decode {by_turbo * 1e3:.0f} ms, identical pixels")
    read, by_gdcm, by_turbo = (float(np.mean(x)) for x in (reads, gdcm, turbo))
    print(f"mean: read {read * 1e3:.1f} ms ({1 / read:.2f} model-input reads/s), GDCM decode {by_gdcm * 1e3:.1f} ms, "
          f"imagecodecs decode {by_turbo * 1e3:.1f} ms ({by_gdcm / by_turbo:.2f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
