"""Shared by the command-line tools: logging on the ``cxr`` logger, and database errors as exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import OperationalError

from db import config, migrate

EXIT_CANNOT_RUN = 2

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


def run_database_command(log: logging.Logger, url: str | None, command: Callable[[], int]) -> int:
    """Run ``command``; an old schema or an unreachable database is logged and becomes exit code 2."""
    try:
        return command()
    except migrate.SchemaOutOfDate as exc:
        log.error("%s", exc)
    except OperationalError as exc:
        log.error("database %s is unreachable or failed: %s", config.database_url(url), exc.orig)
    return EXIT_CANNOT_RUN
