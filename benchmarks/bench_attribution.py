"""Attribution speed: ResNet-18 at 224 px on this machine's CPU.

Prints the median seconds of single-image Grad-CAM, Integrated Gradients (50 steps) and Occlusion (32 px window,
16 px stride), the Grad-CAM images per second of the nightly precompute (a real ``cxr-score --attributions
gradcam`` run over N cxr-dev films: reading, batched Grad-CAM, writing and recording every map), and the
milliseconds to load a cached map; then single-image Grad-CAM and the cached load for a full-size film
(pydicom-data's RG1_UNCR, 1955x1841), where upsampling the map to the original geometry and the map file's size
count. Weights do not change the speed: without --model a random ResNet-18 is used.

    python benchmarks/bench_attribution.py [--model CKPT] [--images N] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up: model build, first-call allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a checkpoint (default: a random ResNet-18 at 224 px)")
    parser.add_argument("--images", type=int, default=64, help="films for the nightly precompute (default 64)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_SHARED_DATA", "../shared/data")))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-attribution-"))
    os.environ["CXR_HOME"] = str(work / "home")
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    from scoring.attribution import compute_map, load_or_compute
    from scoring.imaging import read_xray
    from scoring.model import Checkpoint, Preprocessing, build_model, save_checkpoint
    from scoring.run import ScoringRequest, run_scoring

    model = args.model
    if model is None:
        torch.manual_seed(0)
        model = save_checkpoint(work / "resnet18-224.pt", Checkpoint(
            "resnet18", ["covid", "normal", "pneumonia"], Preprocessing(224), build_model("resnet18", 3).state_dict(),
            training={"name": "bench"}))
    films = sorted((args.data / "cxr-dev").glob("*/*.png"))
    pixels = read_xray(films[0]).pixels
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; film "
          f"{pixels.shape[1]}x{pixels.shape[0]}; model {model.name}")
    for method, repeats, params in (("gradcam", 9, {}), ("integrated_gradients", 3, {"steps": 50}),
                                    ("occlusion", 3, {})):
        seconds = median_seconds(lambda m=method, p=params: compute_map(model, pixels, m, "covid", **p), repeats)
        print(f"single-image {method}: {seconds:.3f} s (median of {repeats})")

    incoming = work / "incoming"
    incoming.mkdir()
    for path in films[::max(1, len(films) // args.images)][:args.images]:
        shutil.copy2(path, incoming / path.name)
    db_url = f"sqlite:///{work / 'bench.db'}"
    summary = run_scoring(ScoringRequest(paths=(str(incoming),), db_url=db_url, model=model, settle_seconds=0,
                                         attributions=("gradcam",), attributions_top=args.images))
    gradcam = summary.attributions["gradcam"]
    print(f"nightly precompute: {gradcam['computed']} Grad-CAM maps in {gradcam['seconds']:.2f} s = "
          f"{gradcam['computed'] / gradcam['seconds']:.1f} images/s (read, batched Grad-CAM, store, record)")

    from db.engine import get_engine, read_session
    from db.models import AttributionCacheEntry

    engine = get_engine(db_url)
    with read_session(engine) as session:
        entry = session.query(AttributionCacheEntry).first()
    seconds = median_seconds(lambda: load_or_compute(engine, entry.image_id, summary.model_version_id, "gradcam",
                                                     entry.target_class), 20)
    print(f"cached map load: {seconds * 1000:.1f} ms (median of 20, a {pixels.shape[1]}x{pixels.shape[0]} film)")
    full_size_film(engine, db_url, model, work)
    return 0


def full_size_film(engine, db_url: str, model: Path, work: Path) -> None:
    from pydicom.data import get_testdata_file

    from db.engine import read_session
    from db.models import AttributionCacheEntry, Image
    from scoring.attribution import compute_map, load_or_compute
    from scoring.imaging import read_xray
    from scoring.run import ScoringRequest, run_scoring

    found = get_testdata_file("RG1_UNCR.dcm")
    if found is None:
        print("full-size film: pydicom-data is not installed (pip install -r requirements-dev.txt); skipped")
        return
    film = work / "full-size" / "RG1_UNCR.dcm"
    film.parent.mkdir()
    shutil.copy2(found, film)
    pixels = read_xray(film).pixels
    seconds = median_seconds(lambda: compute_map(model, pixels, "gradcam", "covid"), 5)
    print(f"single-image gradcam, {pixels.shape[1]}x{pixels.shape[0]} film: {seconds:.3f} s (median of 5)")
    summary = run_scoring(ScoringRequest(paths=(str(film.parent),), db_url=db_url, model=model, settle_seconds=0,
                                         attributions=("gradcam",), attributions_top=1))
    with read_session(engine) as session:
        image_id = session.query(Image.id).filter(Image.path == str(film.resolve())).scalar()
        entry = session.query(AttributionCacheEntry).filter_by(image_id=image_id).first()
    map_file = Path(os.environ["CXR_HOME"]) / entry.storage_path
    seconds = median_seconds(lambda: load_or_compute(engine, image_id, summary.model_version_id, "gradcam",
                                                     entry.target_class), 20)
    print(f"cached map load, {pixels.shape[1]}x{pixels.shape[0]} film: {seconds * 1000:.1f} ms (median of 20; "
          f"map file {map_file.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    raise SystemExit(main())
