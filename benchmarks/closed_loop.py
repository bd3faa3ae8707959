"""The closed loop on real data (issue 11): does a version retrained on reviewers' corrections beat the one it
replaces on a new adult site?

1. v1 = ``cxr-train train`` on cxr-dev (or ``--v1 PATH``).
2. cxr-adult is split by patient, stratified by class, into a *reviewed* part and an *evaluation* part, once per
   ``--seeds``. The one ``normal`` film of cxr-adult always goes to the reviewed part (``patient_split`` keeps the
   last patient of every class in its first part, and this script checks it): a reviewer reads it and it trains
   v2 as a normal, while the evaluation part holds covid and pneumonia only, so its balanced accuracy is the mean
   of the covid and pneumonia recalls and its normal AUROC is undefined (reported as n/a).
3. The reviewed part is scored with the real scorer (``cxr-score``) into a fresh SQLite database, v1 promoted
   (``cxr-train promote``); a simulated reviewer reads every case in the worklist's default order (most uncertain
   first) and records the true label with ``db.reviews.add_review`` (what the dashboard's save-review action
   calls), flagging every disagreement with the model.
4. v2 = ``cxr-train train --include-reviews --eval-data <evaluation part>`` through ``model_training.cli.main``,
   once per ``--recipes`` entry (``default`` is the recipe ``--include-reviews`` uses without options).
5. ``cxr-train evaluate --model v1 --compare v2 --json`` on the evaluation part: per-class AUROC, accuracy,
   balanced accuracy, covid-vs-pneumonia AUROC with bootstrap 95 % intervals (by patient), the paired bootstrap
   interval of v2 - v1, ECE, per site; and both versions on cxr-dev's validation images that neither trained on.
6. Learning curve (first seed, default recipe): v2 from the first 25, 50, 100 reviews in the worklist's order
   and in a random order, against all of them.

    python benchmarks/closed_loop.py --out /tmp/closed_loop.json            # tens of minutes on 2 CPU cores
    python benchmarks/closed_loop.py --quick --out /tmp/closed_loop.json    # tiny sizes, about a minute
    python benchmarks/closed_loop.py --report /tmp/closed_loop.json         # the table of a results file again

Timings are this script's business only; the product never reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import migrate
from db.clitools import setup_logging
from db.engine import create_database_engine, read_session, write_session
from db.model_versions import default_version_id
from db.models import Image
from db.reviewers import add_reviewer
from db.reviews import add_review
from db.worklist import WorklistFilter, worklist_page
from model_training import cli as train_cli
from model_training import data
from model_training.evaluation import compare_checkpoints, interval_text
from model_training.train import TrainConfig, prepare_data
from scoring import cli as score_cli
from scoring.model import checkpoint_sha256, load_checkpoint

log = logging.getLogger("cxr.closed_loop")

SHARED = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAIR = "auroc_covid_vs_pneumonia"
# Recipes to weigh: extra `cxr-train train --include-reviews` options. "default" is what the option does alone.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "from-v1": ["--review-share", "0", "--freeze-blocks", "0", "--border-mask", "0"],
    "from-v1+reweight": ["--freeze-blocks", "0", "--border-mask", "0"],
    "from-v1+reweight+mask": ["--freeze-blocks", "0"],
    "from-v1+reweight+freeze2": ["--freeze-blocks", "2"],
    "scratch": ["--no-from-active", "--review-share", "0", "--freeze-blocks", "0", "--border-mask", "0"],
}


@dataclass(frozen=True)
class Settings:
    dev: Path
    adult: Path
    work: Path
    v1: Path | None
    seeds: tuple[int, ...]
    eval_fraction: float
    img_size: int
    epochs_v1: int
    epochs_v2: int
    batch_size: int
    lr_v2: float | None
    recipes: tuple[str, ...]
    curve_sizes: tuple[int, ...]
    resamples: int
    quick: bool


@dataclass(frozen=True)
class Split:
    seed: int
    reviewed: list[data.LabelledImage]
    evaluation: list[data.LabelledImage]
    reviewed_csv: Path
    evaluation_csv: Path


# --- data ----------------------------------------------------------------------------------------------------

def write_csv(path: Path, items: list[data.LabelledImage]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "patient_id", "source"])
        for item in items:
            writer.writerow([item.path, item.label, item.patient_id or "", item.source or ""])
    return path


def quick_subset(items: list[data.LabelledImage], per_class: dict[str, int]) -> list[data.LabelledImage]:
    """The first patients of each class until ``per_class`` images (whole patients), for ``--quick``."""
    chosen: list[data.LabelledImage] = []
    for label, wanted in per_class.items():
        patients: list[str] = []
        for item in items:
            if item.label == label and item.group not in patients:
                patients.append(item.group)
        taken = [i for i in items if i.label == label and i.group in patients[:wanted]]
        chosen += taken[:wanted]
    return chosen


def split_adult(items: list[data.LabelledImage], seed: int, eval_fraction: float, work: Path) -> Split:
    """Reviewed / evaluation parts by patient, stratified by class; every normal stays in the reviewed part."""
    reviewed, evaluation = data.patient_split(items, eval_fraction, seed)
    moved = [i for i in evaluation if i.label == "normal"]
    if moved:  # patient_split keeps the last patient of each class in its first part; never rely on it silently
        groups = {i.group for i in moved}
        reviewed += [i for i in evaluation if i.group in groups]
        evaluation = [i for i in evaluation if i.group not in groups]
    assert {i.group for i in reviewed}.isdisjoint({i.group for i in evaluation})
    folder = work / f"seed{seed}"
    return Split(seed, reviewed, evaluation, write_csv(folder / "reviewed.csv", reviewed),
                 write_csv(folder / "evaluation.csv", evaluation))


# --- the product's commands, as a user runs them ------------------------------------------------------------

def run_cli(main, argv: list[str], capture: bool = False) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"{argv[0]} ... exited {code}: {' '.join(argv)}")
    return out.getvalue()


def train_v1(settings: Settings) -> Path:
    if settings.v1 is not None:
        return settings.v1
    out = settings.work / "v1"
    dev = settings.dev
    if settings.quick:
        dev = write_csv(settings.work / "dev-quick.csv",
                        quick_subset(data.load_labelled(settings.dev), {"covid": 8, "normal": 8, "pneumonia": 8}))
    run_cli(train_cli.main, ["train", "--data", str(dev), "--out", str(out), "--db",
                             f"sqlite:///{settings.work / 'v1.db'}", "--img-size", str(settings.img_size),
                             "--epochs", str(settings.epochs_v1), "--batch-size", str(settings.batch_size),
                             "--workers", "0"], capture=True)
    return out / "model.pt"


def scored_database(settings: Settings, split: Split, v1: Path) -> Path:
    """A fresh database holding the reviewed part scored by v1 (the active version); no reviews yet."""
    path = settings.work / f"seed{split.seed}" / "scored.db"
    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    run_cli(score_cli.main, ["--db", url, "--model", str(v1), "--settle-seconds", "0", "--workers", "0",
                             *[i.path for i in split.reviewed]], capture=True)
    run_cli(train_cli.main, ["promote", checkpoint_sha256(v1)[:16], "--db", url])
    return path


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (its write-ahead log included), through SQLite's backup API."""
    target.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def record_reviews(db_path: Path, truth: dict[str, str], *, limit: int | None, order: str, seed: int) -> dict:
    """A simulated reviewer reads ``limit`` cases (all: None) in the worklist's default order ("uncertainty") or
    a random one, and records the true label as the dashboard does, flagging every disagreement."""
    engine = create_database_engine(f"sqlite:///{db_path}")
    migrate.require_current(engine)
    with read_session(engine) as session:
        version_id = default_version_id(session)
        rows = worklist_page(session, WorklistFilter(version_id), page_size=100_000).rows
        paths = dict(session.execute(select(Image.id, Image.path)).all())
    if order == "random":
        random.Random(seed).shuffle(rows)
    elif order != "uncertainty":
        raise ValueError(f"unknown review order {order!r}")
    rows = rows[:limit]
    flagged = 0
    with write_session(engine) as session:
        reviewer = add_reviewer(session, f"sim-{order}", "simulated-reviewer-pw")
        for row in rows:
            label = truth[str(Path(paths[row.image_id]).resolve())]
            disagrees = label != row.predicted_class
            flagged += disagrees
            add_review(session, image_id=row.image_id, reviewer_id=reviewer.id, label=label,
                       prediction_id=row.prediction_id, flagged_for_retraining=disagrees,
                       comment="simulated reviewer: the dataset label", mode="standard", seconds_spent=0.0)
    engine.dispose()
    return {"reviews": len(rows), "flagged": flagged, "order": order,
            "labels": dict(Counter(truth[str(Path(paths[r.image_id]).resolve())] for r in rows))}


