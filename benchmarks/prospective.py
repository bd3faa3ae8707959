"""The whole update policy on a stream of new-site films (issue 20, item 5): does the promotion gate keep a site
from promoting a retrained version that is worse on the patients still to come, without holding back better ones?

For each split seed, cxr-adult's patients are shuffled and dealt, whole, into ``--batches`` batches that arrive in
that order. Three sites run the product side by side, each in its own SQLite database, all starting with v1 (the
default ``cxr-train train`` on cxr-dev) active:

- every batch is scored by the real nightly scorer (``cxr-score``: the active version, and challengers in the
  shadow), then every film is read by a simulated reviewer who records the true label (``db.reviews.add_review``);
- after every ``--every`` batches (not after the last), a candidate is made from the live version with the site's
  reviews so far (``--recipe``: the retraining default ``cxr-train train --include-reviews``, or ``cxr-train
  recalibrate``), and the sites differ only in what they do with it:
  - **never**: nothing (v1 stays);
  - **always**: promote it at once (``cxr-train promote --override-reason``);
  - **gate**: score it in the shadow (``cxr-train challenge``); at the next retraining point the gate judges it on
    the batches read since (``cxr-train promote``: exit 0 promotes it, exit 3 keeps the active version).

Reported per seed and pooled: the live version's balanced accuracy, covid-vs-pneumonia and macro AUROC on every
film after the first retraining point, as the readers saw it when it arrived (the stored calibrated probabilities),
with bootstrap intervals by patient and the paired difference against "never"; and every promotion and every
refusal judged on the films that arrived after it: a promotion is **harmful** when the promoted version is worse
than the one it replaced on those films (balanced accuracy lower, or macro-AUROC lower by more than the gate's
margin), a refusal **blocked a better one** when the refused version was better there (balanced accuracy higher and
macro-AUROC not lower by more than the margin).

    python benchmarks/prospective.py --v1 V1.pt --out /tmp/prospective.json       # tens of minutes on 2 cores
    python benchmarks/prospective.py --quick --out /tmp/prospective.json          # tiny sizes, a few minutes
    python benchmarks/prospective.py --report /tmp/prospective.json               # the tables of a results file

Timings are this script's business only; the product never reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from db import migrate
from db.clitools import setup_logging
from db.engine import create_database_engine, read_session, write_session
from db.model_versions import active_version, find_by_sha
from db.models import Image, Prediction, Review, Reviewer
from db.reviewers import add_reviewer
from db.reviews import add_review
from model_training import cli as train_cli
from model_training import data, gate
from model_training.evaluation import predict_checkpoint
from model_training.metrics import balanced_accuracy, bootstrap_summary, paired_bootstrap_summary
from scoring import cli as score_cli
from scoring.model import checkpoint_sha256

try:  # imported from the tests (the repository root on the path), or run as a script from its own folder
    from benchmarks import closed_loop
except ImportError:
    import closed_loop

log = logging.getLogger("cxr.prospective")

POLICIES = ("never", "always", "gate")
RECIPES = ("finetune", "recalibrate")
CLASSES = ["covid", "normal", "pneumonia"]
PAIR = "auroc_covid_vs_pneumonia"
# What the new site's films are judged on: cxr-adult's two classes. Its one normal film is read like every other film
# (it is among the gate's evidence), but as a class of one it would weigh a third of every balanced accuracy.
JUDGED = ("covid", "pneumonia")


@dataclass(frozen=True)
class Settings:
    dev: Path
    adult: Path
    work: Path
    v1: Path | None
    seeds: tuple[int, ...]
    batches: int
    every: int
    recipe: str
    img_size: int
    epochs_v1: int
    epochs_v2: int
    batch_size: int
    resamples: int
    quick: bool


# --- the stream ----------------------------------------------------------------------------------------------

def arrival(items: list[data.LabelledImage], seed: int, batches: int) -> list[list[data.LabelledImage]]:
    """Whole patients in a shuffled order, dealt into ``batches`` consecutive batches of about equal size."""
    groups: dict[str, list[data.LabelledImage]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    films = [item for name in order for item in groups[name]]
    size = -(-len(films) // batches)
    out, current = [], []
    for name in order:
        current += groups[name]
        if len(current) >= size and len(out) < batches - 1:
            out.append(current)
            current = []
    return [*out, current] if current else out


# --- one site ------------------------------------------------------------------------------------------------

@dataclass
class Site:
    """One policy's database and what happened there."""

    settings: Settings
    seed: int
    policy: str
    folder: Path
    url: str
    events: list[dict]
    live: list[dict]  # per batch: the live version's sha and its stored probabilities on the batch

    @classmethod
    def start(cls, settings: Settings, seed: int, policy: str) -> Site:
        folder = settings.work / f"seed{seed}" / policy
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return cls(settings, seed, policy, folder, f"sqlite:///{folder / 'cxr.db'}", [], [])

    def cli(self, main, *argv: str, expect: tuple[int, ...] = (0,)) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main([*argv])
        if code not in expect:
            raise RuntimeError(f"{' '.join(argv)} exited {code}: {out.getvalue()[-2000:]}")
        return code, out.getvalue()

    def score(self, batch: list[data.LabelledImage], model: Path | None = None) -> None:
        self.cli(score_cli.main, "--db", self.url, *(["--model", str(model)] if model else []), "--settle-seconds",
                 "0", "--workers", "0", *closed_loop.patient_ids_option(self.settings.adult),
                 *[item.path for item in batch], expect=(0, 1))

    def engine(self):
        engine = create_database_engine(self.url)
        migrate.require_current(engine)
        return engine

    def read(self, batch: list[data.LabelledImage]) -> dict:
        """The live version's stored probabilities on the batch (what the readers saw), then every film read."""
        engine = self.engine()
        shas = {item.sha256: item for item in batch}
        with write_session(engine) as session:
            live = active_version(session)
            reviewer = _reviewer(session)
            rows = session.execute(select(Image.id, Image.sha256, Prediction.id, Prediction.probabilities)
                                   .join(Prediction, Prediction.image_id == Image.id)
                                   .where(Prediction.model_version_id == live.id, Image.sha256.in_(list(shas))))
            seen = []
            for image_id, sha, prediction_id, probabilities in rows:
                item = shas[sha]
                add_review(session, image_id=image_id, reviewer_id=reviewer, label=item.label,
                           prediction_id=prediction_id, comment="simulated reviewer: the dataset label")
                seen.append({"sha": sha, "label": item.label, "patient": item.patient_id,
                             "p": [float(probabilities.get(c, 0.0)) for c in CLASSES]})
            record = {"live": live.sha256, "live_id": live.id, "films": seen}
        engine.dispose()
        return record

    def candidate(self, after_batch: int) -> Path | None:
        """A new version made from the live one with the reviews so far, registered (inactive); None where the
        recipe cannot make one yet (recalibrate: too few reviewed cases of two classes), as a site would find."""
        out = self.folder / f"candidate-after-{after_batch}"
        engine = self.engine()
        with read_session(engine) as session:
            live = active_version(session)
            live_id, live_path = live.id, live.path
        engine.dispose()
        started = time.perf_counter()
        if self.settings.recipe == "recalibrate":
            code, _ = self.cli(train_cli.main, "recalibrate", "--from", str(live_id), "--out", str(out), "--db",
                               self.url, "--workers", "0", expect=(0, 2))
            if code == 2:
                self.events.append({"kind": "no_candidate", "after_batch": after_batch})
                return None
        else:
            self.cli(train_cli.main, "train", "--data", str(self.settings.dev), "--include-reviews", "--db",
                     self.url, "--out", str(out), "--img-size", str(self.settings.img_size), "--epochs",
                     str(self.settings.epochs_v2), "--batch-size", str(self.settings.batch_size), "--workers", "0",
                     *closed_loop.split_options(Path(live_path)))
        log.info("seed %d %s: candidate after batch %d in %.0f s", self.seed, self.policy, after_batch,
                 time.perf_counter() - started)
        return out / "model.pt"

    def version_id(self, checkpoint: Path) -> int:
        engine = self.engine()
        with read_session(engine) as session:
            found = find_by_sha(session, checkpoint_sha256(checkpoint)).id
        engine.dispose()
        return found

    def promote(self, checkpoint: Path, *, override: str | None) -> tuple[bool, str]:
        argv = ["promote", str(self.version_id(checkpoint)), "--db", self.url, "--resamples",
                str(self.settings.resamples)]
        if override:
            argv += ["--override-reason", override]
        code, printed = self.cli(train_cli.main, *argv, expect=(0, train_cli.EXIT_GATE_REFUSED))
        return code == 0, printed

    def challenge(self, checkpoint: Path, *, stop: bool = False) -> None:
        self.cli(train_cli.main, "challenge", str(self.version_id(checkpoint)), "--db", self.url,
                 *(["--stop"] if stop else []))


