"""DICOM networking on loopback: what ``cxr-receive`` takes in, and what pulling over DICOMweb adds per image.

N copies of the real CR film (Secondary Capture, Modality CR, JPEG baseline, 127 kB) are written with pydicom,
each with a fresh Study, Series and SOP Instance UID (one film per study, as a chest radiograph usually comes).

1. cxr-receive: the storage service in this process on a free loopback port with its default settings (max PDU
   64 KiB; every instance written to a .part file, fsynced and renamed, into a fresh folder), fed by pynetdicom's
   SCU, in this process too (the two share the GIL), over one association: seconds from the first C-STORE to the
   last status (all must be 0x0000); instances/s and MB/s of file bytes.
2. DICOMweb: the copies stored in Debian's Orthanc with its DICOMweb plugin; then ``cxr-score`` run as a
   subprocess (``python -m scoring``) with a user's defaults but ``--json``, the same random ResNet-18 at 224 px,
   each run with an empty CXR_HOME and database: over the folder of the copies (``--settle-seconds 0``) and with
   ``--dicomweb URL`` (QIDO-RS, WADO-RS into the cache, then scoring the cache), interleaved; then ``--dicomweb``
   again on the same home, which fetches nothing (QIDO-RS only). Reported per image: the pull phase, the run's own
   seconds (the summary's ``seconds``) and the process wall time, and the DICOMweb run minus the folder run.

Medians of --repeats. The machine may be shared: the load average is printed.

It imports the tests' Orthanc helper (``tests.scoring.orthanc``), so it runs as a module from the repository root:

    python -m benchmarks.bench_dicom_network [--instances 50] [--repeats 3] [--data DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from benchmarks.bench_score import make_checkpoint

FILM = Path("dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
CALLED, CALLING, USER, PASSWORD = "CXRREVIEW", "BENCH", "bench", "bench-pw"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=50, help="copies of the film (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_SHARED_DATA", "../shared/data")))
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-dicom-network-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    try:
        from tests.scoring.orthanc import DICOMWEB_PLUGIN, ORTHANC, running_orthanc
    except ModuleNotFoundError:
        print("cannot import tests.scoring.orthanc: run python -m benchmarks.bench_dicom_network from the "
              "repository root", file=sys.stderr)
        return 2
    if not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()):
        print(f"needs Debian's orthanc and orthanc-dicomweb ({ORTHANC}, {DICOMWEB_PLUGIN})", file=sys.stderr)
        return 2

    copies = make_copies(args.data / FILM, work / "copies", args.instances)
    file_bytes = sum(p.stat().st_size for p in copies)
    model = make_checkpoint(work / "resnet18-224.pt", "resnet18", 224)
    filesystem = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.split("\n")[1].split()
    print(f"{args.instances} copies of {FILM.name} ({file_bytes / 1e6:.2f} MB); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; temp folder {work} on {filesystem[0]} ({filesystem[1]})")

    receive = statistics.median(receive_seconds(copies, work / f"received-{r}") for r in range(args.repeats))
    scoring = scoring_runs(running_orthanc, copies, work, model, args.repeats)
    n = args.instances
    results = {
        "instances": n, "file_bytes": file_bytes, "filesystem": filesystem[1], "repeats": args.repeats,
        "receive": {"seconds": round(receive, 3), "instances_per_s": round(n / receive, 1),
                    "mb_per_s": round(file_bytes / 1e6 / receive, 2)},
        **scoring, "load_average": round(os.getloadavg()[0], 1),
    }
    print(f"\ncxr-receive, one association, {n} C-STOREs (median of {args.repeats}): {receive:.2f} s = "
          f"{n / receive:.1f} instances/s, {file_bytes / 1e6 / receive:.2f} MB/s (fsync per instance, "
          f"{filesystem[1]})\n")
    print(f"cxr-score, {n} images, ms per image (median of {args.repeats})  pull phase  run seconds (min-max)"
          f"  process wall")
    for name in ("folder", "dicomweb", "dicomweb_again", "overhead"):
        row = scoring[name]
        pull = "" if row.get("pull_ms") is None else f"{row['pull_ms']:.1f}"
        spread = f"({row['run_ms_range'][0]:.0f}-{row['run_ms_range'][1]:.0f})" if "run_ms_range" in row else ""
        print(f"  {name:<44}  {pull:>10}  {row['run_ms']:>7.1f} {spread:>13}  {row['wall_ms']:>12.1f}")
    print(f"  (dicomweb fetched {scoring['dicomweb']['fetched']} instances, "
          f"{scoring['dicomweb']['bytes'] / 1e6:.2f} MB; dicomweb_again fetched 0, "
          f"QIDO-only {scoring['dicomweb_again']['pull_seconds']:.2f} s in all)")
    if args.json:
        print(json.dumps(results))
    return 0


def make_copies(film: Path, folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(film)
    paths = []
    for i in range(count):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"{i:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def receive_seconds(paths: list[Path], folder: Path) -> float:
    from pynetdicom import AE

    from scoring.receive import ReceiverSettings, start_receiver

    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    receiver = start_receiver(ReceiverSettings(folder=folder, ae_title=CALLED, allowed_callers=(CALLING,), port=0,
                                               stop_grace_seconds=2))
    try:
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
        assert assoc.is_established, "the receiver refused the association"
        try:
            started = time.perf_counter()
            # A path, as storescu sends a file: pynetdicom sends its dataset bytes without decoding them.
            statuses = [assoc.send_c_store(path).Status for path in paths]
            seconds = time.perf_counter() - started
        finally:
            assoc.release()
    finally:
        receiver.stop()
    assert statuses == [0x0000] * len(paths), f"statuses {sorted(set(statuses))}"
    assert len(list(folder.glob("*/*.dcm"))) == len(paths)
    return seconds


def scoring_runs(running_orthanc, copies: list[Path], work: Path, model: Path, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"folder": [], "dicomweb": [], "dicomweb_again": []}
    with running_orthanc(work / "orthanc", dicomweb=True, users={USER: PASSWORD}) as orthanc:
        for path in copies:
            orthanc.store(path)
        # Interleaved, so that a change in the machine's load falls on both configurations alike.
        for r in range(repeats):
            runs["folder"].append(cxr_score(work / f"folder-{r}", model, "--settle-seconds", "0",
                                            str(copies[0].parent)))
            runs["dicomweb"].append(cxr_score(work / f"dicomweb-{r}", model, "--dicomweb", orthanc.dicomweb_url))
            runs["dicomweb_again"].append(cxr_score(work / f"dicomweb-{r}", model, "--dicomweb",
                                                    orthanc.dicomweb_url))
    n = len(copies)
    for summary in runs["folder"] + runs["dicomweb"]:
        assert summary["scored"] == n, summary
    for summary in runs["dicomweb"]:
        assert summary["dicomweb"]["fetched"] == n and summary["phase_seconds"]["dicomweb"] >= 0, summary
    for summary in runs["dicomweb_again"]:
        assert summary["dicomweb"]["fetched"] == 0 and summary["scored"] == 0, summary

    def per_image(name: str) -> dict:
        ms = lambda seconds: round(seconds * 1000 / n, 1)
        # phase_seconds.dicomweb is the pull's own dicomweb.seconds: QIDO-RS, WADO-RS and writing the cache
        pulls = [s["phase_seconds"]["dicomweb"] for s in runs[name] if "dicomweb" in s]
        seconds = [s["seconds"] for s in runs[name]]
        pulled = runs[name][0].get("dicomweb", {})
        return {"pull_ms": ms(statistics.median(pulls)) if pulls else None,
                "pull_seconds": statistics.median(pulls) if pulls else None,
                "run_ms": ms(statistics.median(seconds)), "run_ms_range": (ms(min(seconds)), ms(max(seconds))),
                "wall_ms": ms(statistics.median(s["wall"] for s in runs[name])),
                "fetched": pulled.get("fetched"), "bytes": pulled.get("bytes")}

    rows = {name: per_image(name) for name in runs}
    rows["overhead"] = {key: round(rows["dicomweb"][key] - rows["folder"][key], 1) for key in ("run_ms", "wall_ms")}
    return rows


def cxr_score(home: Path, model: Path, *args: str) -> dict:
    """One ``cxr-score --json`` process; its summary, with its wall time added."""
    env = {**os.environ, "CXR_HOME": str(home), "CXR_DICOMWEB_USER": USER, "CXR_DICOMWEB_PASSWORD": PASSWORD}
    for name in ("CXR_DB_URL", "CXR_DICOMWEB_TOKEN", "CXR_DICOMWEB_CREDENTIALS"):  # CXR_HOME's database; basic auth
        env.pop(name, None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scoring", "--model", str(model), "--json", *args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    assert done.returncode == 0, f"cxr-score exited {done.returncode}\n{done.stderr[-3000:]}"
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


if __name__ == "__main__":
    raise SystemExit(main())
