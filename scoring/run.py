"""One scoring run, as ``cxr-score`` and ``cxr-demo`` both start it: :func:`run_scoring`.

A run takes the run lock on its database, creates the schema in an empty database (and refuses an old one),
finds the model, walks the paths, and scores what is new, committing batch by batch. Whatever happens, it ends
with a :class:`ScoringSummary` whose ``exit_code`` is the one ``cxr-score`` documents: 0 all fine; 1 finished,
but some files failed (recorded in the database); 2 could not run (no model, database unreachable or on an old
schema, a codec or device missing), or died; 75 another run holds the lock on this database (EX_TEMPFAIL).

A run with the active version also scores every challenger in its shadow (:func:`load_challengers`); a
challenger never changes the exit code: one that cannot be loaded is left out of the run, logged and named in
the summary, and its failures on images are its own counts, never the files' failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine

from db import migrate, model_versions, results
from db.clitools import one_line, run_command
from db.config import pseudonym_key
from db.engine import get_engine, read_session, write_session
from db.errors import EXIT_CANNOT_RUN, CannotRun
from scoring import dicomweb, imaging, pipeline, results_back
from scoring.dicomweb import DicomwebSource
from scoring.discovery import Discovery, discover
from scoring.lock import RunLock, RunLockHeld
from scoring.model import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFound,
    autocast_dtype,
    checkpoint_sha256,
    load_checkpoint,
    resolve_device,
)
from scoring.patient_ids import assign_patients, read_patient_ids
from scoring.results_back import Destination

log = logging.getLogger("cxr.score")

EXIT_OK, EXIT_FAILURES, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, RunLockHeld.exit_code, 130

# Why a challenger is left out of a run (the summary's "unavailable"; the run goes on without it).
CHECKPOINT_MISSING = "checkpoint_missing"  # no file at its registered path
CHECKPOINT_INVALID = "checkpoint_invalid"  # not a checkpoint this software reads
CHECKPOINT_CHANGED = "checkpoint_changed"  # the file's sha256 is no longer the registered one
CLASSES_DIFFER = "classes_differ"  # not the active version's classes: its predictions could not be compared
MODEL_FAILED = "model_failed"  # the model could not be built from it (weights that do not fit, no memory left)


_PIPELINE = pipeline.ScoringOptions  # its class attributes are its fields' defaults


@dataclass(frozen=True)
class ScoringRequest:
    """What a run is asked to do. ``cxr-score``'s option defaults are these fields' defaults, which are the
    pipeline's where it has one."""

    paths: tuple[str, ...]  # folders or files; may be empty when pulling from a DICOMweb server
    dicomweb: DicomwebSource | None = None  # pulled into $CXR_HOME/dicomweb first, then scored with the paths
    db_url: str | None = None
    model: Path | None = None  # None: the active model version
    batch_size: int = _PIPELINE.batch_size
    workers: int | None = None  # decoding processes; None: default_workers()
    threads: int | None = None  # CPU threads for the model; None: the CPU cores
    device: str = "auto"
    precision: str = _PIPELINE.precision
    settle_seconds: float = 30.0
    read_timeout: float = _PIPELINE.read_timeout
    retry_failed: bool = _PIPELINE.retry_failed
    log_every: int = _PIPELINE.log_every
    progress_bar: bool = _PIPELINE.progress_bar
    attributions: tuple[str, ...] = ()  # methods whose maps are precomputed after scoring (scoring.attribution)
    attributions_top: int = 50  # ... for the N most uncertain cases plus every case not predicted normal
    engine: str = "local"  # or "ray": decoding and the models on a Ray cluster (scoring.ray_engine)
    ray_address: str | None = None  # the cluster to join; None: a local Ray
    results_to: Destination | None = None  # send each scored study's report there (scoring.results_back)
    results_calling_ae: str = results_back.DEFAULT_CALLING_AE
    patient_ids: Path | None = None  # a CSV of file, patient_id for PNG/JPEG films (scoring.patient_ids)