def _reviewer(session) -> int:
    found = session.scalar(select(Reviewer.id).where(Reviewer.username == "sim-reader"))
    return found if found is not None else add_reviewer(session, "sim-reader", "simulated-reviewer-pw").id


def run_site(settings: Settings, seed: int, policy: str, stream: list[list[data.LabelledImage]], v1: Path) -> dict:
    site = Site.start(settings, seed, policy)
    site.score(stream[0], model=v1)  # registers v1
    site.cli(train_cli.main, "promote", checkpoint_sha256(v1)[:16], "--db", site.url)
    challenger: dict | None = None
    for number, batch in enumerate(stream, start=1):
        if number > 1:
            site.score(batch)
        site.live.append({"batch": number, **site.read(batch)})
        if number % settings.every or number == len(stream):
            continue
        if policy == "gate" and challenger is not None:
            promoted, printed = site.promote(challenger["checkpoint"], override=None)
            site.events.append({"kind": "promoted" if promoted else "refused", "after_batch": number,
                                "candidate": challenger["checkpoint"].parent.name, "sha": challenger["sha"],
                                "champion": challenger["champion"], "comparison": printed})
            if not promoted:
                site.challenge(challenger["checkpoint"], stop=True)
            challenger = None
        if policy == "never" or (policy == "gate" and number + settings.every >= len(stream)):
            continue  # the gate's last candidate would have no later batches to be judged on
        champion = site.live[-1]["live"]
        checkpoint = site.candidate(number)
        if checkpoint is None:
            continue
        entry = {"checkpoint": checkpoint, "sha": checkpoint_sha256(checkpoint), "champion": champion,
                 "after_batch": number}
        if policy == "always":
            site.promote(checkpoint, override="benchmark: the 'always promote' policy")
            site.events.append({"kind": "promoted", "after_batch": number, "candidate": checkpoint.parent.name,
                                "sha": entry["sha"], "champion": champion})
        else:
            site.challenge(checkpoint)
            challenger = entry
    return {"policy": policy, "live": site.live, "events": site.events,
            "checkpoints": {p.parent.name: str(p) for p in site.folder.glob("candidate-after-*/model.pt")}}


