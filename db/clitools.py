"""Shared by the command-line tools: the options every command has (one definition, one help text each),
logging on the ``cxr`` logger, and the one place where "cannot run" conditions become an exit code and a line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from db import config
from db.diagnose import database_problem
from db.errors import EXIT_CANNOT_RUN, CannotRun

DEVICES = ("auto", "cpu", "cuda")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> logging.Logger:
    logger = logging.getLogger("cxr")
    for handler in list(logger.handlers):  # a second main() in one process must not log everything twice
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logger


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help="database URL (default: $CXR_DB_URL or $CXR_HOME/cxr.db)")


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help="where the model runs; auto: CUDA when there is one, else the CPU "
                             "(default: %(default)s)")


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages too (tracebacks, and paths, which may identify patients)")


def field_defaults(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults, for argparse: the dataclass stays the one source of a command's defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None, log: logging.Logger,
            command: Callable[[argparse.Namespace], int]) -> int:
    """A command's ``main``: parse ``argv``, set up logging (``-v``), and run ``command`` under :func:`run_command`."""
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    return run_command(log, getattr(args, "db", None), lambda: command(args))


def run_command(log: logging.Logger, url: str | None, command: Callable[[], int]) -> int:
    """Run ``command``; a :class:`~db.errors.CannotRun` (an old schema, no model, a missing device or file, ...)
    and a database that is unreachable or failed become their exit code and one log line."""
    try:
        return command()
    except CannotRun as exc:
        log.log(exc.log_level, "%s", exc)
        return exc.exit_code
    except (OperationalError, InterfaceError) as exc:
        log.error("%s", database_problem(config.database_url(url), exc))
    return EXIT_CANNOT_RUN


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its text (SQLAlchemy puts the statement's values below)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
