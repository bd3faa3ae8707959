"""``cxr-score``: the nightly batch scorer.

Exit codes: 0 all fine; 1 finished, but some files failed (recorded in the database); 2 could not run (no
model, database unreachable or on an old schema, a codec or device missing); 75 another run holds the lock
on this database (EX_TEMPFAIL: try later).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from db import config, migrate, results
from db.clitools import setup_logging
from db.engine import get_engine, write_session
from scoring import imaging, pipeline
from scoring.discovery import discover
from scoring.lock import RunLock, RunLockHeld
from scoring.model import (
    Checkpoint,
    CheckpointError,
    DeviceUnavailable,
    checkpoint_sha256,
    load_checkpoint,
    resolve_device,
)

log = logging.getLogger("cxr.score")

EXIT_OK, EXIT_FAILURES, EXIT_CANNOT_RUN, EXIT_LOCKED = 0, 1, 2, 75


class CannotRun(RuntimeError):
    """A reason the run cannot start; exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-score", description="Score new chest X-rays with the active model.",
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders (walked recursively) or files")
    parser.add_argument("--db", metavar="URL", help="database URL (default: $CXR_DB_URL or $CXR_HOME/cxr.db)")
    parser.add_argument("--model", metavar="CKPT", type=Path,
                        help="checkpoint to use (registered on first use); default: the active model version")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="decoding processes (default: 1 per 2 CPU cores, at least 1; 0 = decode in-process)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for the model (default: the CPU cores)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 autocast on CUDA (fp16 where unsupported), float32 on the CPU")
    parser.add_argument("--settle-seconds", type=float, default=30.0, metavar="S",
                        help="leave files modified less than S seconds ago for the next run (default: 30)")
    parser.add_argument("--read-timeout", type=float, default=imaging.DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"give up on a file after S seconds (default: {imaging.DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--retry-failed", action="store_true", help="retry unchanged files that failed before")
    parser.add_argument("--log-file", type=Path, metavar="F", help="also append the log to F")
    parser.add_argument("--log-every", type=int, default=500, metavar="N",
                        help="without a terminal, log progress every N decoded files (default: 500)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    started = time.perf_counter()
    summary: dict = {"run_id": None}
    try:
        code = run(args, summary)
    except RunLockHeld as exc:
        log.warning("%s; not starting", exc)
        code = EXIT_LOCKED
    except (CannotRun, DeviceUnavailable, migrate.SchemaOutOfDate) as exc:
        log.error("%s", exc)
        code = EXIT_CANNOT_RUN
    except OperationalError as exc:
        log.error("database %s is unreachable: %s", config.database_url(args.db), exc.orig)
        code = EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        log.warning("interrupted; every committed batch is kept, the next run finishes the rest")
        code = 130
    except Exception as exc:  # a run that dies anyway must not exit 1, which means "some files failed"
        log.debug("the run died", exc_info=True)
        log.error("cxr-score could not finish: %s; every committed batch is kept (-v shows the traceback)",
                  one_line(exc))
        code = EXIT_CANNOT_RUN
    summary.update(seconds=round(time.perf_counter() - started, 3), exit_code=code)
    if args.json:
        print(json.dumps(summary), flush=True)
    return code


def run(args: argparse.Namespace, summary: dict) -> int:
    engine = get_engine(args.db)
    device = resolve_device(args.device)
    options = pipeline.ScoringOptions(
        batch_size=args.batch_size, workers=default_workers() if args.workers is None else args.workers,
        device=device, precision=args.precision, read_timeout=args.read_timeout, retry_failed=args.retry_failed,
        log_every=args.log_every, progress_bar=sys.stderr.isatty())
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    with RunLock(engine):  # before the schema check, so two runs on a new database don't both create it
        migrate.ensure_schema(engine)
        with write_session(engine) as session:
            if results.mark_interrupted_runs(session):
                log.warning("an earlier run was killed before it finished; its committed batches are kept")
        checkpoint, model_version_id = resolve_model(engine, args.model)
        discovering = time.perf_counter()
        try:
            found = discover(args.paths, settle_seconds=args.settle_seconds)
        except FileNotFoundError as exc:
            raise CannotRun(str(exc)) from None
        timings = {"discover": round(time.perf_counter() - discovering, 3)}
        with write_session(engine) as session:
            run_id = results.start_run(session, run_arguments(args, options), model_version_id, os.getpid()).id
        summary.update(run_id=run_id, model_version_id=model_version_id)
        log.info("run %d: model version %d (%s), device %s, %d workers, %d files found, %d still being written",
                 run_id, model_version_id, checkpoint.arch, device, options.workers, len(found.files),
                 found.deferred)
        counts = pipeline.Counts(deferred=found.deferred)
        with interrupted_run_marker(engine, run_id):
            timings.update(pipeline.score(engine, checkpoint, found.files, model_version_id, run_id, options,
                                          counts))
        with write_session(engine) as session:
            results.update_run(session, run_id, status="finished", finished=True, **counts.as_dict())
    summary.update(counts.as_dict(), phase_seconds=timings)
    log.info("run %d finished: %s", run_id, ", ".join(f"{k} {v}" for k, v in counts.as_dict().items()))
    if counts.failed:
        log.warning("%d files failed in this run; `cxr-db failures --run %d` lists them", counts.failed, run_id)
    return EXIT_FAILURES if counts.failed else EXIT_OK


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its text (SQLAlchemy puts the statement's values below)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def resolve_model(engine: Engine, model_path: Path | None) -> tuple[Checkpoint, int]:
    """The checkpoint to score with and its model version id, registering a new checkpoint by its hash."""
    if model_path is None:
        with write_session(engine) as session:
            active = results.active_model_version(session)
            if active is None:
                raise CannotRun("no active model version; pass --model CKPT or promote one with "
                                "`cxr-train promote VERSION`")
            model_path, expected_sha = Path(active.path), active.sha256
    else:
        expected_sha = None
    checkpoint, sha = _load(model_path)
    if expected_sha is not None and sha != expected_sha:
        raise CannotRun(f"the active model's checkpoint {model_path} has changed since it was registered "
                        f"(sha256 {sha[:12]}…, registered {expected_sha[:12]}…)")
    with write_session(engine) as session:
        return checkpoint, results.register_checkpoint(session, model_path, checkpoint, sha).id


def _load(path: Path) -> tuple[Checkpoint, str]:
    try:
        return load_checkpoint(path), checkpoint_sha256(path)
    except FileNotFoundError:
        raise CannotRun(f"model checkpoint {path} does not exist") from None
    except CheckpointError as exc:
        raise CannotRun(str(exc)) from None


def run_arguments(args: argparse.Namespace, options: pipeline.ScoringOptions) -> dict:
    """What the run was asked to do, for the runs table (no credentials: the database URL is left out)."""
    return {"paths": [str(p) for p in args.paths], "model": str(args.model) if args.model else None,
            "batch_size": options.batch_size, "workers": options.workers, "device": str(options.device),
            "precision": options.precision,
            "settle_seconds": args.settle_seconds, "retry_failed": args.retry_failed}


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


if __name__ == "__main__":
    raise SystemExit(main())