# --- judging ---------------------------------------------------------------------------------------------------

def prospective_figures(sites: dict[str, dict], first_batch: int, resamples: int) -> dict:
    """Each policy's live version on every film from ``first_batch`` on, as it was when the film arrived, and the
    paired difference against "never" (the same films)."""
    def films(policy: str) -> list[dict]:  # the site's question, covid or pneumonia: its one normal film is left out
        return [film for entry in sites[policy]["live"] if entry["batch"] >= first_batch for film in entry["films"]
                if film["label"] in JUDGED]

    reference = {film["sha"]: film for film in films("never")}
    out = {}
    for policy in sites:
        chosen = [film for film in films(policy) if film["sha"] in reference]
        y = np.array([CLASSES.index(film["label"]) for film in chosen])
        p = np.array([film["p"] for film in chosen])
        patients = [film["patient"] for film in chosen]
        summary = bootstrap_summary(y, p, CLASSES, patients, n_resamples=resamples)
        out[policy] = {"films": len(chosen), **{k: summary[k] for k in ("balanced_accuracy", "macro_auroc", PAIR)}}
        if policy != "never":
            base = np.array([reference[film["sha"]]["p"] for film in chosen])
            difference = paired_bootstrap_summary(y, base, p, CLASSES, patients, n_resamples=resamples)
            out[policy]["minus_never"] = {k: difference[k] for k in ("balanced_accuracy", "macro_auroc", PAIR)}
    return out


