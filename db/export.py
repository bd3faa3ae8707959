"""``cxr-export-flagged``: cases whose latest review is flagged for retraining, as CSV.

No patient names or raw IDs ever reach the database, so none can reach the file; file-system paths are left
out unless asked for. Cells a spreadsheet would run as a formula are neutralised with a leading apostrophe.

The columns are the same every night for the same registered model versions: one ``p_<class>`` column for each
class of any registered version, whether or not a flagged case has it (a script reading the nightly file must
not see columns come and go with the content). ``--out FILE`` is replaced whole or not at all: the CSV is
written under a temporary name beside it, fsynced and renamed, so a full disk or a kill leaves the previous file.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import migrate
from db.clitools import add_db_option, add_verbose_option, printable, run_cli
from db.engine import get_engine, read_session
from db.errors import CannotRun
from db.files import fsync_folder
from db.models import ModelVersion
from db.reviews import FlaggedCase, flagged_cases

log = logging.getLogger("cxr.export")

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # and full-width forms
# Characters a spreadsheet skips or shows as nothing before a formula: a cell that starts with any of them and
# then a trigger is still a formula to some of them. Whitespace (str.isspace) is checked separately.
INVISIBLE_PREFIXES = frozenset(
    "\ufeff"  # byte order mark
    "\u200b\u200c\u200d\u2060"  # zero-width space, non-joiner, joiner, word joiner
    "\u200e\u200f\u061c"  # left-to-right, right-to-left, Arabic letter marks
    "\u202a\u202b\u202c\u202d\u202e"  # bidi embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # bidi isolates
)
BASE_COLUMNS = ["case_id", "image_sha256", "patient_pseudonym", "study_date", "model_version", "predicted_class"]
REVIEW_COLUMNS = ["reviewer_label", "reviewer", "review_time", "comment"]


class ExportError(CannotRun):
    """The export cannot be written as asked; nothing was written, and a previous ``--out`` file is unchanged."""


def neutralise(value: Any) -> Any:
    """A string that a spreadsheet would evaluate gets a leading apostrophe; anything else is unchanged.

    Evaluated means: it starts with a formula trigger, also after leading whitespace, newlines, a byte order
    mark or invisible bidi and zero-width characters."""
    if isinstance(value, str) and _visible_start(value).startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def _visible_start(text: str) -> str:
    for index, char in enumerate(text):
        if char in "\t\r":
            return text[index:]  # triggers themselves
        if not (char.isspace() or char in INVISIBLE_PREFIXES):
            return text[index:]
    return ""


def export_classes(session: Session) -> list[str]:
    """The classes of every registered model version, sorted: the export's ``p_<class>`` columns.

    Why every version's and not the active one's: a flagged case may carry the prediction of an older version, and
    promoting another version must not change the file's columns. The set only grows, when a version with a new
    class is registered; it never depends on which cases are flagged."""
    return sorted({name for classes in session.scalars(select(ModelVersion.classes)) for name in classes})


def columns_for(cases: Sequence[FlaggedCase], include_paths: bool, classes: Iterable[str] = ()) -> list[str]:
    """The header: ``classes`` (:func:`export_classes`) give the ``p_`` columns; a class only a case has is added
    too (a database edited by hand), so no probability is ever dropped."""
    names = sorted({*classes, *(name for case in cases for name in case.probabilities)})
    return [*BASE_COLUMNS, *(f"p_{name}" for name in names), *REVIEW_COLUMNS,
            *(["path"] if include_paths else [])]


def case_row(case: FlaggedCase, columns: list[str]) -> list[Any]:
    values = {
        "case_id": case.case_id, "image_sha256": case.image_sha256, "patient_pseudonym": case.patient_pseudonym,
        "study_date": case.study_date.isoformat() if case.study_date else None,
        "model_version": case.model_version, "predicted_class": case.predicted_class,
        "reviewer_label": case.reviewer_label, "reviewer": case.reviewer,
        "review_time": case.review_time.isoformat(timespec="seconds"), "comment": case.comment, "path": case.path,
        **{f"p_{name}": round(float(p), 6) for name, p in case.probabilities.items()},
    }
    return [neutralise(values.get(column)) for column in columns]


def write_csv(cases: Sequence[FlaggedCase], out: TextIO, *, include_paths: bool = False, classes: Iterable[str] = (),
              cell: Callable[[Any], Any] = lambda value: value) -> int:
    """Write the CSV; ``cell`` is applied to every cell last (e.g. :func:`printable` for a terminal)."""
    columns = columns_for(cases, include_paths, classes)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for case in cases:
        writer.writerow([cell(value) for value in case_row(case, columns)])
    return len(cases)


def flagged_csv(cases: Sequence[FlaggedCase], *, include_paths: bool = False, classes: Iterable[str] = ()) -> str:
    """The CSV as text, e.g. for a download button; pass ``classes=export_classes(session)`` for the same columns
    as ``cxr-export-flagged`` writes."""
    buffer = io.StringIO()
    write_csv(cases, buffer, include_paths=include_paths, classes=classes)
    return buffer.getvalue()


def parse_since(text: str) -> dt.datetime:
    try:
        since = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or an ISO date-time)") from None
    return since if since.tzinfo else since.replace(tzinfo=dt.UTC)


def in_utc(since: dt.datetime) -> dt.datetime:
    """``since`` in UTC, as the database compares it; a date that has no UTC form is an :class:`ExportError`."""
    try:
        return since.astimezone(dt.UTC)
    except OverflowError:
        raise ExportError(f"--since {since.isoformat()} is out of range once converted to UTC (the dates that can "
                          "be compared run from 0001-01-01 to 9999-12-31 UTC)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-export-flagged", description=__doc__.split("\n\n")[0])
    add_db_option(parser)
    parser.add_argument("--since", type=parse_since, metavar="DATE",
                        help="only reviews at or after DATE (UTC unless it names its offset)")
    parser.add_argument("--out", default="-", metavar="FILE",
                        help="output file, replaced whole or not at all (written beside it, then renamed; a full "
                             "disk leaves the previous file), or - for standard output. Only a regular file or a "
                             "new name is taken: a FIFO, a device or a folder is refused. On a terminal, control "
                             "characters in the cells are shown as backslash escapes (\\x1b, \\x0a, a backslash "
                             "doubled); a file or a pipe gets the data unchanged")
    parser.add_argument("--include-paths", action="store_true", help="add each image's file-system path")
    add_verbose_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, log, export)


def export(args: argparse.Namespace) -> int:
    since = in_utc(args.since) if args.since else None
    out = None if args.out == "-" else checked_output(Path(args.out))
    engine = get_engine(args.db)
    migrate.require_current(engine)
    with read_session(engine) as session:
        cases = flagged_cases(session, since)
        classes = export_classes(session)
    if out is None:
        cell = _terminal_cell if sys.stdout.isatty() else (lambda value: value)  # a file or pipe gets the data
        write_csv(cases, sys.stdout, include_paths=args.include_paths, classes=classes, cell=cell)
        return 0
    try:
        write_replacing(out, lambda handle: write_csv(cases, handle, include_paths=args.include_paths,
                                                       classes=classes))
    except OSError as exc:
        raise ExportError(f"cannot write {printable(out)}: {exc.strerror or exc}; nothing was written, a previous "
                          "file there is unchanged") from None
    log.info("wrote %d flagged cases to %s", len(cases), printable(out))
    return 0


def _terminal_cell(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


def checked_output(path: Path) -> Path:
    """``path`` if the export may replace it: a regular file (links followed) or a new name in a folder that
    exists. A FIFO would block without a reader, and a device or folder is no place for a CSV."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ExportError(f"cannot use --out {printable(path)}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise ExportError(f"--out {printable(path)} is not a regular file (a FIFO, a device or a folder); give a file "
                          "name, or - for standard output")
    if not path.parent.is_dir():
        raise ExportError(f"--out {printable(path)}: folder {printable(path.parent)} does not exist")
    return path


def write_replacing(path: Path, write: Callable[[TextIO], Any]) -> None:
    """Replace ``path`` by what ``write`` writes, whole or not at all: a temporary file beside it, fsynced, then
    renamed over it (a symbolic link keeps pointing at its file, which is the one replaced). The new file keeps
    the old one's permissions, so whoever read it can read it still."""
    target = path.resolve()
    mode = _permissions(target)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with open(fd, "w", newline="", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def _permissions(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask  # what open(path, "w") would have made




if __name__ == "__main__":
    raise SystemExit(main())
