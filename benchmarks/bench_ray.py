"""The Ray engine against the local engine on this machine: ``cxr-score`` throughput, and Ray's cost per image.

N copies of the cxr-dev PNGs and the shared and pydicom-data CR films (``bench_score.replicate``: unique bytes,
identical pixels), a random ResNet-18 at 224 px, ``cxr-score`` run as a user runs it (a subprocess, default options
but ``--json``), each run on a fresh SQLite database:

- the local engine, on 1 core (``taskset -c 0``) and on every core;
- the Ray engine joining a Ray head started for it with ``ray start --head --num-cpus C`` (C = 1, then every
  core), so the figures include what a cluster run pays: the driver's connection, the actors' start, the transfer
  of each decoded batch to the model actor and of its results to the driver.

Reported: images per second of the whole run (the summary's ``seconds``) and of its decoding and scoring phase,
and Ray's cost per image against the local engine on the same CPUs, (1/ray - 1/local) in milliseconds.

    python benchmarks/bench_ray.py [--files 480] [--shared DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_score import hardware, make_checkpoint, replicate, source_files

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list[str], env: dict[str, str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def score(folder: Path, model: Path, db: Path, env: dict[str, str], *extra: str, cores: str | None = None) -> dict:
    command = [sys.executable, "-m", "scoring", "--db", f"sqlite:///{db}", "--model", str(model), "--json",
               "--settle-seconds", "0", *extra, str(folder)]
    summary = run(["taskset", "-c", cores, *command] if cores else command, env)
    return {"scored": summary["scored"], "seconds": summary["seconds"],
            "phase_seconds": summary["phase_seconds"]["decode_and_score"]}


def ray_head(cpus: int, env: dict[str, str]) -> str:
    """A Ray head of ``cpus`` CPUs on this machine; the address its drivers use ("auto": this machine's head, with
    the token ``ray start`` wrote)."""
    subprocess.run(["ray", "start", "--head", f"--num-cpus={cpus}", "--num-gpus=0", f"--port={free_port()}",
                    "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True, capture_output=True)
    return "auto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=480)
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    if shutil.which("ray") is None:
        raise SystemExit('needs the ray extra: pip install -e ".[ray]"')
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-ray-"))
    env = {**os.environ, "CXR_HOME": str(work / "home"), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("CXR_DB_URL", None)
    cores = os.cpu_count() or 1
    figures: dict[str, dict] = {}
    try:
        folder = work / "images"
        replicate(source_files(args.shared), args.files, folder)
        model = make_checkpoint(work / "model.pt", "resnet18", 224)
        print(f"hardware: {hardware()}; load average {os.getloadavg()[0]:.2f} at the start")
        print(f"{args.files} files, ResNet-18 at 224 px, cxr-score's defaults (batch 32)")
        for cpus in sorted({1, cores}):
            figures[f"local_{cpus}"] = score(folder, model, work / f"local-{cpus}.db", env,
                                             cores="0" if cpus == 1 else None)
            address = ray_head(cpus, env)
            try:
                figures[f"ray_{cpus}"] = score(folder, model, work / f"ray-{cpus}.db", env, "--engine", "ray",
                                               "--ray-address", address)
            finally:
                subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, check=False)
        print(f"\n{'engine, CPUs':16s} {'img/s (run)':>12s} {'img/s (phase)':>14s} {'Ray ms/image':>13s}")
        for cpus in sorted({1, cores}):
            local, ray = figures[f"local_{cpus}"], figures[f"ray_{cpus}"]
            for entry in (local, ray):
                entry["per_second"] = round(entry["scored"] / entry["seconds"], 2)
                entry["phase_per_second"] = round(entry["scored"] / entry["phase_seconds"], 2)
            ray["overhead_ms"] = round(1000 * (1 / ray["per_second"] - 1 / local["per_second"]), 1)
            ray["phase_overhead_ms"] = round(1000 * (1 / ray["phase_per_second"] - 1 / local["phase_per_second"]), 1)
            print(f"{f'local, {cpus}':16s} {local['per_second']:12.2f} {local['phase_per_second']:14.2f}")
            print(f"{f'ray, {cpus}':16s} {ray['per_second']:12.2f} {ray['phase_per_second']:14.2f} "
                  f"{ray['overhead_ms']:8.1f} run, {ray['phase_overhead_ms']:.1f} phase")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        if args.json:
            print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