@dataclass(frozen=True)
class ScoringSummary:
    exit_code: int
    seconds: float
    run_id: int | None = None
    model_version_id: int | None = None
    counts: dict[str, int] | None = None  # pipeline.Counts; None when the run did not finish
    phase_seconds: dict[str, Any] | None = None  # seconds per phase; "model": each version's model time
    attributions: dict[str, Any] | None = None  # precompute.PrecomputeSummary.as_dict(), when asked for
    challengers: list[dict[str, Any]] | None = None  # per challenger: what it scored in the shadow, or why not
    dicomweb: dict[str, Any] | None = None  # dicomweb.PullCounts.as_dict(), when pulling
    results_back: dict[str, Any] | None = None  # results_back.ResultsCounts.as_dict(), when sending results
    patients: dict[str, Any] | None = None  # what --patient-ids assigned (patient_ids.assign_patients)

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary: run and model version (once a run started), counts, challengers and phase timings
        (once it finished), the precomputed attribution maps (when asked for), seconds and exit code."""
        summary: dict[str, Any] = {"run_id": self.run_id}
        if self.run_id is not None:
            summary["model_version_id"] = self.model_version_id
        if self.counts is not None:
            summary.update(self.counts, challengers=self.challengers or [], phase_seconds=self.phase_seconds)
        if self.attributions is not None:
            summary["attributions"] = self.attributions
        if self.dicomweb is not None:
            summary["dicomweb"] = self.dicomweb
        if self.results_back is not None:
            summary["results_back"] = self.results_back
        if self.patients is not None:
            summary["patients"] = self.patients
        summary.update(seconds=self.seconds, exit_code=self.exit_code)
        return summary


@dataclass
class _Progress:
    """What a run has got to, kept when it dies half-way."""

    run_id: int | None = None
    model_version_id: int | None = None
    counts: dict[str, int] | None = None
    phase_seconds: dict[str, Any] = field(default_factory=dict)
    attributions: dict[str, Any] | None = None
    challengers: list[dict[str, Any]] | None = None
    dicomweb: dict[str, Any] | None = None
    results_back: dict[str, Any] | None = None
    patients: dict[str, Any] | None = None


def run_scoring(request: ScoringRequest) -> ScoringSummary:
    """Score ``request.paths``; never raises (but for SystemExit), the exit code says how it went."""
    started = time.perf_counter()
    progress = _Progress()
    try:
        code = run_command(log, request.db_url, lambda: _run(request, progress))
    except KeyboardInterrupt:
        log.warning("interrupted; every committed batch is kept, the next run finishes the rest")
        code = EXIT_INTERRUPTED
    except Exception as exc:  # a run that dies anyway must not exit 1, which means "some files failed"
        log.debug("the run died", exc_info=True)
        log.error("cxr-score could not finish: %s; every committed batch is kept (-v shows the traceback)",
                  one_line(exc))
        code = EXIT_CANNOT_RUN
    return ScoringSummary(exit_code=code, seconds=round(time.perf_counter() - started, 3), run_id=progress.run_id,
                          model_version_id=progress.model_version_id, counts=progress.counts,
                          phase_seconds=progress.phase_seconds or None, attributions=progress.attributions,
                          challengers=progress.challengers, dicomweb=progress.dicomweb,
                          results_back=progress.results_back, patients=progress.patients)


def _run(request: ScoringRequest, progress: _Progress) -> int:
    engine = get_engine(request.db_url)
    options = scoring_options(request)
    run_engine = runner(request)
    if options.device.type == "cpu":
        torch.set_num_threads(request.threads or os.cpu_count() or 1)
    missing = imaging.missing_codecs()
    if missing:
        raise CannotRun(f"codecs missing on this machine (`pip install -r requirements.txt` installs them): "
                        f"{'; '.join(missing)}")
    try:
        pseudonym_key()  # a missing key is created now, before any worker; a bad one refused before the run
    except ValueError as exc:
        raise CannotRun(str(exc)) from None
    patients = read_patient_ids(request.patient_ids) if request.patient_ids is not None else None
    with RunLock(engine):  # before the schema check, so two runs on a new database don't both create it
        migrate.ensure_schema(engine)
        with write_session(engine) as session:
            if results.mark_interrupted_runs(session):
                log.warning("an earlier run was killed before it finished; its committed batches are kept")
        checkpoint, model_version_id = resolve_model(engine, request.model)
        challengers, unavailable = [], {}
        if request.model is None:  # an explicit checkpoint is scored alone: challengers shadow the active version
            challengers, unavailable = load_challengers(engine, checkpoint, model_version_id, options)
        timings: dict[str, Any] = {}
        pulled, pull_failed = None, 0
        if request.dicomweb is not None:
            pulled, pull_counts = dicomweb.pull(engine, request.dicomweb)
            progress.dicomweb, pull_failed = pull_counts.as_dict(), pull_counts.failed
            timings["dicomweb"] = progress.dicomweb["seconds"]
        discovering = time.perf_counter()
        found = discover_inputs(request, pulled)
        timings["discover"] = round(time.perf_counter() - discovering, 3)
        with write_session(engine) as session:
            run_id = results.start_run(session, run_arguments(request, options, challengers, unavailable),
                                       model_version_id, os.getpid()).id
        progress.run_id, progress.model_version_id = run_id, model_version_id
        log.info("run %d: model version %d (%s), device %s, %d workers, %d files found, %d still being written",
                 run_id, model_version_id, checkpoint.arch, options.device, options.workers, len(found.files),
                 found.deferred)
        if challengers:
            log.info("also scored by challenger(s) %s in the shadow: stored, never shown to readers",
                     ", ".join(str(c.model_version_id) for c in challengers))
        log_future_files(found)
        counts = pipeline.Counts(deferred=found.deferred, future_mtime=found.future)
        with interrupted_run_marker(engine, run_id):
            timings.update(pipeline.score(engine, checkpoint, found.files, model_version_id, run_id, options,
                                          counts, challengers, run_engine))
            if patients is not None:  # every batch is committed: this run's films are in the database
                progress.patients = assign_patients(engine, patients, [f.path for f in found.files])
            if request.attributions:  # every batch's predictions are committed by now: a kill loses none
                progress.attributions = precompute_attributions(engine, request, model_version_id)
                timings["attributions"] = progress.attributions["seconds"]
            if request.results_to is not None:  # after the scores are committed: a PACS that is down holds none
                progress.results_back = results_back.send_results(engine, request.results_to, model_version_id,
                                                                  request.results_calling_ae).as_dict()
                timings["results_back"] = progress.results_back["seconds"]
        with write_session(engine) as session:
            results.update_run(session, run_id, status="finished", finished=True, **counts.run_columns())
    progress.counts, progress.phase_seconds = counts.as_dict(), timings
    progress.challengers = challenger_summary(challengers, unavailable)
    log.info("run %d finished: %s", run_id, ", ".join(f"{k} {v}" for k, v in counts.as_dict().items()))
    log_challengers(challengers, timings["model"][str(model_version_id)])
    if counts.invalid_study_date:
        log.warning("%d images have a StudyDate that is not a valid DICOM date (YYYYMMDD): stored without a study "
                    "date", counts.invalid_study_date)
    if counts.failed:
        log.warning("%d files failed in this run; `cxr-db failures --run %d` lists them, as does the dashboard's "
                    "Overview page for admins", counts.failed, run_id)
    if pull_failed:
        log.warning("%d instances could not be fetched from the DICOMweb server; the next run asks again", pull_failed)
    results_failed = (progress.results_back or {}).get("failed", 0)
    return EXIT_FAILURES if counts.failed or pull_failed or results_failed else EXIT_OK


def runner(request: ScoringRequest) -> Callable[[pipeline.ScoringPass, list[pipeline.Job]], None]:
    if request.engine == "ray":
        from scoring.ray_engine import RayRunner, ray_module

        ray_module()  # before the run starts: no Ray installed is "cannot run", not a run that dies
        return RayRunner(request.ray_address)
    return pipeline.ScoringPass.run


def discover_inputs(request: ScoringRequest, pulled: Path | None) -> Discovery:
    """The files of the paths, and those of the DICOMweb cache: written atomically, so none is left to settle."""
    found = discover(list(request.paths), settle_seconds=request.settle_seconds)
    if pulled is None:
        return found
    cached = discover([pulled], settle_seconds=0)
    paths = {f.path for f in found.files}
    found.files = sorted(found.files + [f for f in cached.files if f.path not in paths], key=lambda f: f.path)
    found.ignored += cached.ignored
    return found


def log_future_files(found: Discovery) -> None:
    if found.future:
        log.warning("%d files are dated in the future (the clock of the share or modality is ahead of this "
                    "machine's): judged by when they last changed instead, %d of them left for the next run",
                    found.future, found.future_deferred)


def precompute_attributions(engine: Engine, request: ScoringRequest, model_version_id: int) -> dict[str, Any]:
    from scoring.attribution.precompute import precompute

    return precompute(engine, model_version_id, request.attributions, request.attributions_top).as_dict()


def scoring_options(request: ScoringRequest) -> pipeline.ScoringOptions:
    device = resolve_device(request.device)
    try:
        autocast_dtype(device, request.precision)  # refused before the run starts, not after
    except ValueError as exc:
        raise CannotRun(str(exc)) from None
    workers = default_workers(device) if request.workers is None else request.workers
    return pipeline.ScoringOptions(
        batch_size=request.batch_size, workers=workers,
        device=device, precision=request.precision, read_timeout=request.read_timeout,
        retry_failed=request.retry_failed, log_every=request.log_every, progress_bar=request.progress_bar,
        adapt_threads=device.type == "cpu" and request.threads is None and workers > 0)


def default_workers(device: torch.device | None = None) -> int:
    """Decoding processes: every core on a CPU, every core but the one feeding the GPU on CUDA.

    Why: workers only decode ahead until the prefetch queue is full, so when the model is the slower stage they
    wait and leave it the cores; when decoding is the slower stage (full-size films, a small model, any GPU), a
    core without a worker sits idle while the scoring process waits. On the H200 (16 cores) decoding went from
    598 img/s with 8 workers to 828 with 15. On this 2-core CPU, 1 and 2 workers could not be told apart under
    the shared load of about 7 (cxr-dev, 600 files: 15.8/14.4 vs 15.4/15.7 img/s at 224 px, 103/46 vs 84/53 at
    32 px; the 48-film archive: 5.7/5.3 vs 5.2/7.4 img/s), so the rule above decides. Fewer workers than cores
    give OpenJPEG the spare cores instead (decoding.codec_threads).
    """
    cores = os.cpu_count() or 1
    return max(1, cores - 1) if device is not None and device.type == "cuda" else cores


def resolve_model(engine: Engine, model_path: Path | None) -> tuple[Checkpoint, int]:
    """The checkpoint to score with and its model version id, registering a new checkpoint by its hash."""
    if model_path is None:
        with write_session(engine) as session:
            active = model_versions.active_version(session)
            if active is None:
                raise CannotRun("no active model version; pass --model CKPT or promote one with "
                                "`cxr-train promote VERSION`")
            model_path, expected_sha = Path(active.path), active.sha256
    else:
        expected_sha = None
    checkpoint, sha = load_checkpoint(model_path), checkpoint_sha256(model_path)
    if expected_sha is not None and sha != expected_sha:
        raise CannotRun(f"the active model's checkpoint {model_path} has changed since it was registered "
                        f"(sha256 {sha[:12]}…, registered {expected_sha[:12]}…)")
    with write_session(engine) as session:
        return checkpoint, model_versions.register_checkpoint(session, model_path, checkpoint, sha).id


def load_challengers(engine: Engine, active: Checkpoint, active_id: int,
                     options: pipeline.ScoringOptions) -> tuple[list[pipeline.Challenger], dict[int, str]]:
    """The challengers ready to score (models built), and the reason each of the others is left out.

    Nothing about a challenger stops the run: the active version's scoring is what readers wait for."""
    with read_session(engine) as session:
        versions = [(v.id, v.path, v.sha256) for v in model_versions.challengers(session) if v.id != active_id]
    ready: list[pipeline.Challenger] = []
    unavailable: dict[int, str] = {}
    for version_id, path, sha in versions:
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint_sha256(path) != sha:
                unavailable[version_id] = CHECKPOINT_CHANGED
            elif checkpoint.classes != active.classes:
                unavailable[version_id] = CLASSES_DIFFER
            else:
                ready.append(pipeline.Challenger(version_id, pipeline.Scorer(checkpoint, options.device,
                                                                             options.precision)))
        except CheckpointNotFound:
            unavailable[version_id] = CHECKPOINT_MISSING
        except CheckpointError:
            unavailable[version_id] = CHECKPOINT_INVALID
        except Exception as exc:  # a payload load_checkpoint let through, weights that do not fit the model, ...
            log.debug("challenger %d could not be loaded", version_id, exc_info=True)
            unavailable[version_id] = MODEL_FAILED if isinstance(exc, RuntimeError) else CHECKPOINT_INVALID
    if unavailable:
        log.warning("%d challenger(s) left out of this run, the active version scores as usual: %s",
                    len(unavailable), ", ".join(f"version {v} ({why})" for v, why in unavailable.items()))
    return ready, unavailable


