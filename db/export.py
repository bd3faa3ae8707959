"""``cxr-export-flagged``: cases whose latest review is flagged for retraining, as CSV.

No patient names or raw IDs ever reach the database, so none can reach the file; file-system paths are left
out unless asked for. Cells a spreadsheet would run as a formula are neutralised with a leading apostrophe.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from db import migrate
from db.clitools import add_db_option, add_verbose_option, run_cli
from db.engine import get_engine, read_session
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


def columns_for(cases: Sequence[FlaggedCase], include_paths: bool) -> list[str]:
    classes = sorted({name for case in cases for name in case.probabilities})
    return [*BASE_COLUMNS, *(f"p_{name}" for name in classes), *REVIEW_COLUMNS,
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


def write_csv(cases: Sequence[FlaggedCase], out: TextIO, *, include_paths: bool = False) -> int:
    columns = columns_for(cases, include_paths)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for case in cases:
        writer.writerow(case_row(case, columns))
    return len(cases)


def flagged_csv(cases: Sequence[FlaggedCase], *, include_paths: bool = False) -> str:
    """The CSV as text, e.g. for a download button."""
    buffer = io.StringIO()
    write_csv(cases, buffer, include_paths=include_paths)
    return buffer.getvalue()


def parse_since(text: str) -> dt.datetime:
    try:
        since = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or an ISO date-time)") from None
    return since if since.tzinfo else since.replace(tzinfo=dt.UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-export-flagged", description=__doc__.split("\n\n")[0])
    add_db_option(parser)
    parser.add_argument("--since", type=parse_since, metavar="DATE", help="only reviews at or after DATE (UTC)")
    parser.add_argument("--out", default="-", metavar="FILE", help="output file, or - for standard output")
    parser.add_argument("--include-paths", action="store_true", help="add each image's file-system path")
    add_verbose_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, log, export)


def export(args: argparse.Namespace) -> int:
    engine = get_engine(args.db)
    migrate.require_current(engine)
    with read_session(engine) as session:
        cases = flagged_cases(session, args.since)
    if args.out == "-":
        write_csv(cases, sys.stdout, include_paths=args.include_paths)
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            write_csv(cases, handle, include_paths=args.include_paths)
        log.info("wrote %d flagged cases to %s", len(cases), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