def judge_decisions(settings: Settings, site: dict, stream: list[list[data.LabelledImage]], v1: Path) -> list[dict]:
    """Every promotion and every refusal, judged on the films that arrived after it, offline: the candidate against
    the version it would replace (or replaced), both run on those films."""
    by_sha = {checkpoint_sha256(Path(p)): Path(p) for p in site["checkpoints"].values()}
    by_sha[checkpoint_sha256(v1)] = v1
    judged = []
    for event in site["events"]:
        if event["kind"] == "no_candidate":
            continue
        later = [item for batch in stream[event["after_batch"]:] for item in batch if item.label in JUDGED]
        if not later:
            continue
        champion, _ = predict_checkpoint(by_sha[event["champion"]], later, device="cpu", workers=0)
        candidate, _ = predict_checkpoint(by_sha[event["sha"]], later, device="cpu", workers=0)
        y = champion.labels
        delta_balanced = balanced_accuracy(y, candidate.probabilities) - balanced_accuracy(y, champion.probabilities)
        stats = gate.statistics(tuple(CLASSES))
        champion_auroc, candidate_auroc = (stats["macro_auroc"](y, p) for p in (champion.probabilities,
                                                                               candidate.probabilities))
        delta_auroc = None if None in (champion_auroc, candidate_auroc) else candidate_auroc - champion_auroc
        worse = delta_balanced < 0 or (delta_auroc is not None and delta_auroc < -gate.AUROC_MARGIN)
        better = delta_balanced > 0 and (delta_auroc is None or delta_auroc >= -gate.AUROC_MARGIN)
        judged.append({**{k: event[k] for k in ("kind", "after_batch", "candidate")}, "later_films": len(later),
                       "delta_balanced_accuracy": delta_balanced, "delta_macro_auroc": delta_auroc,
                       "harmful": event["kind"] == "promoted" and worse,
                       "blocked_better": event["kind"] == "refused" and better})
    return judged


def live_from_database(url: str, stream: list[list[data.LabelledImage]]) -> list[dict]:
    """A site's ``live`` record read back from its database: each film's reading and the prediction shown with it."""
    batch_of = {item.sha256: number for number, batch in enumerate(stream, start=1) for item in batch}
    by_sha = {item.sha256: item for batch in stream for item in batch}
    engine = create_database_engine(url)
    with read_session(engine) as session:
        rows = session.execute(select(Image.sha256, Prediction.probabilities)
                               .join(Review, Review.image_id == Image.id)
                               .join(Prediction, Prediction.id == Review.prediction_id)).all()
    engine.dispose()
    live = [{"batch": number, "films": []} for number in range(1, len(stream) + 1)]
    for sha, probabilities in rows:
        item = by_sha[sha]
        live[batch_of[sha] - 1]["films"].append({"sha": sha, "label": item.label, "patient": item.patient_id,
                                                 "p": [float(probabilities.get(c, 0.0)) for c in CLASSES]})
    return live