def challenger_summary(challengers: list[pipeline.Challenger], unavailable: dict[int, str]) -> list[dict[str, Any]]:
    """The summary's ``challengers``: each one's shadow counts and model seconds, or why it was left out."""
    entries = [{"model_version_id": c.model_version_id, "unavailable": None, **c.counts.as_dict()}
               for c in challengers]
    entries += [{"model_version_id": version_id, "unavailable": why, **pipeline.ShadowCounts().as_dict()}
                for version_id, why in unavailable.items()]
    return sorted(entries, key=lambda entry: entry["model_version_id"])


def log_challengers(challengers: list[pipeline.Challenger], active_seconds: float) -> None:
    for challenger in challengers:
        counts = challenger.counts
        failed = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.failed.items())) or "none"
        log.info("challenger %d scored %d images in the shadow (%d scored before, failed: %s); its model %.1f s, "
                 "the active version's %.1f s", challenger.model_version_id, counts.scored, counts.skipped, failed,
                 counts.seconds, active_seconds)


def run_arguments(request: ScoringRequest, options: pipeline.ScoringOptions,
                  challengers: Sequence[pipeline.Challenger] = (), unavailable: dict[int, str] | None = None) -> dict:
    """What the run was asked to do, for the runs table (no credentials: the database URL is left out), and the
    challengers it scores in the shadow (the Overview counts their predictions per run) or leaves out."""
    source = request.dicomweb
    return {"paths": [str(p) for p in request.paths], "engine": request.engine,
            "model": str(request.model) if request.model else None,
            "batch_size": options.batch_size, "workers": options.workers, "device": str(options.device),
            "precision": options.precision,
            "settle_seconds": request.settle_seconds, "retry_failed": request.retry_failed,
            "attributions": list(request.attributions), "attributions_top": request.attributions_top,
            "challengers": [c.model_version_id for c in challengers],
            "challengers_unavailable": {str(v): why for v, why in (unavailable or {}).items()},
            "dicomweb": None if source is None else {"url": source.url,
                                                     "since": source.since and source.since.isoformat()},
            "results_to": request.results_to and request.results_to.url,
            "patient_ids": str(request.patient_ids) if request.patient_ids else None}


@contextlib.contextmanager
def interrupted_run_marker(engine: Engine, run_id: int) -> Iterator[None]:
    """Marks the run 'interrupted' on SIGTERM or Ctrl-C and 'failed' on an unexpected error.

    Every committed batch stays; ``kill -9`` cannot be caught, and the next run marks such a run interrupted.
    """
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with write_session(engine) as session:
            results.update_run(session, run_id, status=status, finished=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