def train_v2(settings: Settings, db_path: Path, split: Split, recipe: str, out: Path) -> Path:
    argv = ["train", "--data", str(settings.dev), "--include-reviews", "--db", f"sqlite:///{db_path}",
            "--eval-data", str(split.evaluation_csv), "--out", str(out), "--img-size", str(settings.img_size),
            "--epochs", str(settings.epochs_v2), "--batch-size", str(settings.batch_size), "--workers", "0",
            "--seed", str(v1_seed(settings)), *RECIPES[recipe]]
    if settings.quick:
        argv[2] = str(settings.work / "dev-quick.csv")
    if settings.lr_v2 is not None:
        argv += ["--lr", str(settings.lr_v2)]
    run_cli(train_cli.main, argv, capture=True)
    return out / "model.pt"


def v1_seed(settings: Settings) -> int:
    """v2 trains with v1's seed and validation fraction, so both are validated on the same cxr-dev images."""
    v1 = settings.v1 or settings.work / "v1" / "model.pt"
    return int(load_checkpoint(v1).training.get("config", {}).get("seed", 0))


def compare(settings: Settings, v1: Path, v2: Path, data_path: Path) -> dict:
    return json.loads(run_cli(train_cli.main, ["evaluate", "--model", str(v1), "--compare", str(v2), "--data",
                                               str(data_path), "--json", "--resamples", str(settings.resamples)],
                              capture=True))


