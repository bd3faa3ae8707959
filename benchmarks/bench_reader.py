"""Reads per second of ``scoring.imaging.read_xray``, in process and through the isolated child.

(a) every cxr-dev PNG in process (``timeout=None``), (b) the same through the isolated decoder
child (the default, with a time limit), (c) pydicom-data's RG1_UNCR (1955x1841, 15-bit, explicit
VR little endian) and (d) RG1_J2KR (the same image, JPEG 2000 lossless), each in both modes.

    python benchmarks/bench_reader.py [--data /work/shared/data] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from scoring import imaging

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))


def hardware() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    cpu = model or platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def reads_per_second(paths: Sequence[Path], repeat: int, timeout: float | None) -> tuple[float, float]:
    """(reads per second, megapixels per second) over `repeat` passes of `paths`."""
    imaging.read_xray(paths[0], timeout=timeout)  # warm-up: imports, codec start, decoder child
    pixels = 0
    started = time.perf_counter()
    for _ in range(repeat):
        for path in paths:
            pixels += imaging.read_xray(path, timeout=timeout).pixels.size
    elapsed = time.perf_counter() - started
    return repeat * len(paths) / elapsed, pixels / elapsed / 1e6


def rg1(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(f"{name}.dcm")
    if path is None:
        raise SystemExit(f"{name}.dcm not found: install pydicom-data (requirements-dev.txt)")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder holding cxr-dev/")
    parser.add_argument("--repeat", type=int, default=10, help="passes over each DICOM (default 10)")
    parser.add_argument("--png-repeat", type=int, default=1, help="passes over the PNGs (default 1)")
    args = parser.parse_args(argv)

    pngs = sorted((args.data / "cxr-dev").glob("*/*.png"))
    if not pngs:
        parser.error(f"no PNGs under {args.data / 'cxr-dev'}")
    isolated = imaging.DEFAULT_TIMEOUT_S
    print(f"hardware: {hardware()}")
    cases = [
        (f"(a) cxr-dev PNGs x{len(pngs)}, in process", pngs, args.png_repeat, None),
        (f"(b) cxr-dev PNGs x{len(pngs)}, isolated child", pngs, args.png_repeat, isolated),
        ("(c) RG1_UNCR 1955x1841, in process", [rg1("RG1_UNCR")], args.repeat, None),
        ("(c) RG1_UNCR 1955x1841, isolated child", [rg1("RG1_UNCR")], args.repeat, isolated),
        ("(d) RG1_J2KR 1955x1841, in process", [rg1("RG1_J2KR")], args.repeat, None),
        ("(d) RG1_J2KR 1955x1841, isolated child", [rg1("RG1_J2KR")], args.repeat, isolated),
    ]
    for label, paths, repeat, timeout in cases:
        rate, megapixels = reads_per_second(paths, repeat, timeout)
        print(f"{label:45s} {rate:8.1f} reads/s {megapixels:8.1f} Mpixel/s")
    imaging.stop_reader_process()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
