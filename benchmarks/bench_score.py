"""Scoring throughput, measured in one run on the same files.

Replicates the real PNGs and DICOMs (cxr-dev, the shared DICOMs, pydicom-data's RG1 chest in three encodings)
into a few thousand files whose bytes all differ (so none is skipped as a duplicate), then reports images per
second for:

- decode only: the scorer's DataLoader (read + scope check + preprocess) with all its workers, no model;
- model only: random tensors of the same batch size through the same model;
- the full pipeline: ``cxr-score`` on a fresh database (triage, hashing, decoding, model, commits);
- a naive loop like the seed notebooks: read one image, preprocess, ``model(x[None])`` (float32, default
  memory format), one ORM insert of the image and its prediction and a commit, over the same files;
- an incremental rerun over the already-scored files (files skipped per second);
- the scoring process's own cost per image: real batches from the scorer's DataLoader, decoded once and kept
  in memory, fed by a stand-in loader to the code the scorer runs after the DataLoader (results, database
  writes on a fresh SQLite database, the writer thread), with the model replaced by fixed probabilities; once
  in this process and once received from a DataLoader worker (pickling and shared memory included). Its
  inverse is the ceiling the scoring process puts on any pipeline. ``--profile`` adds a cProfile of it.

The bound for the pipeline is 1 / (decode s/img + model s/img) on a CPU, where both stages share the cores,
and the slower stage's rate on a GPU, where they overlap.

    python benchmarks/bench_score.py --files 2400

With ``--archive DIR`` (an archive from ``benchmarks/make_archive.py``) it measures full-size films instead:
per encoding, pydicom's own full decode (``dcmread().pixel_array`` with its installed plugins, Pillow for PNG: the
baseline the archive goals name) and the reader's model-input reads per second (in this process, one file at a
time) with a full decode and with the reduced one (``min_side`` = 2 x the model's input side), and how far the two
model inputs differ; RG1_J2KR through the isolated reader; then for the whole mix, decode only (pydicom's own
decode through a DataLoader with the same workers, and the scorer's DataLoader, reduced and full), model only, the
bound, the full pipeline (reduced, as ``cxr-score`` runs) and the naive loop (full decode per image, like the seed
notebooks).

    python benchmarks/make_archive.py 100 /tmp/cxr-archive
    python benchmarks/bench_score.py --archive /tmp/cxr-archive
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import itertools
import json
import os
import platform
import pstats
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
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader, Dataset

from db import migrate, model_versions, results
from db.engine import create_database_engine, write_session
from db.hashing import file_sha256
from db.models import Image, Prediction
from db.results import FileStat
from scoring import imaging
from scoring.decoding import DecodedBatch, collate_decoded
from scoring.dicom_encoding import htj2k_copy
from scoring.model import (
    Checkpoint,
    Preprocessing,
    build_model,
    checkpoint_sha256,
    load_checkpoint,
    normalised_entropy,
    preprocess,
    save_checkpoint,
)
from scoring.pipeline import Counts, Job, ScoringOptions, ScoringPass, make_loader
from scoring.run import default_workers
from scoring.scorer import Scorer

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
    return decode_rates(files, checkpoint, options)[0]


def decode_rates(files: list[Path], checkpoint: Checkpoint, options: ScoringOptions) -> tuple[float, float]:
    """Images per second through the scorer's DataLoader: over the whole loader (its workers' and their decoder
    children's start included), and from the first batch's arrival to the last (the rate a long run settles at)."""
    jobs = [Job(FileStat(str(p), 0, 0), "") for p in files]
    start = time.perf_counter()
    n = first_n = 0
    first_at = None
    for batch in make_loader(jobs, checkpoint, options):
        n += len(batch.items)
        if first_at is None:
            first_at, first_n = time.perf_counter(), n
    end = time.perf_counter()
    return n / (end - start), (n - first_n) / (end - first_at) if n > first_n else float("nan")


# --- the scoring process's own cost: a stand-in loader ----------------------------------------------------

class StandInScorer:
    """The model's place taken by fixed probabilities: what is timed is the scoring process's own work."""

    def __init__(self, checkpoint: Checkpoint, batch_size: int):
        torch.manual_seed(0)
        self.checkpoint = checkpoint
        self.rows = torch.softmax(torch.randn(batch_size, len(checkpoint.classes)), dim=-1)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return self.rows[:len(batch)]


class ReplayDataset(Dataset):
    """Pre-decoded samples (tensor, item) served again, for a DataLoader worker that does no decoding."""

    def __init__(self, samples: list[tuple[torch.Tensor | None, tuple]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...] | None, tuple]:
        tensor, item = self.samples[index]
        return (tensor,) if tensor is not None else None, (index, *item[1:])


def predecoded_samples(files: list[Path], checkpoint: Checkpoint, options: ScoringOptions,
                       n_images: int) -> list[tuple[torch.Tensor | None, tuple]]:
    """``n_images`` (tensor, item) samples decoded once by the scorer's DataLoader, cycling through ``files``."""
    jobs = [Job(FileStat(str(p), 0, 0), "") for p in files[:n_images]]
    decoded: list[tuple[torch.Tensor | None, tuple]] = []
    for batch in make_loader(jobs, checkpoint, options):
        pixels = iter(batch.pixels.clone() if batch.pixels is not None else ())
        decoded += [(next(pixels) if item[1] is None and item[3][0] else None, item) for item in batch.items]
    return list(itertools.islice(itertools.cycle(decoded), n_images))