def dev_validation(settings: Settings, v1: Path, v2: Path) -> dict:
    """Both versions on the cxr-dev validation images that neither trained on (each run's split recomputed from
    its recorded configuration, as ``train`` made it; with v1's seed these are all of v1's validation images)."""
    val = []
    for path in (v1, v2):
        recorded = load_checkpoint(path).training["config"]
        config = TrainConfig(**{f.name: recorded.get(f.name) for f in dataclasses.fields(TrainConfig)
                                if f.name in recorded})
        items, _, _ = prepare_data(config)
        _, held_out = data.split_keeping_dataset_split(items, config.val_fraction, config.seed)
        val.append({i.sha256: i for i in held_out if i.review_id is None})
    common = [item for sha, item in val[0].items() if sha in val[1]]
    if len({item.label for item in common}) < 2:
        return {"n": len(common), "note": "fewer than two classes among the images neither version trained on"}
    result = compare_checkpoints(v1, v2, common, device="cpu", n_resamples=settings.resamples, workers=0)
    return {"n": len(common), **_brief(result)}


# --- summaries -----------------------------------------------------------------------------------------------

def _interval(metrics: dict, key: str) -> dict | None:
    return metrics.get("intervals", {}).get(key)


def _brief(comparison: dict) -> dict:
    """The figures the issue asks for, of one comparison."""
    keys = ["accuracy", "balanced_accuracy", "macro_auroc", PAIR, "auroc_covid", "auroc_normal", "auroc_pneumonia"]
    out: dict[str, Any] = {}
    for side in ("model", "compare"):
        m = comparison[side]
        out["v1" if side == "model" else "v2"] = {
            **{k: _interval(m, k) for k in keys}, "ece": m["ece"], "n": m["n"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items()},
            "per_site": {site: {"n": g["n"], "accuracy": g["accuracy"], "classes": g["classes"],
                                "covid_vs_pneumonia": g.get("pairwise_auroc", {}).get("covid_vs_pneumonia")}
                         for site, g in m.get("per_source", {}).items()},
        }
    out["difference"] = {k: comparison["difference"].get(k) for k in keys}
    return out


def _ci(found: dict | None, signed: bool = False) -> str:
    return interval_text(found, signed, digits=3)


