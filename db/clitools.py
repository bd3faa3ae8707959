"""Shared by the command-line tools: the options every command has (one definition, one help text each),
logging on the ``cxr`` logger, and the one place where "cannot run" conditions become an exit code and a line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import select
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from db import config
from db.diagnose import database_problem
from db.errors import EXIT_CANNOT_RUN, CannotRun
from db.paths import to_stored

DEVICES = ("auto", "cpu", "cuda")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFileError(CannotRun):
    """The log file asked for cannot be opened (a missing or read-only folder, a full disk): a nightly run whose
    log goes nowhere must not start."""


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> logging.Logger:
    """Log to stderr and, when asked, also to ``log_file``. Raises :class:`LogFileError` for a log file that
    cannot be opened, after stderr's handler is in place, so that the one line saying so is seen."""
    logger = logging.getLogger("cxr")
    for handler in list(logger.handlers):  # a second main() in one process must not log everything twice
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    _add_handler(logger, logging.StreamHandler(sys.stderr))
    if log_file is not None:
        _add_handler(logger, _file_handler(log_file))
    return logger


def _add_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)


def _file_handler(log_file: Path) -> logging.FileHandler:
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        return logging.FileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        raise LogFileError(f"cannot open the log file {log_file}: {exc.strerror or one_line(exc)}; "
                           "pass a --log-file in a writable folder") from None


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
    """A command's ``main``: parse ``argv``, then set up logging (``-v``, ``--log-file`` where the command has
    it) and run ``command``, both under :func:`run_command`: a log file that cannot be opened is a "cannot
    run" like any other (exit 2, one line), not a traceback with exit 1 ("some files failed" to cxr-score)."""
    args = parser.parse_args(argv)

    def logged() -> int:
        setup_logging(getattr(args, "log_file", None), args.verbose)
        return command(args)

    return run_command(log, getattr(args, "db", None), logged)


def run_command(log: logging.Logger, url: str | None, command: Callable[[], int]) -> int:
    """Run ``command``; a :class:`~db.errors.CannotRun` (an old schema, no model, a missing device or file, ...),
    a database that is unreachable or failed, and a file the machine refuses (a full disk, a read-only folder)
    become their exit code and one log line."""
    try:
        return command()
    except CannotRun as exc:
        log.log(exc.log_level, "%s", exc)
        return exc.exit_code
    except (OperationalError, InterfaceError) as exc:
        log.error("%s", database_problem(config.database_url(url), exc))
    except Exception as exc:
        refused = os_error_in(exc)
        if refused is None:
            raise  # a bug, not a condition: its traceback is what fixes it
        if isinstance(refused, BrokenPipeError) and _stdout_reader_gone():
            return _output_closed()
        log.debug("the command stopped", exc_info=True)
        log.error("cannot go on: %s (-v shows where)", one_line(refused))
    return EXIT_CANNOT_RUN


EXIT_OUTPUT_CLOSED = 141  # what a shell reports for a tool that SIGPIPE ended: 128 + 13


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (polling its write end reports an error), as
    opposed to a broken pipe elsewhere (a socket), which is a refusal like any other."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _output_closed() -> int:
    """The reader of standard output went away (``cxr-db failures | head``): end quietly, as Unix tools do, rather
    than blame the machine. Standard output goes to /dev/null so that Python's flush at exit cannot fail again
    (the recipe of Python's signal documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OUTPUT_CLOSED


def os_error_in(exc: BaseException) -> OSError | None:
    """The machine's refusal (a full disk, a read-only folder, a missing file) behind ``exc``: ``exc`` itself or
    an exception it was raised from or while handling. Why the chain: torch.save, when a write fails, raises
    its own RuntimeError from finishing the archive, with the OSError as its context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


ESCAPES_HELP = ("text from the database is printed with the escapes of stored file paths: a control character as "
                "\\xNN (\\x0a a newline, \\x09 a tab, \\x1b ESC), any other character that is not printable as "
                "\\uNNNN (\\u0085 a C1 control, \\u2028 a line separator, \\u202e a bidi override, \\u200b a "
                "zero-width space), a byte that is not UTF-8 as \\xNN (\\xff), and a backslash doubled (\\\\); "
                "so each record is one line, nothing in it can drive the terminal, and a path shows as it is stored")


def printable(value: object) -> str:
    """``value`` as one line that cannot drive a terminal, unambiguously: the escapes stored file paths use
    (:func:`db.paths.to_stored`), so every printed text stands for exactly one original and a path read back
    with :func:`db.paths.to_fs` prints as it is stored."""
    return to_stored(str(value))


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its text (SQLAlchemy puts the statement's values below)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