def refigure(results: dict, settings: Settings) -> dict:
    """The prospective figures of a finished run computed again from its sites' databases (its ``--work`` folder),
    with this script's judging; the decisions are judged again too."""
    adult = data.with_hashes(data.load_labelled(settings.adult))
    if settings.quick:
        adult = closed_loop.quick_subset(adult, {"covid": 24, "pneumonia": 16, "normal": 1})
    for seed, found in results["seeds"].items():
        stream = arrival(adult, int(seed), settings.batches)
        assert [len(batch) for batch in stream] == found["batches"], "another stream than the run's"
        sites = {}
        for policy in POLICIES:
            folder = settings.work / f"seed{seed}" / policy
            sites[policy] = {"live": live_from_database(f"sqlite:///{folder / 'cxr.db'}", stream),
                             "events": found["gate_events"] if policy == "gate" else [],
                             "checkpoints": {p.parent.name: str(p) for p in folder.glob("candidate-after-*/model.pt")}}
        found["prospective"] = prospective_figures(sites, settings.every + 1, settings.resamples)
        sites["always"]["events"] = always_events(sites["always"]["checkpoints"], Path(results["v1"]))
        found["decisions"] = {policy: judge_decisions(settings, sites[policy], stream, Path(results["v1"]))
                              for policy in ("always", "gate")}
    return results


def always_events(checkpoints: dict[str, str], v1: Path) -> list[dict]:
    """"always"'s promotions, from its candidates' folders: each replaced the one before it, the first v1."""
    events, champion = [], checkpoint_sha256(v1)
    for name, path in sorted(checkpoints.items(), key=lambda entry: int(entry[0].rsplit("-", 1)[1])):
        sha = checkpoint_sha256(Path(path))
        events.append({"kind": "promoted", "after_batch": int(name.rsplit("-", 1)[1]), "candidate": name, "sha": sha,
                       "champion": champion})
        champion = sha
    return events


# --- the run ---------------------------------------------------------------------------------------------------

def run(settings: Settings) -> dict:
    v1 = closed_loop.train_v1(_closed_loop_settings(settings)) if settings.v1 is None else settings.v1
    adult = data.with_hashes(data.load_labelled(settings.adult))
    if settings.quick:
        adult = closed_loop.quick_subset(adult, {"covid": 24, "pneumonia": 16, "normal": 1})
    results: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v
                                            for k, v in settings.__dict__.items()},
                               "machine": closed_loop.machine(), "v1": str(v1), "seeds": {}}
    for seed in settings.seeds:
        stream = arrival(adult, seed, settings.batches)
        started = time.perf_counter()
        sites = {policy: run_site(settings, seed, policy, stream, v1) for policy in POLICIES}
        first = settings.every + 1
        results["seeds"][str(seed)] = {
            "batches": [len(batch) for batch in stream],
            "prospective": prospective_figures(sites, first, settings.resamples),
            "decisions": {policy: judge_decisions(settings, sites[policy], stream, v1)
                          for policy in ("always", "gate")},
            "gate_events": sites["gate"]["events"],
            "events": {policy: site["events"] for policy, site in sites.items()},
            "seconds": round(time.perf_counter() - started, 1)}
        log.info("seed %d done in %.0f s", seed, results["seeds"][str(seed)]["seconds"])
    return results


def _closed_loop_settings(settings: Settings) -> closed_loop.Settings:
    return closed_loop.Settings(dev=settings.dev, adult=settings.adult, work=settings.work, v1=settings.v1,
                                seeds=settings.seeds, folds=2, img_size=settings.img_size,
                                epochs_v1=settings.epochs_v1, epochs_v2=settings.epochs_v2,
                                batch_size=settings.batch_size, lr_v2=None, recipes=("default",), curve_sizes=(),
                                resamples=settings.resamples, quick=settings.quick)


