"""The closed loop on real data (issue 11): does a version retrained on reviewers' corrections beat the one it
replaces on a new adult site?

1. v1 = ``cxr-train train`` on cxr-dev (or ``--v1 PATH``).
2. Cross-fitting: cxr-adult is cut by patient, stratified by class, into ``--folds`` parts (default 2), once per
   ``--seeds``. In fold k, part k is the *evaluation* part and the others are the *reviewed* part, so every film
   is evaluated once, by a v2 that never saw it, and the figures are pooled over all evaluated films (twice as
   many as one held-out half: narrower intervals). The one ``normal`` film of cxr-adult is reviewed in every fold
   and never evaluated: it trains v2 as a normal, while the evaluation holds covid and pneumonia only, so its
   balanced accuracy is the mean of the covid and pneumonia recalls and its normal AUROC is undefined (n/a).
3. Each fold's reviewed part is scored with the real scorer (``cxr-score``) into a fresh SQLite database, v1
   promoted (``cxr-train promote``); a simulated reviewer reads every case in the worklist's default order (most
   uncertain first) and records the true label with ``db.reviews.add_review`` (what the dashboard's save-review
   action calls), flagging every disagreement with the model.
4. v2 = ``cxr-train train --include-reviews --eval-data <evaluation part>`` through ``model_training.cli.main``,
   once per fold and ``--recipes`` entry (``default`` is the recipe ``--include-reviews`` uses without options).
5. ``cxr-train evaluate --model v1 --compare v2 --json`` on each fold's evaluation part, and the same figures
   pooled over the folds: per-class AUROC, accuracy, balanced accuracy, covid-vs-pneumonia AUROC with bootstrap
   95 % intervals (by patient), the paired bootstrap interval of v2 - v1, ECE, per site; and v1 and each v2 on
   cxr-dev's validation images that neither trained on.
6. Learning curve (first seed, default recipe): v2 from the first 25, 50, 100 reviews of each fold in the
   worklist's order and in a random order, pooled like the main figures, against all of them.

Nested (``--nested``): which recipe to start with, chosen without looking at the films it is judged on. Per
``--seeds`` entry, cxr-adult's patients are cut, stratified by class, into a "choose" and a "confirm" half. On the
choose half three recipes are cross-fitted as above (``--folds`` parts, each fold's model judged on the part it
never saw, pooled): none (v1 as it is), recalibrate (``cxr-train recalibrate`` from v1: a temperature and
per-class offsets fitted on the reviews, weights untouched) and fine-tune (the default ``--include-reviews``
recipe). The largest pooled balanced-accuracy gain over v1 is picked. Then every recipe is made from all of the
choose half's reviews and judged on the confirm half, which took no part in the choice: balanced accuracy,
covid-vs-pneumonia AUROC and ECE, v2 - v1 with paired bootstrap intervals by patient.

    python benchmarks/closed_loop.py --out /tmp/closed_loop.json            # tens of minutes on 2 CPU cores
    python benchmarks/closed_loop.py --nested --v1 CKPT --out /tmp/nested.json  # about 15 minutes a seed
    python benchmarks/closed_loop.py --quick --out /tmp/closed_loop.json    # tiny sizes, about a minute
    python benchmarks/closed_loop.py --prospective --v1 CKPT --out /tmp/p.json  # the policy: benchmarks/prospective.py
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

import numpy as np
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
from model_training.config import TrainConfig
from model_training.evaluation import compare_checkpoints, interval_text, predict_checkpoint
from model_training.metrics import (
    MIN_PATIENTS_PER_CLASS,
    expected_calibration_error,
    paired_bootstrap_difference,
    paired_bootstrap_summary,
)
from model_training.predictions import Predictions, prediction_metrics
from model_training.train import validation_items
from scoring import cli as score_cli
from scoring.model import checkpoint_sha256, load_checkpoint

log = logging.getLogger("cxr.closed_loop")

SHARED = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAIR = "auroc_covid_vs_pneumonia"
# The new site's films are grouped by their patients' pseudonyms in a retraining's validation split, so the figures
# hang on the pseudonym key, which an installation draws at random. A fixed key makes them the same on every machine:
# this is the key of the development machine that measured the figures of 2026-12-07 (it guards no patient data).
BENCHMARK_PSEUDONYM_KEY = "22e48a66a923321d0a96f3d87dbcb13a693589e24cf21d5b119a58fcb5b5b2b6"
# Recipes to weigh: extra `cxr-train train --include-reviews` options. "default" is what the option does alone.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "freeze1": ["--review-share", "0.5", "--freeze-blocks", "1"],  # the default until 2026-11-26
    "share0.5": ["--review-share", "0.5"],
    "freeze2": ["--review-share", "0.5", "--freeze-blocks", "2"],
    "no-mask": ["--review-share", "0.5", "--border-mask", "0"],
    "head-only": ["--freeze-blocks", "4"],
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
    folds: int
    img_size: int
    epochs_v1: int
    epochs_v2: int
    batch_size: int
    lr_v2: float | None
    recipes: tuple[str, ...]
    curve_sizes: tuple[int, ...]
    resamples: int
    quick: bool
    nested: bool = False
    min_cases: int | None = None  # recalibrate's --min-cases (None: the product's default)


@dataclass(frozen=True)
class Fold:
    """One cross-fitting fold of a split seed: v2 learns from the reviewed part and is judged on the other."""

    seed: int
    index: int
    reviewed: list[data.LabelledImage]
    evaluation: list[data.LabelledImage]
    reviewed_csv: Path
    evaluation_csv: Path
    folder: Path

    @property
    def name(self) -> str:
        return f"seed{self.seed}-fold{self.index}"


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


def patient_folds(items: list[data.LabelledImage], folds: int, seed: int) -> list[list[data.LabelledImage]]:
    """``folds`` parts by patient (no patient in two), stratified by each patient's main label: the patients of
    each label, shuffled, are dealt to the part that holds the fewest images of that label so far."""
    groups, by_label = data.patients_by_main_label(items)
    rng = random.Random(seed)
    parts: list[list[data.LabelledImage]] = [[] for _ in range(folds)]
    for label in sorted(by_label):
        names = by_label[label]
        rng.shuffle(names)
        held = [0] * folds
        for name in names:
            target = min(range(folds), key=lambda k: (held[k], k))
            parts[target] += groups[name]
            held[target] += len(groups[name])
    return parts


def adult_folds(items: list[data.LabelledImage], seed: int, folds: int, work: Path) -> list[Fold]:
    """Cross-fitting: cxr-adult cut by patient into ``folds`` parts; fold k is evaluated on part k and learns from
    the reviews of the others, so every film is judged once, by a v2 that never saw it. Normal films are
    reviewed in every fold and never evaluated (there is one: it trains v2 as a normal, and the evaluation
    holds covid and pneumonia only)."""
    normal_groups = {i.group for i in items if i.label == "normal"}
    kept = [i for i in items if i.group in normal_groups]
    parts = patient_folds([i for i in items if i.group not in normal_groups], folds, seed)
    out = []
    for index, evaluation in enumerate(parts):
        reviewed = [i for k, part in enumerate(parts) if k != index for i in part] + kept
        assert {i.group for i in reviewed}.isdisjoint({i.group for i in evaluation})
        out.append(make_fold(seed, index, reviewed, evaluation, work / f"seed{seed}" / f"fold{index}"))
    return out


def make_fold(seed: int, index: int, reviewed: list[data.LabelledImage], evaluation: list[data.LabelledImage],
              folder: Path) -> Fold:
    return Fold(seed, index, reviewed, evaluation, write_csv(folder / "reviewed.csv", reviewed),
                write_csv(folder / "evaluation.csv", evaluation), folder)


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


def scored_database(settings: Settings, fold: Fold, v1: Path) -> Path:
    """A fresh database holding the reviewed part scored by v1 (the active version); no reviews yet."""
    path = fold.folder / "scored.db"
    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    run_cli(score_cli.main, ["--db", url, "--model", str(v1), "--settle-seconds", "0", "--workers", "0",
                             *patient_ids_option(settings.adult), *[i.path for i in fold.reviewed]], capture=True)
    run_cli(train_cli.main, ["promote", checkpoint_sha256(v1)[:16], "--db", url])
    return path


def patient_ids_option(adult: Path) -> list[str]:
    """``--patient-ids`` for the new site's PNGs, as a site with a labels.csv would score them: a patient's films
    then share one pseudonym (the training split, the gate's evidence), instead of each film being a patient."""
    labels = adult / data.LABELS_FILE
    return ["--patient-ids", str(labels)] if labels.is_file() else []


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


def train_v2(settings: Settings, db_path: Path, fold: Fold, recipe: str, out: Path) -> Path:
    argv = ["train", "--data", str(settings.dev), "--include-reviews", "--db", f"sqlite:///{db_path}",
            "--eval-data", str(fold.evaluation_csv), "--out", str(out), "--img-size", str(settings.img_size),
            "--epochs", str(settings.epochs_v2), "--batch-size", str(settings.batch_size), "--workers", "0",
            *split_options(settings.v1 or settings.work / "v1" / "model.pt"), *RECIPES[recipe]]
    if settings.quick:
        argv[2] = str(settings.work / "dev-quick.csv")
    if settings.lr_v2 is not None:
        argv += ["--lr", str(settings.lr_v2)]
    run_cli(train_cli.main, argv, capture=True)
    return out / "model.pt"


def split_options(parent: Path) -> list[str]:
    """``--seed`` and ``--val-fraction`` of the version a candidate starts from: the training split is a hash of
    each patient and these two, so the same pair keeps the parent's training patients out of the candidate's
    validation split (the stream's own seed would not)."""
    recorded = load_checkpoint(parent).training.get("config", {})
    return ["--seed", str(int(recorded.get("seed", 0))), "--val-fraction", str(recorded.get("val_fraction", 0.2))]


def compare(settings: Settings, v1: Path, v2: Path, data_path: Path) -> dict:
    return json.loads(run_cli(train_cli.main, ["evaluate", "--model", str(v1), "--compare", str(v2), "--data",
                                               str(data_path), "--json", "--resamples", str(settings.resamples),
                                               "--workers", "0"],
                              capture=True))


def dev_validation(settings: Settings, v1: Path, v2: Path) -> dict:
    """Both versions on the cxr-dev validation images that neither trained on (each run's split recomputed from
    its recorded configuration, as ``train`` made it; with v1's seed these are all of v1's validation images)."""
    val = []
    for path in (v1, v2):
        held_out = validation_items(TrainConfig.from_recorded(load_checkpoint(path).training["config"]))
        val.append({i.sha256: i for i in held_out if i.review_id is None})
    common = [item for sha, item in val[0].items() if sha in val[1]]
    if len({item.label for item in common}) < 2:
        return {"n": len(common), "note": "fewer than two classes among the images neither version trained on"}
    result = compare_checkpoints(v1, v2, common, device="cpu", n_resamples=settings.resamples, workers=0)
    return {"n": len(common), **_brief(result)}


def pooled_comparison(settings: Settings, v1: Path, judged: list[tuple[Path, list[data.LabelledImage]]]) -> dict:
    """v1 and each fold's v2 on that fold's evaluation part, pooled into one comparison over every evaluated film
    (the form of ``evaluate --compare``'s JSON), with paired bootstrap intervals over the pooled patients. Each
    film's v2 probability comes from the one v2 that never saw it."""
    firsts, seconds = [], []
    for v2, items in judged:
        first, classes = predict_checkpoint(v1, items, device="cpu", workers=0)
        second, second_classes = predict_checkpoint(v2, items, device="cpu", workers=0)
        if classes != second_classes:
            raise data.DataError(f"v1 and {v2} have different classes: {classes} and {second_classes}")
        firsts.append(first)
        seconds.append(second)
    first, second = _pooled(firsts), _pooled(seconds)
    difference = paired_bootstrap_summary(first.labels, first.probabilities, second.probabilities, classes,
                                          first.patients, n_resamples=settings.resamples)
    difference["ece"] = paired_bootstrap_difference(_ece, first.labels, first.probabilities, second.probabilities,
                                                    first.patients, n_resamples=settings.resamples).to_dict()
    return {"model": prediction_metrics(first, classes, n_resamples=settings.resamples),
            "compare": prediction_metrics(second, classes, n_resamples=settings.resamples),
            "difference": difference}


def _ece(y: np.ndarray, p: np.ndarray) -> float:
    return expected_calibration_error(p, y)


def _pooled(parts: list[Predictions]) -> Predictions:
    return Predictions([item for part in parts for item in part.items],
                       np.concatenate([part.labels for part in parts]),
                       np.concatenate([part.probabilities for part in parts]),
                       np.concatenate([part.logits for part in parts]),
                       sum(part.left_out_unknown_label for part in parts))


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
    out["difference"] = {k: comparison["difference"].get(k) for k in [*keys, "ece"]}
    # the classes whose figures carry no interval (too few patients for the bootstrap to show their spread)
    out["too_few_patients"] = comparison["difference"]["_method"]["too_few_patients"]
    return out


def _ci(found: dict | None, signed: bool = False) -> str:
    return interval_text(found, signed, digits=3)


def table(results: dict) -> str:
    lines = ["every evaluated film judged once, by the fold's v2 that never saw it; pooled over the folds",
             f"{'seed':>4} {'recipe':<26} {'bal.acc v1':>22} {'bal.acc v2':>22} {'v2-v1 (paired)':>24} "
             f"{'covid/pneu AUROC v1':>22} {'v2':>22} {'v2-v1 (paired)':>24} {'ECE v1':>7} {'ECE v2':>7} "
             f"{'dev macro-AUROC v2-v1 per fold':>34}"]
    for run in results["runs"]:
        for name, r in run["recipes"].items():
            e = r["pooled"]
            dev = ", ".join(_ci(f["dev_validation"].get("difference", {}).get("macro_auroc"), True)
                            for f in r["folds"])
            lines.append(
                f"{run['seed']:>4} {name:<26} {_ci(e['v1']['balanced_accuracy']):>22} "
                f"{_ci(e['v2']['balanced_accuracy']):>22} {_ci(e['difference']['balanced_accuracy'], True):>24} "
                f"{_ci(e['v1'][PAIR]):>22} {_ci(e['v2'][PAIR]):>22} {_ci(e['difference'][PAIR], True):>24} "
                f"{e['v1']['ece']:>7.3f} {e['v2']['ece']:>7.3f}   {dev}")
            if e.get("too_few_patients"):
                lines.append(f"     no interval where a class has fewer than {MIN_PATIENTS_PER_CLASS} patients: "
                             + ", ".join(f"{c} {n}" for c, n in e["too_few_patients"].items()))
    lines += ["", "each fold alone (its own evaluate --compare)"]
    for run in results["runs"]:
        for name, r in run["recipes"].items():
            for f in r["folds"]:
                e = f["evaluation"]
                lines.append(f"{run['seed']:>4} {name:<26} fold {f['fold']}: {f['reviews']['reviews']} reviewed "
                             f"({f['reviews']['flagged']} flagged), bal.acc v2-v1 "
                             f"{_ci(e['difference']['balanced_accuracy'], True)}, covid/pneu AUROC v2-v1 "
                             f"{_ci(e['difference'][PAIR], True)}, {f['train_seconds']:.0f} s")
    for run in results["runs"]:
        for name, r in run["recipes"].items():
            lines += ["", f"per site, seed {run['seed']}, {name}, pooled "
                          "(v1 -> v2; covid/pneu AUROC where a site holds both)"]
            e = r["pooled"]
            for site, one in sorted(e["v1"]["per_site"].items(), key=lambda kv: -kv[1]["n"]):
                two = e["v2"]["per_site"][site]
                pair = ("" if one["covid_vs_pneumonia"] is None else
                        f"  covid/pneu AUROC {one['covid_vs_pneumonia']:.3f} -> {two['covid_vs_pneumonia']:.3f}")
                lines.append(f"  {site:<40} n={one['n']:>3} {','.join(one['classes']):<16} accuracy "
                             f"{one['accuracy']:.3f} -> {two['accuracy']:.3f}{pair}")
    if results.get("curve"):
        lines += ["", "learning curve (default recipe, first seed; reviews per fold, pooled): v2 - v1"]
        for point in results["curve"]:
            lines.append(f"  {point['order']:<12} {str(point['reviews']):>10} reviews ({point['flagged']:>3} flagged): "
                         f"balanced acc {_ci(point['difference']['balanced_accuracy'], True)}  covid/pneu AUROC "
                         f"{_ci(point['difference'][PAIR], True)}")
    return "\n".join(lines)


def report(results: dict) -> str:
    return nested_table(results) if results.get("mode") == "nested" else table(results)


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
        folds = adult_folds(adult, seed, settings.folds, settings.work)
        run_result: dict[str, Any] = {
            "seed": seed, "folds": [{"reviewed": dict(Counter(i.label for i in f.reviewed)),
                                     "evaluation": dict(Counter(i.label for i in f.evaluation))} for f in folds],
            "evaluation": dict(Counter(i.label for f in folds for i in f.evaluation)), "recipes": {}}
        for fold in folds:
            log.info("%s: %d reviewed %s, %d evaluated %s", fold.name, len(fold.reviewed),
                     dict(Counter(i.label for i in fold.reviewed)), len(fold.evaluation),
                     dict(Counter(i.label for i in fold.evaluation)))
        results["runs"].append(run_result)  # saved as it fills, so a cut-short run keeps what it measured
        scored = {fold.index: scored_database(settings, fold, v1) for fold in folds}
        for recipe in settings.recipes:
            per_fold, pooled = retrain_folds(settings, folds, scored, truth, v1, recipe)
            run_result["recipes"][recipe] = {"folds": per_fold, "pooled": pooled}
            log.info("seed %d, %s, all %d folds pooled: balanced accuracy v2-v1 %s, covid/pneumonia AUROC v2-v1 %s",
                     seed, recipe, len(folds), _ci(pooled["difference"]["balanced_accuracy"], True),
                     _ci(pooled["difference"][PAIR], True))
            _save_partial(settings, results)
        if seed == settings.seeds[0] and settings.curve_sizes:
            curve(settings, folds, scored, truth, v1, run_result, results)
        _save_partial(settings, results)
    results["machine_end"] = machine()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def retrain_folds(settings: Settings, folds: list[Fold], scored: dict[int, Path], truth: dict, v1: Path,
                  recipe: str, limit: int | None = None, order: str = "uncertainty") -> tuple[list[dict], dict]:
    """:func:`retrain_fold` for every fold: each fold's own figures, and the figures pooled over the folds."""
    per_fold, judged = [], []
    for fold in folds:
        one, v2 = retrain_fold(settings, fold, scored[fold.index], truth, v1, recipe, limit, order)
        per_fold.append(one)
        judged.append((v2, fold.evaluation))
    return per_fold, _brief(pooled_comparison(settings, v1, judged))


def retrain_fold(settings: Settings, fold: Fold, scored: Path, truth: dict, v1: Path, recipe: str,
                 limit: int | None = None, order: str = "uncertainty") -> tuple[dict, Path]:
    """Reviews of the fold's reviewed part (``limit`` of them, in ``order``), v2 trained with ``recipe``, and the
    fold's own ``evaluate --compare`` and cxr-dev validation."""
    tag = recipe if limit is None else f"curve-{order}-{limit}"
    db_path = scored.parent / f"{tag}.db"
    copy_database(scored, db_path)
    reviews = record_reviews(db_path, truth, limit=limit, order=order, seed=fold.seed)
    t0 = time.perf_counter()
    v2 = train_v2(settings, db_path, fold, recipe, scored.parent / f"v2-{tag}")
    seconds = time.perf_counter() - t0
    result = {"fold": fold.index, "reviews": reviews, "train_seconds": round(seconds, 1),
              "evaluation": _brief(compare(settings, v1, v2, fold.evaluation_csv)),
              "dev_validation": dev_validation(settings, v1, v2)}
    log.info("%s, %s: balanced accuracy v2-v1 %s, covid/pneumonia AUROC v2-v1 %s, cxr-dev macro-AUROC v2-v1 %s "
             "(%.0f s)", fold.name, tag, _ci(result["evaluation"]["difference"]["balanced_accuracy"], True),
             _ci(result["evaluation"]["difference"][PAIR], True),
             _ci(result["dev_validation"].get("difference", {}).get("macro_auroc"), True), seconds)
    return result, v2


def curve(settings: Settings, folds: list[Fold], scored: dict[int, Path], truth: dict, v1: Path,
          run_result: dict, results: dict) -> None:
    """v2 - v1 per number of reviews in each fold, worklist order against a random order (the default recipe),
    pooled over the folds like the main figures, appended to ``results["curve"]`` point by point."""
    points = results["curve"]
    smallest = min(len(fold.reviewed) for fold in folds)
    for order in ("uncertainty", "random"):
        for size in settings.curve_sizes:
            if size >= smallest:
                continue
            per_fold, brief = retrain_folds(settings, folds, scored, truth, v1, "default", size, order)
            points.append({"order": order, "reviews": size, **review_totals(per_fold),
                           "difference": brief["difference"],
                           "v2": {k: brief["v2"][k] for k in ("balanced_accuracy", PAIR)}})
            log.info("curve %s %d per fold: covid/pneumonia AUROC v2-v1 %s", order, size,
                     _ci(brief["difference"][PAIR], True))
            _save_partial(settings, results)
    default = run_result["recipes"].get("default")
    if default:
        points.append({"order": "all", "reviews": [f["reviews"]["reviews"] for f in default["folds"]],
                       **review_totals(default["folds"]), "difference": default["pooled"]["difference"],
                       "v2": {k: default["pooled"]["v2"][k] for k in ("balanced_accuracy", PAIR)}})


def review_totals(per_fold: list[dict]) -> dict:
    """Flagged reviews and reviewed labels, summed over the folds."""
    return {"flagged": sum(f["reviews"]["flagged"] for f in per_fold),
            "labels": dict(sum((Counter(f["reviews"]["labels"]) for f in per_fold), Counter()))}


def _save_partial(settings: Settings, results: dict) -> None:
    partial = settings.work / "partial.json"
    partial.write_text(json.dumps(results, indent=2))


# --- nested: a recipe chosen on one half of the patients, confirmed on the other -----------------------------

# What the nested mode weighs, simplest first (a tie goes to the simpler): v1 as it is; `cxr-train recalibrate`
# from v1 (its weights, a temperature and per-class offsets fitted on the reviews); `cxr-train train
# --include-reviews` with its default recipe.
NESTED_RECIPES = ("none", "recalibrate", "fine-tune")


def outer_halves(items: list[data.LabelledImage], seed: int) -> tuple[list, list]:
    """cxr-adult cut by patient, stratified by class, into a "choose" and a "confirm" half; normal films go to the
    choose half, where they are reviewed and never evaluated, as in the cross-fitting folds."""
    normal_groups = {i.group for i in items if i.label == "normal"}
    choose, confirm = patient_folds([i for i in items if i.group not in normal_groups], 2, seed)
    return choose + [i for i in items if i.group in normal_groups], confirm


def recalibrate_v1(settings: Settings, db_path: Path, v1: Path, out: Path) -> Path:
    argv = ["recalibrate", "--from", checkpoint_sha256(v1)[:16], "--out", str(out), "--db", f"sqlite:///{db_path}",
            "--workers", "0"]
    if settings.min_cases is not None:
        argv += ["--min-cases", str(settings.min_cases)]
    run_cli(train_cli.main, argv, capture=True)
    return out / "model.pt"


def recipe_model(settings: Settings, fold: Fold, scored: Path, truth: dict, v1: Path, recipe: str
                 ) -> tuple[Path, dict]:
    """What ``recipe`` makes of the fold's reviewed part once the simulated reviewer has read every case: v1 itself,
    or a new version from a copy of the scored database."""
    if recipe == "none":
        return v1, {"seconds": 0.0}
    db_path = fold.folder / f"{recipe}.db"
    copy_database(scored, db_path)
    reviews = record_reviews(db_path, truth, limit=None, order="uncertainty", seed=fold.seed)
    started = time.perf_counter()
    out = fold.folder / f"v2-{recipe}"
    model = (recalibrate_v1(settings, db_path, v1, out) if recipe == "recalibrate"
             else train_v2(settings, db_path, fold, "default", out))
    return model, {"reviews": reviews, "seconds": round(time.perf_counter() - started, 1)}


def choose_phase(settings: Settings, folds: list[Fold], truth: dict, v1: Path) -> dict:
    """Every recipe cross-fitted on the choose half: each fold's model judged on the fold it never saw, pooled."""
    scored = {fold.index: scored_database(settings, fold, v1) for fold in folds}
    out = {}
    for recipe in NESTED_RECIPES:
        made = [recipe_model(settings, fold, scored[fold.index], truth, v1, recipe) for fold in folds]
        judged = [(model, fold.evaluation) for (model, _), fold in zip(made, folds, strict=True)]
        out[recipe] = {"pooled": _brief(pooled_comparison(settings, v1, judged)), "folds": [info for _, info in made]}
        log.info("choose half, %s: balanced accuracy v2-v1 %s", recipe,
                 _ci(out[recipe]["pooled"]["difference"]["balanced_accuracy"], True))
    return out


def pick(choose: dict) -> str:
    """The recipe with the largest balanced-accuracy gain over v1 on the choose half (none's is 0), the simpler on a
    tie: the point estimate, because the choice has to be made whatever the intervals say, and the confirm half
    then shows what the choice was worth."""
    gains = {r: choose[r]["pooled"]["difference"]["balanced_accuracy"]["estimate"] for r in NESTED_RECIPES}
    return max(NESTED_RECIPES, key=lambda r: (gains[r], -NESTED_RECIPES.index(r)))


def confirm_phase(settings: Settings, fold: Fold, truth: dict, v1: Path) -> dict:
    """Every recipe made from all of the choose half's reviews, judged on the confirm half, and on the cxr-dev
    validation images that neither version trained on."""
    scored = scored_database(settings, fold, v1)
    out = {}
    for recipe in NESTED_RECIPES:
        model, info = recipe_model(settings, fold, scored, truth, v1, recipe)
        out[recipe] = {**info, "evaluation": _brief(pooled_comparison(settings, v1, [(model, fold.evaluation)])),
                       "dev_validation": None if recipe == "none" else dev_validation(settings, v1, model)}
        log.info("confirm half, %s: balanced accuracy v2-v1 %s, covid/pneumonia AUROC v2-v1 %s", recipe,
                 _ci(out[recipe]["evaluation"]["difference"]["balanced_accuracy"], True),
                 _ci(out[recipe]["evaluation"]["difference"][PAIR], True))
    return out


def run_nested(settings: Settings) -> dict:
    started = time.perf_counter()
    results: dict[str, Any] = {"mode": "nested", "recipes": list(NESTED_RECIPES),
                               "settings": {k: str(v) if isinstance(v, Path) else v
                                            for k, v in dataclasses.asdict(settings).items()},
                               "machine_start": machine(), "nested": []}
    t0 = time.perf_counter()
    v1 = train_v1(settings)
    results["v1"] = {"checkpoint": str(v1), "sha256": checkpoint_sha256(v1),
                     "seconds": None if settings.v1 else round(time.perf_counter() - t0, 1)}
    adult = data.load_labelled(settings.adult)
    if settings.quick:
        adult = quick_subset(adult, {"covid": 14, "pneumonia": 10, "normal": 1})
    truth = {str(Path(i.path).resolve()): i.label for i in adult}
    for seed in settings.seeds:
        choose, confirm = outer_halves(adult, seed)
        root = settings.work / "nested" / f"seed{seed}"
        entry: dict[str, Any] = {"seed": seed, "choose": dict(Counter(i.label for i in choose)),
                                 "confirm": dict(Counter(i.label for i in confirm))}
        results["nested"].append(entry)
        folds = adult_folds(choose, seed, settings.folds, root / "choose")
        entry["choose_phase"] = choose_phase(settings, folds, truth, v1)
        entry["picked"] = pick(entry["choose_phase"])
        log.info("seed %d: picked %s on the choose half", seed, entry["picked"])
        _save_partial(settings, results)
        entry["confirm_phase"] = confirm_phase(settings, make_fold(seed, 0, choose, confirm, root / "confirm"),
                                               truth, v1)
        _save_partial(settings, results)
    results["machine_end"] = machine()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def nested_table(results: dict) -> str:
    lines = ["nested: recipes compared on the choose half (cross-fitted, pooled, v2 - v1), the largest "
             "balanced-accuracy gain picked; every recipe then made from all of the choose half's reviews and judged "
             "on the confirm half, which took no part in the choice (v2 - v1, paired 95 % intervals by patient)",
             f"{'seed':>4} {'recipe':<12} {'choose: bal.acc':>24} {'confirm: bal.acc v2':>22} {'bal.acc v2-v1':>24} "
             f"{'covid/pneu AUROC v2-v1':>24} {'ECE v1':>6} {'ECE v2':>6} {'ECE v2-v1':>24} "
             f"{'dev macro-AUROC v2-v1':>24} {'seconds':>7}"]
    for entry in results["nested"]:
        for recipe in results["recipes"]:
            chosen = entry["choose_phase"][recipe]["pooled"]["difference"]["balanced_accuracy"]
            confirm = entry["confirm_phase"][recipe]
            e, dev = confirm["evaluation"], confirm["dev_validation"] or {}
            mark = "*" if recipe == entry["picked"] else " "
            lines.append(
                f"{entry['seed']:>4} {recipe + mark:<12} {_ci(chosen, True):>24} "
                f"{_ci(e['v2']['balanced_accuracy']):>22} {_ci(e['difference']['balanced_accuracy'], True):>24} "
                f"{_ci(e['difference'][PAIR], True):>24} "
                f"{e['v1']['ece']:>6.3f} {e['v2']['ece']:>6.3f} {_ci(e['difference']['ece'], True):>24} "
                f"{_ci(dev.get('difference', {}).get('macro_auroc'), True):>24} {confirm['seconds']:>7.0f}")
    lines += ["* picked on the choose half", "",
              "the picked recipe on the confirm half: " + "; ".join(
                  f"seed {e['seed']}: {e['picked']}, balanced accuracy v2-v1 "
                  f"{_ci(e['confirm_phase'][e['picked']]['evaluation']['difference']['balanced_accuracy'], True)}"
                  for e in results["nested"])]
    for entry in results["nested"]:
        lines.append(f"seed {entry['seed']}: choose half {entry['choose']}, confirm half {entry['confirm']}; "
                     "recall v1 -> v2 on the confirm half: " + ", ".join(
                         f"{r} {_recalls(entry['confirm_phase'][r]['evaluation'])}" for r in results["recipes"]))
    return "\n".join(lines)


def _recalls(brief: dict) -> str:
    return "/".join(f"{c} {brief['v1']['recall'][c]:.2f}->{brief['v2']['recall'][c]:.2f}"
                    for c in ("covid", "pneumonia"))


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test runs this)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--v1", type=Path, metavar="CKPT", help="reuse this v1 instead of training one")
    parser.add_argument("--dev", type=Path, default=SHARED / "cxr-dev")
    parser.add_argument("--adult", type=Path, default=SHARED / "cxr-adult")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--seeds", type=int, nargs="+", help="split seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--folds", type=int, default=2,
                        help="cross-fitting folds per split seed (default: 2, halves reviewed in turn)")
    parser.add_argument("--img-size", type=int, help="(default: 224; quick: 32, quick nested: 64)")
    parser.add_argument("--epochs-v1", type=int, help="(default: 20; quick: 1)")
    parser.add_argument("--epochs-v2", type=int, help="(default: 6; quick: 1)")
    parser.add_argument("--lr-v2", type=float, help="learning rate of the v2 runs (default: cxr-train's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="(default: default from-v1)")
    parser.add_argument("--curve", type=int, nargs="*", metavar="N",
                        help="learning-curve sizes (default: 25 50 100; quick: 6; none: no curve)")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: 1000; quick: 100)")
    parser.add_argument("--nested", action="store_true",
                        help="choose among none, recalibrate and fine-tune on half of the adult patients, confirm on "
                             "the other half")
    parser.add_argument("--min-cases", type=int, help="recalibrate's --min-cases (default: its own; quick: 2)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2 (one part evaluated, the others reviewed), got {args.folds}")
    quick = args.quick

    def pick(value, full, small):
        return value if value is not None else (small if quick else full)

    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-closed-loop-"))
    settings = Settings(
        dev=args.dev, adult=args.adult, work=work, v1=args.v1, seeds=tuple(pick(args.seeds, [0, 1, 2], [0])),
        # quick nested runs 64 px, chosen when its fine-tunes could end an epoch on a batch of one film (layer4's
        # maps are 1x1 at 32 px, and batch norm refuses one value per channel); make_loader now leaves that out
        folds=args.folds, img_size=pick(args.img_size, 224, 64 if args.nested else 32),
        epochs_v1=pick(args.epochs_v1, 20, 1), epochs_v2=pick(args.epochs_v2, 6, 1),
        batch_size=pick(None if args.batch_size == 32 else args.batch_size, 32, 8), lr_v2=args.lr_v2,
        recipes=tuple(pick(args.recipes, ["default", "from-v1"], ["default"])),
        curve_sizes=tuple(pick(args.curve, [25, 50, 100], [6])), resamples=pick(args.resamples, 1000, 100),
        quick=quick, nested=args.nested, min_cases=pick(args.min_cases, None, 2))
    return settings, (None if args.work else work), args.out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--prospective"]:  # the whole update policy on a stream of films: benchmarks/prospective.py
        try:
            from benchmarks import prospective
        except ImportError:  # run as a script from its own folder
            import prospective
        return prospective.main(args[1:])
    setup_logging()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ["CXR_PSEUDONYM_KEY"] = BENCHMARK_PSEUDONYM_KEY
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--report":  # print the table of a results file
        print(report(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    settings, temporary, out = parse_args(argv)
    for folder in (settings.dev, settings.adult):
        if not (folder / "labels.csv").is_file():
            log.error("%s/labels.csv not found; set CXR_SHARED_DATA or pass --dev/--adult", folder)
            return 2
    try:
        results = run_nested(settings) if settings.nested else run(settings)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print(report(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
