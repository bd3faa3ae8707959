"""Scoring throughput, measured in one run on the same files.

Replicates the real PNGs and DICOMs (cxr-dev, the shared DICOMs, pydicom-data's RG1 chest in three encodings)
into a few thousand files whose bytes all differ (so none is skipped as a duplicate), then reports images per
second for:

- decode only: the scorer's DataLoader (read + scope check + preprocess) with all its workers, no model;
- model only: random tensors of the same batch size through the same model;
- the full pipeline: ``cxr-score`` on a fresh database (triage, hashing, decoding, model, commits);
- a naive loop like the seed notebooks: read one image, preprocess, ``model(x[None])`` (float32, default
  memory format), over the same files;
- an incremental rerun over the already-scored files (files skipped per second).

The bound for the pipeline is 1 / (decode s/img + model s/img) on a CPU, where both stages share the cores,
and the slower stage's rate on a GPU, where they overlap.

    python benchmarks/bench_score.py --files 2400

With ``--archive DIR`` (an archive from ``benchmarks/make_archive.py``) it measures full-size films instead:
per encoding, the reader's model-input reads per second (in this process, one file at a time) with a full
decode and with the reduced one (``min_side`` = 2 x the model's input side), and how far the two model inputs
differ; RG1_J2KR through the isolated reader; then for the whole mix, decode only (the scorer's DataLoader,
reduced and, for comparison, full decode), model only, the bound, the full pipeline (reduced, as ``cxr-score``
runs) and the naive loop (full decode per image, like the seed notebooks).

    python benchmarks/make_archive.py 100 /tmp/cxr-archive
    python benchmarks/bench_score.py --archive /tmp/cxr-archive
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from pydicom.uid import generate_uid

from db.results import FileStat
from scoring import imaging
from scoring.model import Checkpoint, Preprocessing, build_model, load_checkpoint, preprocess, save_checkpoint
from scoring.pipeline import Job, Scorer, ScoringOptions, make_loader
from scoring.run import default_workers

REPO = Path(__file__).resolve().parents[1]


def hardware() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def source_files(shared: Path) -> list[Path]:
    from pydicom.data import get_testdata_file

    files = sorted((shared / "cxr-dev").glob("*/*.png")) + sorted((shared / "dicom").glob("*.dcm"))
    return files + [Path(get_testdata_file(f"RG1_{kind}.dcm")) for kind in ("UNCR", "J2KR", "J2KI")]


def replicate(sources: list[Path], n_files: int, out: Path) -> list[Path]:
    """``n_files`` copies cycling through ``sources``, each with unique bytes but identical pixels."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n_files):
        source = sources[i % len(sources)]
        target = out / f"{i:05d}_{source.name}"
        if source.suffix == ".png":
            info = PngInfo()
            info.add_text("copy", str(i))
            with PILImage.open(source) as image:
                image.save(target, pnginfo=info)
        else:
            ds = pydicom.dcmread(source)
            ds.SOPInstanceUID = generate_uid()
            ds.save_as(target)
        written.append(target)
    old = time.time() - 3600  # settled: the scorer leaves fresh files for later
    for path in written:
        os.utime(path, (old, old))
    return written


def make_checkpoint(path: Path, arch: str, size: int) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, 3)
    return save_checkpoint(path, Checkpoint(arch, ["covid", "normal", "pneumonia"], Preprocessing(size),
                                            model.state_dict(), training={"name": f"bench-{arch}-{size}"}))


def decode_only(files: list[Path], checkpoint: Checkpoint, options: ScoringOptions) -> float:
    jobs = [Job(FileStat(str(p), 0, 0), "") for p in files]
    start = time.perf_counter()
    n = sum(len(items) for items, _ in make_loader(jobs, checkpoint, options))
    return n / (time.perf_counter() - start)


