"""What scoring a challenger in the shadow costs the nightly run (issue 20: at most one extra model pass per
challenger and image, the decode shared).

The real ``cxr-score`` command with its defaults, on a folder of real films, twice per repeat on a fresh database
each time: the active version alone, and the active version with ``--challengers`` challengers (registered and
marked as ``cxr-train challenge`` does). The two kinds of run alternate, so a change in the machine's load falls
on both. Reported from each run's own JSON summary: wall seconds, the decode-and-score phase, every version's
model seconds and images scored; then, over the repeats, the medians and

- the extra wall seconds per image and challenger;
- each challenger's model seconds over the active version's in the same run (1.0: one model pass per image, as
  many as the active version's);
- the images each model scored (every challenger must have scored every image the active version scored).

How often a file is decoded is a test's business (``tests/scoring/test_shadow.py`` counts the decodes); this
measures the time.

    python benchmarks/bench_shadow.py --active V1.pt --challenger V2.pt --data ../shared/data/cxr-adult
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from db import migrate
from db.engine import create_database_engine, write_session
from db.model_versions import promote, register_checkpoint, set_challenger
from scoring.model import checkpoint_sha256, load_checkpoint

SHARED = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def prepared_database(folder: Path, active: Path, challengers: list[Path]) -> str:
    """A fresh database with ``active`` active and ``challengers`` marked, as the CLI leaves them."""
    url = f"sqlite:///{folder / 'cxr.db'}"
    engine = create_database_engine(url)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        promote(session, str(register_checkpoint(session, active, load_checkpoint(active),
                                                 checkpoint_sha256(active)).id))
        for path in challengers:
            version = register_checkpoint(session, path, load_checkpoint(path), checkpoint_sha256(path))
            set_challenger(session, str(version.id), True)
    engine.dispose()
    return url


def scoring_run(url: str, data: Path) -> dict:
    """``cxr-score DATA --json`` with its defaults: the JSON summary and the wall seconds of the command."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scoring", str(data), "--db", url, "--settle-seconds", "0", "--json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"cxr-score exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    active = str(summary["model_version_id"])
    return {"wall": round(wall, 2), "active": active, "decode_and_score": summary["phase_seconds"]["decode_and_score"],
            "model_seconds": summary["phase_seconds"]["model"], "scored": summary["scored"],
            "challengers": {str(c["model_version_id"]): {"scored": c["scored"], "unavailable": c["unavailable"]}
                            for c in summary["challengers"]}}


def measure(active: Path, challengers: list[Path], data: Path, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"alone": [], "shadow": []}
    for repeat in range(repeats):
        order = ("alone", "shadow") if repeat % 2 == 0 else ("shadow", "alone")
        for kind in order:
            with tempfile.TemporaryDirectory(prefix="cxr-bench-shadow-") as folder:
                url = prepared_database(Path(folder), active, challengers if kind == "shadow" else [])
                runs[kind].append(scoring_run(url, data))
            print(f"repeat {repeat + 1} {kind}: {json.dumps(runs[kind][-1])}", file=sys.stderr)
    return {"runs": runs, "summary": summarise(runs, len(challengers))}


def summarise(runs: dict[str, list[dict]], challengers: int) -> dict:
    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[kind])

    images = runs["alone"][0]["scored"]
    ratios = [seconds / run["model_seconds"][run["active"]] for run in runs["shadow"]
              for version, seconds in run["model_seconds"].items() if version != run["active"]]
    return {"images": images, "challengers": challengers,
            "wall_alone": median("alone", "wall"), "wall_shadow": median("shadow", "wall"),
            "decode_and_score_alone": median("alone", "decode_and_score"),
            "decode_and_score_shadow": median("shadow", "decode_and_score"),
            "model_alone": statistics.median(run["model_seconds"][run["active"]] for run in runs["alone"]),
            "extra_wall_ms_per_image_and_challenger": round(
                1000 * (median("shadow", "wall") - median("alone", "wall")) / images / challengers, 2),
            "challenger_model_over_active": round(statistics.median(ratios), 3),
            "every_image_scored_by_every_challenger": all(
                entry["scored"] == run["scored"] and entry["unavailable"] is None
                for run in runs["shadow"] for entry in run["challengers"].values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--active", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--challenger", type=Path, action="append", required=True, metavar="CKPT",
                        help="a challenger's checkpoint (repeat for more)")
    parser.add_argument("--data", type=Path, default=SHARED / "cxr-adult", help="folder of films (default: cxr-adult)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    results = measure(args.active, args.challenger, args.data, args.repeats)
    results["load_before"], results["load_after"], results["cpus"] = load, os.getloadavg(), os.cpu_count()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    s = results["summary"]
    print(f"{s['images']} images, {s['challengers']} challenger(s), medians of {args.repeats} runs each "
          f"(load {load[0]:.1f} -> {results['load_after'][0]:.1f} on {results['cpus']} CPUs):\n"
          f"  wall: alone {s['wall_alone']:.1f} s, with the challenger(s) {s['wall_shadow']:.1f} s: "
          f"+{s['extra_wall_ms_per_image_and_challenger']:.1f} ms per image and challenger\n"
          f"  decode and score: alone {s['decode_and_score_alone']:.1f} s, with {s['decode_and_score_shadow']:.1f} s; "
          f"the active model alone {s['model_alone']:.1f} s\n"
          f"  a challenger's model time over the active version's in the same run: "
          f"{s['challenger_model_over_active']:.2f} (1.00 = one model pass per image)\n"
          f"  every image scored by every challenger: {s['every_image_scored_by_every_challenger']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