def replayed_batches(samples: list[tuple[torch.Tensor | None, tuple]], batch_size: int) -> list[DecodedBatch]:
    """The samples as the scorer's batches, built before any timing starts."""
    indexed = ReplayDataset(samples)
    return [collate_decoded([indexed[i] for i in range(start, min(start + batch_size, len(samples)))])
            for start in range(0, len(samples), batch_size)]


def fresh_scoring_pass(db: str, ckpt_path: Path, checkpoint: Checkpoint, options: ScoringOptions) -> ScoringPass:
    engine = create_database_engine(db)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        version = model_versions.register_checkpoint(session, ckpt_path, checkpoint, checkpoint_sha256(ckpt_path))
        run_id = results.start_run(session, {"bench": "stand-in"}, version.id, os.getpid()).id
    scorer = StandInScorer(checkpoint, options.batch_size)
    return ScoringPass(engine, scorer, version.id, run_id, options, Counts())  # type: ignore[arg-type]


def stand_in_jobs(n: int) -> list[Job]:
    return [Job(FileStat(f"/stand-in/{i:06d}.png", 1000 + i, i), f"{i:064x}") for i in range(n)]


def main_process_seconds(work: Path, name: str, ckpt_path: Path, checkpoint: Checkpoint, options: ScoringOptions,
                         batches, n_images: int, profile: bool = False) -> float:
    """Seconds for the scoring process to take ``batches`` through results and database writes, until every
    batch is committed; with ``profile``, prints where the time goes (this thread, then the writer thread)."""
    scoring_pass = fresh_scoring_pass(f"sqlite:///{work / f'{name}.db'}", ckpt_path, checkpoint, options)
    jobs = stand_in_jobs(n_images)
    profiles = (cProfile.Profile(), cProfile.Profile()) if profile else None
    if profiles is not None:
        store = scoring_pass._store

        def profiled_store(batch) -> None:
            profiles[1].enable()
            try:
                store(batch)
            finally:
                profiles[1].disable()

        scoring_pass._store = profiled_store  # type: ignore[method-assign]
        profiles[0].enable()
    start = time.perf_counter()
    scoring_pass.run_batches(jobs, batches)
    seconds = time.perf_counter() - start
    if profiles is not None:
        profiles[0].disable()
        for title, profiler in zip(("scoring thread", "writer thread"), profiles, strict=True):
            print_profile(title, profiler)
    if scoring_pass.counts.scored + scoring_pass.counts.out_of_scope + scoring_pass.counts.failed != n_images:
        raise SystemExit(f"the stand-in run stored {scoring_pass.counts} for {n_images} images")
    return seconds


def print_profile(title: str, profiler: cProfile.Profile, top: int = 14) -> None:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print(f"cProfile, {title} (by own time; the profiler inflates the figures):")
    for line in lines[start:]:
        print("   " + line[:150])