def table(results: dict) -> str:
    lines = [f"{'seed':>4} {'recipe':<26} {'bal.acc v1':>22} {'bal.acc v2':>22} {'v2-v1 (paired)':>24} "
             f"{'covid/pneu AUROC v1':>22} {'v2':>22} {'v2-v1 (paired)':>24} {'ECE v1':>7} {'ECE v2':>7} "
             f"{'dev macro-AUROC v1':>19} {'v2':>7}"]
    for run in results["runs"]:
        for name, r in run["recipes"].items():
            e, d = r["evaluation"], r["dev_validation"]
            lines.append(
                f"{run['seed']:>4} {name:<26} {_ci(e['v1']['balanced_accuracy']):>22} "
                f"{_ci(e['v2']['balanced_accuracy']):>22} {_ci(e['difference']['balanced_accuracy'], True):>24} "
                f"{_ci(e['v1'][PAIR]):>22} {_ci(e['v2'][PAIR]):>22} {_ci(e['difference'][PAIR], True):>24} "
                f"{e['v1']['ece']:>7.3f} {e['v2']['ece']:>7.3f} "
                f"{_num(d.get('v1', {}).get('macro_auroc')):>19} {_num(d.get('v2', {}).get('macro_auroc')):>7}")
    for run in results["runs"]:
        for name, r in run["recipes"].items():
            lines += ["", f"per site, seed {run['seed']}, {name} (v1 -> v2; covid/pneu AUROC where a site holds both)"]
            e = r["evaluation"]
            for site, one in sorted(e["v1"]["per_site"].items(), key=lambda kv: -kv[1]["n"]):
                two = e["v2"]["per_site"][site]
                pair = ("" if one["covid_vs_pneumonia"] is None else
                        f"  covid/pneu AUROC {one['covid_vs_pneumonia']:.3f} -> {two['covid_vs_pneumonia']:.3f}")
                lines.append(f"  {site:<40} n={one['n']:>3} {','.join(one['classes']):<16} accuracy "
                             f"{one['accuracy']:.3f} -> {two['accuracy']:.3f}{pair}")
    if results.get("curve"):
        lines += ["", "learning curve (default recipe, first seed): v2 - v1 on the evaluation part"]
        for point in results["curve"]:
            lines.append(f"  {point['order']:<12} {point['reviews']:>4} reviews ({point['flagged']:>3} flagged): "
                         f"balanced acc {_ci(point['difference']['balanced_accuracy'], True)}  covid/pneu AUROC "
                         f"{_ci(point['difference'][PAIR], True)}")
    return "\n".join(lines)


def _num(found: dict | None) -> str:
    return "n/a" if not found or found.get("estimate") is None else f"{found['estimate']:.3f}"


def machine() -> dict:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "uptime": uptime}


# --- the run -------------------------------------------------------------------------------------------------

def run(settings: Settings) -> dict:
    started = time.perf_counter()
    results: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v
                                            for k, v in dataclasses.asdict(settings).items()},
                               "machine_start": machine(), "runs": [], "curve": []}
    v1 = train_v1(settings)
    results["v1"] = {"checkpoint": str(v1), "sha256": checkpoint_sha256(v1)}
    adult = data.load_labelled(settings.adult)
    if settings.quick:
        adult = quick_subset(adult, {"covid": 14, "pneumonia": 10, "normal": 1})
    truth = {str(Path(i.path).resolve()): i.label for i in adult}
    for seed in settings.seeds:
        split = split_adult(adult, seed, settings.eval_fraction, settings.work)
        log.info("seed %d: %d reviewed (%s), %d evaluation (%s)", seed, len(split.reviewed),
                 dict(Counter(i.label for i in split.reviewed)), len(split.evaluation),
                 dict(Counter(i.label for i in split.evaluation)))
        scored = scored_database(settings, split, v1)
        run_result: dict[str, Any] = {"seed": seed, "reviewed": dict(Counter(i.label for i in split.reviewed)),
                                      "evaluation": dict(Counter(i.label for i in split.evaluation)),
                                      "recipes": {}}
        results["runs"].append(run_result)  # saved as it fills, so a cut-short run keeps what it measured
        for recipe in settings.recipes:
            db_path = settings.work / f"seed{seed}" / f"{recipe}.db"
            copy_database(scored, db_path)
            reviews = record_reviews(db_path, truth, limit=None, order="uncertainty", seed=seed)
            t0 = time.perf_counter()
            v2 = train_v2(settings, db_path, split, recipe, settings.work / f"seed{seed}" / f"v2-{recipe}")
            seconds = time.perf_counter() - t0
            result = {"reviews": reviews, "train_seconds": round(seconds, 1),
                      "evaluation": _brief(compare(settings, v1, v2, split.evaluation_csv)),
                      "dev_validation": dev_validation(settings, v1, v2)}
            run_result["recipes"][recipe] = result
            log.info("seed %d, %s: balanced accuracy v2-v1 %s, covid/pneumonia AUROC v2-v1 %s (%.0f s)", seed,
                     recipe, _ci(result["evaluation"]["difference"]["balanced_accuracy"], True),
                     _ci(result["evaluation"]["difference"][PAIR], True), seconds)
            _save_partial(settings, results)
        if seed == settings.seeds[0] and settings.curve_sizes:
            curve(settings, split, scored, truth, v1, run_result, results)
        _save_partial(settings, results)
    results["machine_end"] = machine()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def curve(settings: Settings, split: Split, scored: Path, truth: dict, v1: Path, run_result: dict,
          results: dict) -> None:
    """v2 - v1 per number of reviews, worklist order against a random order (the default recipe), appended to
    ``results["curve"]`` point by point."""
    points = results["curve"]
    for order in ("uncertainty", "random"):
        for size in settings.curve_sizes:
            if size >= len(split.reviewed):
                continue
            db_path = settings.work / f"seed{split.seed}" / f"curve-{order}-{size}.db"
            copy_database(scored, db_path)
            reviews = record_reviews(db_path, truth, limit=size, order=order, seed=split.seed)
            v2 = train_v2(settings, db_path, split, "default",
                          settings.work / f"seed{split.seed}" / f"v2-curve-{order}-{size}")
            brief = _brief(compare(settings, v1, v2, split.evaluation_csv))
            points.append({"order": order, "reviews": size, "flagged": reviews["flagged"],
                           "labels": reviews["labels"], "difference": brief["difference"],
                           "v2": {k: brief["v2"][k] for k in ("balanced_accuracy", PAIR)}})
            log.info("curve %s %d: covid/pneumonia AUROC v2-v1 %s", order, size,
                     _ci(brief["difference"][PAIR], True))
            _save_partial(settings, results)
    default = run_result["recipes"].get("default")
    if default:
        points.append({"order": "all", "reviews": default["reviews"]["reviews"],
                       "flagged": default["reviews"]["flagged"], "labels": default["reviews"]["labels"],
                       "difference": default["evaluation"]["difference"],
                       "v2": {k: default["evaluation"]["v2"][k] for k in ("balanced_accuracy", PAIR)}})