def model_only(checkpoint: Checkpoint, options: ScoringOptions, n_images: int) -> float:
    scorer = Scorer(checkpoint, options.device, options.precision)
    batch = torch.randn(options.batch_size, 1, checkpoint.input_size, checkpoint.input_size)
    if options.device.type == "cuda":
        batch = batch.pin_memory()
    scorer.probabilities(batch)  # warm-up
    batches = max(1, n_images // options.batch_size)
    _sync(options.device)
    start = time.perf_counter()
    for _ in range(batches):
        scorer.probabilities(batch)
    _sync(options.device)
    return batches * options.batch_size / (time.perf_counter() - start)


def naive_loop(files: list[Path], checkpoint: Checkpoint, device: torch.device) -> float:
    model = checkpoint.build().to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            try:
                pixels = imaging.read_xray(path, timeout=None).pixels
            except imaging.XRayReadError:
                continue
            x = checkpoint.preprocessing(pixels).to(device)
            torch.softmax(model(x[None]), dim=-1).cpu()
    return len(files) / (time.perf_counter() - start)


def run_scorer(db: str, ckpt: Path, folder: Path, options: ScoringOptions) -> dict:
    command = [sys.executable, "-m", "scoring", "--db", db, "--model", str(ckpt), "--json",
               "--batch-size", str(options.batch_size), "--workers", str(options.workers),
               "--precision", options.precision,
               "--device", options.device.type, str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1):
        raise SystemExit(f"cxr-score failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def reads_per_second(paths: list[Path], min_side: int | None, timeout: float | None = None,
                     repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for path in paths:
            imaging.read_xray(path, timeout=timeout, min_side=min_side)
    return repeat * len(paths) / (time.perf_counter() - start)


def input_difference(path: Path, size: int) -> tuple[float, float]:
    """Mean and largest absolute difference of the model inputs, reduced vs full decode, in reader units."""
    full = preprocess(imaging.read_xray(path, timeout=None).pixels, size)
    reduced = preprocess(imaging.read_xray(path, timeout=None, min_side=2 * size).pixels, size)
    difference = (full - reduced).abs() * 0.25  # preprocess divides by std 0.25
    return float(difference.mean()), float(difference.max())


def archive_figures(archive: Path, work: Path, args: argparse.Namespace) -> None:
    from pydicom.data import get_testdata_file

    with (archive / "manifest.csv").open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    files = [archive / row["file"] for row in manifest]
    by_encoding: dict[str, list[Path]] = {}
    for row in manifest:
        by_encoding.setdefault(row["encoding"], []).append(archive / row["file"])
    ckpt_path = make_checkpoint(work / "model.pt", args.arch, args.size)
    checkpoint = load_checkpoint(ckpt_path)
    device = torch.device(args.device)
    min_side = 2 * args.size
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"hardware: {hardware()}; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"archive: {len(files)} films in {archive}; model {args.arch} at {args.size} px (min_side {min_side}), "
          f"batch {args.batch_size}, {args.workers} decode workers, device {device}, precision {args.precision}")

    print("\nper encoding, model-input reads/s in this process (read_xray, timeout=None), one file at a time:")
    print(f"{'encoding':20s} {'files':>5s} {'full':>8s} {'reduced':>8s} {'speed-up':>8s} {'mean diff':>9s} "
          f"{'max diff':>8s}")
    for paths in by_encoding.values():  # warm-up: codec imports and first-call costs are not measured
        reads_per_second(paths[:1], None)
        reads_per_second(paths[:1], min_side)
    for encoding, paths in sorted(by_encoding.items()):
        full = reads_per_second(paths, None)
        reduced = reads_per_second(paths, min_side)
        differences = [input_difference(p, args.size) for p in paths]
        print(f"{encoding:20s} {len(paths):5d} {full:8.2f} {reduced:8.2f} {reduced / full:7.1f}x "
              f"{np.mean([d[0] for d in differences]):9.4f} {max(d[1] for d in differences):8.4f}")
    rg1 = [Path(get_testdata_file("RG1_J2KR.dcm"))]
    full, reduced = reads_per_second(rg1, None, 30.0, 5), reads_per_second(rg1, min_side, 30.0, 5)
    print(f"RG1_J2KR, isolated reader (default), 5 reads: full {full:.2f} reads/s, reduced {reduced:.2f} reads/s "
          f"({reduced / full:.1f}x)")

    full_options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                                  precision=args.precision, reduced_decode=False)
    options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                             precision=args.precision)
    decode_full = decode_only(files, checkpoint, full_options)
    decode = decode_only(files, checkpoint, options)
    model = model_only(checkpoint, options, min(len(files) * 4, 1024))
    first = run_scorer(f"sqlite:///{work / 'bench.db'}", ckpt_path, archive, options)
    pipeline = first["scored"] / first["seconds"]
    naive = naive_loop(files, checkpoint, device)
    if device.type == "cuda":
        bound, rule = min(decode, model), "min(decode, model)"
    else:
        bound, rule = 1 / (1 / decode + 1 / model), "1 / (1/decode + 1/model)"
    print("\nthe mix:")
    print(f"decode only, full     {decode_full:8.2f} img/s   (DataLoader, read_xray without min_side)")
    print(f"decode only, reduced  {decode:8.2f} img/s   ({decode / decode_full:.1f}x the full decode)")
    print(f"model only            {model:8.2f} img/s")
    print(f"bound                 {bound:8.2f} img/s   ({rule})")
    print(f"full pipeline         {pipeline:8.2f} img/s   = {pipeline / bound:.2f} of the bound "
          f"({first['scored']} scored in {first['seconds']:.1f} s: the whole run as cxr-score times it)")
    print(f"full pipeline         {first['scored'] / first['phase_seconds']['decode_and_score']:8.2f} img/s   "
          "(decoding and scoring phase alone, after triage)")
    print(f"naive loop            {naive:8.2f} img/s   "
          f"(full decode per image; the pipeline is {pipeline / naive:.1f}x)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--files", type=int, default=2400)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--archive", type=Path, help="an archive from make_archive.py: full-size film figures")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    os.environ["CXR_HOME"] = str(work / "home")
    try:
        if args.archive is not None:
            archive_figures(args.archive, work, args)
            return 0
        files = replicate(source_files(args.shared), args.files, work / "images")
        ckpt_path = make_checkpoint(work / "model.pt", args.arch, args.size)
        checkpoint = load_checkpoint(ckpt_path)
        device = torch.device(args.device)
        options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                                 precision=args.precision)
        if device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        print(f"hardware: {hardware()}")
        print(f"files: {len(files)} ({sum(p.suffix == '.dcm' for p in files)} DICOM), model {args.arch} at "
              f"{args.size} px, batch {args.batch_size}, {args.workers} decode workers, device {device}, "
              f"precision {args.precision}")

        decode = decode_only(files, checkpoint, options)
        model = model_only(checkpoint, options, min(len(files), 1024))
        db = f"sqlite:///{work / 'bench.db'}"
        first = run_scorer(db, ckpt_path, work / "images", options)
        pipeline = first["scored"] / first["seconds"]
        rerun = run_scorer(db, ckpt_path, work / "images", options)
        naive = naive_loop(files, checkpoint, device)

        if device.type == "cuda":
            bound, rule = min(decode, model), "min(decode, model)"
        else:
            bound, rule = 1 / (1 / decode + 1 / model), "1 / (1/decode + 1/model)"
        print(f"decode only       {decode:8.1f} img/s")
        print(f"model only        {model:8.1f} img/s")
        print(f"bound             {bound:8.1f} img/s   ({rule})")
        print(f"full pipeline     {pipeline:8.1f} img/s   = {pipeline / bound:.2f} of the bound "
              f"({first['scored']} scored in {first['seconds']:.1f} s: the whole run as cxr-score times it)")
        print(f"naive loop        {naive:8.1f} img/s   (same files; the pipeline is {pipeline / naive:.2f}x)")
        skip_seconds = rerun["phase_seconds"]["discover"] + rerun["phase_seconds"]["triage"]
        print(f"full pipeline     {first['scored'] / first['phase_seconds']['decode_and_score']:8.1f} img/s   "
              "(decoding and scoring phase alone, after triage)")
        print(f"incremental rerun {rerun['skipped'] / rerun['seconds']:8.1f} files/s skipped "
              f"({rerun['skipped']} in {rerun['seconds']:.2f} s: the whole run as cxr-score times it, "
              "after interpreter start-up and imports)")
        print(f"incremental rerun {rerun['skipped'] / skip_seconds:8.1f} files/s skipped "
              f"(walk + triage phases alone, {skip_seconds:.2f} s)")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