def main_process_figures(files: list[Path], work: Path, ckpt_path: Path, checkpoint: Checkpoint,
                         options: ScoringOptions, n_images: int, profile: bool) -> None:
    """The scoring process's own cost per image, the model excluded; prints it and the ceiling it implies."""
    cpu = ScoringOptions(batch_size=options.batch_size, workers=options.workers, precision=options.precision)
    samples = predecoded_samples(files, checkpoint, cpu, min(n_images, 256))
    samples = list(itertools.islice(itertools.cycle(samples), n_images))
    batches = replayed_batches(samples, options.batch_size)
    main_process_seconds(work, "warm-up", ckpt_path, checkpoint, cpu, batches[:4], 4 * options.batch_size)
    in_process = main_process_seconds(work, "stand-in", ckpt_path, checkpoint, cpu, batches, n_images)
    received = main_process_seconds(work, "stand-in-worker", ckpt_path, checkpoint, cpu,
                                    DataLoader(ReplayDataset(samples), batch_size=options.batch_size, num_workers=1,
                                               collate_fn=collate_decoded, prefetch_factor=4), n_images)
    for label, seconds in (("batches in this process", in_process), ("batches from a worker", received)):
        ms = 1000 * seconds / n_images
        print(f"main-process ms per image  {ms:6.3f} ms   = a ceiling of {1000 / ms:8.0f} img/s   "
              f"({label}; stand-in loader, model excluded, {n_images} images, SQLite)")
    if profile:
        main_process_seconds(work, "profiled", ckpt_path, checkpoint, cpu, batches, n_images, profile=True)


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


def naive_loop(files: list[Path], checkpoint: Checkpoint, device: torch.device, db: str,
               ckpt_path: Path) -> float:
    """The seed notebooks' way: per image, read, preprocess, ``model(x[None])``, one ORM insert and a commit."""
    engine = create_database_engine(db)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        version_id = model_versions.register_checkpoint(session, ckpt_path, checkpoint,
                                                        checkpoint_sha256(ckpt_path)).id
    model = checkpoint.build().to(device)
    start = time.perf_counter()
    with torch.inference_mode(), Session(engine) as session:
        for path in files:
            try:
                image = imaging.read_xray(path, timeout=None)
            except imaging.XRayReadError:
                continue
            x = checkpoint.preprocessing(image.pixels).to(device)
            p = torch.softmax(model(x[None]), dim=-1)[0].cpu()
            best = int(p.argmax())
            row = Image(sha256=file_sha256(path), path=str(path), size_bytes=path.stat().st_size,
                        mtime=path.stat().st_mtime, format=image.meta["format"], rows=image.meta["rows"],
                        cols=image.meta["cols"], in_scope=True, scope_reason="naive")
            session.add(row)
            session.flush()
            session.add(Prediction(image_id=row.id, model_version_id=version_id,
                                   probabilities={c: float(v) for c, v in zip(checkpoint.classes, p, strict=True)},
                                   predicted_class=checkpoint.classes[best], confidence=float(p[best]),
                                   entropy=float(normalised_entropy(p))))
            session.commit()
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


def library_decode(path: Path) -> tuple[int, ...]:
    """A full decode as the libraries give it: ``pydicom.dcmread(path).pixel_array`` with pydicom's installed
    plugins (GDCM for lossless JPEG, pylibjpeg-openjpeg for JPEG 2000 and HTJ2K, ...), Pillow for a PNG; no checks,
    no display transform, no preprocessing, no isolation. The baseline the archive goals name; returns the shape."""
    if path.suffix.lower() == ".png":
        with PILImage.open(path) as image:
            return np.asarray(image).shape
    return pydicom.dcmread(path).pixel_array.shape