def _save_partial(settings: Settings, results: dict) -> None:
    partial = settings.work / "partial.json"
    partial.write_text(json.dumps(results, indent=2))


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test runs this)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--v1", type=Path, metavar="CKPT", help="reuse this v1 instead of training one")
    parser.add_argument("--dev", type=Path, default=SHARED / "cxr-dev")
    parser.add_argument("--adult", type=Path, default=SHARED / "cxr-adult")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--seeds", type=int, nargs="+", help="split seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--eval-fraction", type=float, default=0.5, help="share of patients held for evaluation")
    parser.add_argument("--img-size", type=int, help="(default: 224; quick: 32)")
    parser.add_argument("--epochs-v1", type=int, help="(default: 20; quick: 1)")
    parser.add_argument("--epochs-v2", type=int, help="(default: 6; quick: 1)")
    parser.add_argument("--lr-v2", type=float, help="learning rate of the v2 runs (default: cxr-train's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="(default: default from-v1)")
    parser.add_argument("--curve", type=int, nargs="*", metavar="N",
                        help="learning-curve sizes (default: 25 50 100; quick: 6; none: no curve)")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: 1000; quick: 100)")
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value, full, small):
        return value if value is not None else (small if quick else full)

    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-closed-loop-"))
    settings = Settings(
        dev=args.dev, adult=args.adult, work=work, v1=args.v1, seeds=tuple(pick(args.seeds, [0, 1, 2], [0])),
        eval_fraction=args.eval_fraction, img_size=pick(args.img_size, 224, 32),
        epochs_v1=pick(args.epochs_v1, 20, 1), epochs_v2=pick(args.epochs_v2, 6, 1),
        batch_size=pick(None if args.batch_size == 32 else args.batch_size, 32, 8), lr_v2=args.lr_v2,
        recipes=tuple(pick(args.recipes, ["default", "from-v1"], ["default"])),
        curve_sizes=tuple(pick(args.curve, [25, 50, 100], [6])), resamples=pick(args.resamples, 1000, 100),
        quick=quick)
    return settings, (None if args.work else work), args.out


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--report":  # print the table of a results file
        print(table(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    settings, temporary, out = parse_args(argv)
    for folder in (settings.dev, settings.adult):
        if not (folder / "labels.csv").is_file():
            log.error("%s/labels.csv not found; set CXR_SHARED_DATA or pass --dev/--adult", folder)
            return 2
    try:
        results = run(settings)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print(table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