def table(results: dict) -> str:
    lines = ["| seed | policy | films | balanced accuracy | − never | covid-vs-pneumonia AUROC | − never | "
             "promotions (harmful) | refusals (blocked a better one) |", "|---|---|---|---|---|---|---|---|---|"]
    totals = {"always": [0, 0, 0, 0], "gate": [0, 0, 0, 0]}
    for seed, found in results["seeds"].items():
        for policy, figures in found["prospective"].items():
            decisions = found["decisions"].get(policy, [])
            promoted = [d for d in decisions if d["kind"] == "promoted"]
            refused = [d for d in decisions if d["kind"] == "refused"]
            if policy in totals:
                counts = (len(promoted), sum(d["harmful"] for d in promoted), len(refused),
                          sum(d["blocked_better"] for d in refused))
                totals[policy] = [a + b for a, b in zip(totals[policy], counts, strict=True)]
            minus = figures.get("minus_never", {})
            lines.append(f"| {seed} | {policy} | {figures['films']} | {_ci(figures['balanced_accuracy'])} | "
                         f"{_ci(minus.get('balanced_accuracy'), True)} | {_ci(figures[PAIR])} | "
                         f"{_ci(minus.get(PAIR), True)} | "
                         f"{len(promoted)} ({sum(d['harmful'] for d in promoted)}) | "
                         f"{len(refused)} ({sum(d['blocked_better'] for d in refused)}) |")
    lines.append("")
    for policy, (promoted, harmful, refused, blocked) in totals.items():
        lines.append(f"{policy}: {promoted} promotions, {harmful} harmful; {refused} refusals, {blocked} of them "
                     "blocked a better version")
    return "\n".join(lines)


def _ci(found: dict | None, signed: bool = False) -> str:
    if not found or found.get("estimate") is None:
        return "n/a"
    sign = "+" if signed else ""
    if found.get("low") is None:
        return f"{found['estimate']:{sign}.3f}"
    return f"{found['estimate']:{sign}.3f} [{found['low']:{sign}.3f}, {found['high']:{sign}.3f}]"


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path | None, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test runs this)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--report", type=Path, help="print the tables of a results file and stop")
    parser.add_argument("--refigure", type=Path, metavar="RESULTS",
                        help="judge a finished run again from its sites' databases (give its --work and settings), "
                             "write the results to --out and print the tables")
    parser.add_argument("--v1", type=Path, metavar="CKPT", help="reuse this v1 instead of training one")
    parser.add_argument("--dev", type=Path, default=closed_loop.SHARED / "cxr-dev")
    parser.add_argument("--adult", type=Path, default=closed_loop.SHARED / "cxr-adult")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--seeds", type=int, nargs="+", help="split seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--batches", type=int, default=8, help="batches the new site's films arrive in")
    parser.add_argument("--every", type=int, default=2, help="a candidate after every N batches")
    parser.add_argument("--recipe", choices=RECIPES, default="finetune")
    parser.add_argument("--img-size", type=int, help="(default: 224; quick: 32)")
    parser.add_argument("--epochs-v1", type=int, help="(default: 20; quick: 1)")
    parser.add_argument("--epochs-v2", type=int, help="(default: 6; quick: 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: 1000; quick: 100)")
    args = parser.parse_args(argv)

    def pick(value, full, small):
        return value if value is not None else (small if args.quick else full)

    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-prospective-"))
    settings = Settings(dev=args.dev, adult=args.adult, work=work, v1=args.v1,
                        seeds=tuple(pick(args.seeds, [0, 1, 2], [0])), batches=args.batches, every=args.every,
                        recipe=args.recipe, img_size=pick(args.img_size, 224, 32),
                        epochs_v1=pick(args.epochs_v1, 20, 1), epochs_v2=pick(args.epochs_v2, 6, 1),
                        batch_size=args.batch_size, resamples=pick(args.resamples, 1000, 100), quick=args.quick)
    return settings, args.out, args.report, args.refigure


def main(argv: list[str] | None = None) -> int:
    setup_logging(verbose=False)
    os.environ["CXR_PSEUDONYM_KEY"] = closed_loop.BENCHMARK_PSEUDONYM_KEY
    settings, out, report, again = parse_args(argv)
    if report is not None:
        print(table(json.loads(report.read_text())))
        return 0
    results = refigure(json.loads(again.read_text()), settings) if again is not None else run(settings)
    if out is not None:
        out.write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