def library_reads_per_second(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        library_decode(path)
    return len(paths) / (time.perf_counter() - start)


class LibraryDecodeDataset(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, ...]:
        return library_decode(self.files[index])


def library_decode_rate(files: list[Path], options: ScoringOptions) -> float:
    """Images per second of :func:`library_decode` through a DataLoader with the scorer's workers and batch size."""
    loader = DataLoader(LibraryDecodeDataset(files), batch_size=options.batch_size, num_workers=options.workers,
                        collate_fn=list)
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    return n / (time.perf_counter() - start)


def input_difference(path: Path, size: int) -> tuple[float, float]:
    """Mean and largest absolute difference of the model inputs, reduced vs full decode, in reader units."""
    full = preprocess(imaging.read_xray(path, timeout=None).pixels, size)
    image = imaging.read_xray(path, timeout=None, min_side=2 * size)
    reduced = preprocess(image.pixels, size, source_shape=image.stored_shape)
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

    print("\nper encoding, model-input reads/s in this process (read_xray, timeout=None), one file at a time, and "
          "pydicom's own full decode (dcmread().pixel_array; Pillow for PNG):")
    print(f"{'encoding':20s} {'files':>5s} {'pydicom':>8s} {'full':>8s} {'reduced':>8s} {'speed-up':>8s} "
          f"{'mean diff':>9s} {'max diff':>8s}")
    for paths in by_encoding.values():  # warm-up: codec imports and first-call costs are not measured
        library_reads_per_second(paths[:1])
        reads_per_second(paths[:1], None)
        reads_per_second(paths[:1], min_side)
    full_seconds = library_seconds = 0.0
    for encoding, paths in sorted(by_encoding.items()):
        library = library_reads_per_second(paths)
        library_seconds += len(paths) / library
        full = reads_per_second(paths, None)
        full_seconds += len(paths) / full
        reduced = reads_per_second(paths, min_side)
        differences = [input_difference(p, args.size) for p in paths]
        print(f"{encoding:20s} {len(paths):5d} {library:8.2f} {full:8.2f} {reduced:8.2f} {reduced / full:7.1f}x "
              f"{np.mean([d[0] for d in differences]):9.4f} {max(d[1] for d in differences):8.4f}")
    rg1 = [Path(get_testdata_file("RG1_J2KR.dcm"))]
    full, reduced = reads_per_second(rg1, None, 30.0, 5), reads_per_second(rg1, min_side, 30.0, 5)
    print(f"RG1_J2KR, isolated reader (default), 5 reads: full {full:.2f} reads/s, reduced {reduced:.2f} reads/s "
          f"({reduced / full:.1f}x)")
    rg1 = [htj2k_copy(Path(get_testdata_file("RG1_UNCR.dcm")), work / "RG1_HTJ2K.dcm")]
    full, reduced = reads_per_second(rg1, None, 30.0, 5), reads_per_second(rg1, min_side, 30.0, 5)
    print(f"RG1 as HTJ2K lossless, isolated reader, 5 reads: full {full:.2f} reads/s, reduced {reduced:.2f} reads/s "
          f"({reduced / full:.1f}x)")
    one_thread_full = len(files) / full_seconds
    one_thread_library = len(files) / library_seconds

    full_options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                                  precision=args.precision, reduced_decode=False)
    options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                             precision=args.precision)
    decode_library = library_decode_rate(files, options)
    decode_full, settled_full = decode_rates(files, checkpoint, full_options)
    decode, settled = decode_rates(files, checkpoint, options)
    model = model_only(checkpoint, options, min(len(files) * 4, 1024))
    first = run_scorer(f"sqlite:///{work / 'bench.db'}", ckpt_path, archive, options)
    pipeline = first["scored"] / first["seconds"]
    naive = naive_loop(files, checkpoint, device, f"sqlite:///{work / 'naive.db'}", ckpt_path)
    if device.type == "cuda":
        bound, rule = min(decode, model), "min(decode, model)"
    else:
        bound, rule = 1 / (1 / decode + 1 / model), "1 / (1/decode + 1/model)"
    print("\nthe mix:")
    print(f"decode only, pydicom  {decode_library:8.2f} img/s   (DataLoader, pydicom's own full decode alone: "
          "dcmread().pixel_array, Pillow for PNG)")
    print(f"decode only, full     {decode_full:8.2f} img/s   (DataLoader, read_xray without min_side: the reader's "
          "faster codecs, its checks, display transform and preprocessing)")
    print(f"decode only, reduced  {decode:8.2f} img/s   ({decode / decode_full:.2f}x the reader's full decode, "
          f"{decode / decode_library:.2f}x pydicom's)")
    print(f"after the first batch {settled_full:8.2f} / {settled:.2f} img/s full / reduced "
          f"({settled / settled_full:.2f}x; the workers' start left out: the rate a long run settles at)")
    print(f"model only            {model:8.2f} img/s")
    print(f"bound                 {bound:8.2f} img/s   ({rule})")
    print(f"full pipeline         {pipeline:8.2f} img/s   = {pipeline / bound:.2f} of the bound "
          f"({first['scored']} scored in {first['seconds']:.1f} s: the whole run as cxr-score times it)")
    print(f"full pipeline         {first['scored'] / first['phase_seconds']['decode_and_score']:8.2f} img/s   "
          "(decoding and scoring phase alone, after triage)")
    print(f"naive loop            {naive:8.2f} img/s   "
          f"(full decode, one ORM insert + commit per image; the pipeline is {pipeline / naive:.1f}x)")
    print(f"one-thread full decode {one_thread_full:7.2f} img/s   (read_xray in one process without min_side, the "
          f"per-encoding reads above; the pipeline is {pipeline / one_thread_full:.2f}x)")
    print(f"one-thread pydicom    {one_thread_library:8.2f} img/s   (pydicom's own full decode in one process, the "
          f"per-encoding reads above; the pipeline is {pipeline / one_thread_library:.2f}x)")
    main_process_figures(files, work, ckpt_path, checkpoint, options, args.stand_in_images, args.profile)
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
    parser.add_argument("--workers", type=int, help="decode workers (default: scoring.run.default_workers)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--archive", type=Path, help="an archive from make_archive.py: full-size film figures")
    parser.add_argument("--stand-in-images", type=int, default=2400,
                        help="images fed by the stand-in loader for the main-process figure")
    parser.add_argument("--profile", action="store_true", help="cProfile the stand-in run")
    parser.add_argument("--main-process-only", action="store_true",
                        help="only the main-process figure (on --files files, or on --archive)")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = default_workers(torch.device(args.device))

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    os.environ["CXR_HOME"] = str(work / "home")
    try:
        if args.archive is not None and not args.main_process_only:
            archive_figures(args.archive, work, args)
            return 0
        if args.archive is not None:
            files = [args.archive / row["file"] for row in csv.DictReader((args.archive / "manifest.csv").open())]
        else:
            files = replicate(source_files(args.shared), args.files, work / "images")
        ckpt_path = make_checkpoint(work / "model.pt", args.arch, args.size)
        checkpoint = load_checkpoint(ckpt_path)
        device = torch.device(args.device)
        options = ScoringOptions(batch_size=args.batch_size, workers=args.workers, device=device,
                                 precision=args.precision)
        if device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        if args.main_process_only:
            print(f"hardware: {hardware()}; load average {os.getloadavg()[0]:.2f} at the start")
            main_process_figures(files, work, ckpt_path, checkpoint, options, args.stand_in_images, args.profile)
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
            return 0
        print(f"hardware: {hardware()}; load average {os.getloadavg()[0]:.2f} at the start")
        print(f"files: {len(files)} ({sum(p.suffix == '.dcm' for p in files)} DICOM), model {args.arch} at "
              f"{args.size} px, batch {args.batch_size}, {args.workers} decode workers, device {device}, "
              f"precision {args.precision}")

        decode = decode_only(files, checkpoint, options)
        model = model_only(checkpoint, options, min(len(files), 1024))
        db = f"sqlite:///{work / 'bench.db'}"
        first = run_scorer(db, ckpt_path, work / "images", options)
        pipeline = first["scored"] / first["seconds"]
        rerun = run_scorer(db, ckpt_path, work / "images", options)
        naive = naive_loop(files, checkpoint, device, f"sqlite:///{work / 'naive.db'}", ckpt_path)

        if device.type == "cuda":
            bound, rule = min(decode, model), "min(decode, model)"
        else:
            bound, rule = 1 / (1 / decode + 1 / model), "1 / (1/decode + 1/model)"
        print(f"decode only       {decode:8.1f} img/s")
        print(f"model only        {model:8.1f} img/s")
        print(f"bound             {bound:8.1f} img/s   ({rule})")
        print(f"full pipeline     {pipeline:8.1f} img/s   = {pipeline / bound:.2f} of the bound "
              f"({first['scored']} scored in {first['seconds']:.1f} s: the whole run as cxr-score times it)")
        print(f"naive loop        {naive:8.1f} img/s   (same files, one ORM insert + commit per image; "
              f"the pipeline is {pipeline / naive:.2f}x)")
        skip_seconds = rerun["phase_seconds"]["discover"] + rerun["phase_seconds"]["triage"]
        print(f"full pipeline     {first['scored'] / first['phase_seconds']['decode_and_score']:8.1f} img/s   "
              "(decoding and scoring phase alone, after triage)")
        print(f"incremental rerun {rerun['skipped'] / rerun['seconds']:8.1f} files/s skipped "
              f"({rerun['skipped']} in {rerun['seconds']:.2f} s: the whole run as cxr-score times it, "
              "after interpreter start-up and imports)")
        print(f"incremental rerun {rerun['skipped'] / skip_seconds:8.1f} files/s skipped "
              f"(walk + triage phases alone, {skip_seconds:.2f} s)")
        main_process_figures(files, work, ckpt_path, checkpoint, options, args.stand_in_images, args.profile)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
