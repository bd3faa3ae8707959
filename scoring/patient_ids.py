"""``cxr-score --patient-ids CSV``: the patients of PNG and JPEG films, whose files carry no Patient ID.

Without a patient, each such film counts as a patient of its own: the training split can then put two films of one
patient on both sides, the promotion gate counts films as patients, and the case page shows no earlier films. The
CSV has the columns ``file`` and ``patient_id`` (those of ``cxr-train``'s labels.csv, which can be given as it is;
other columns are ignored), ``file`` relative to the CSV's folder or absolute. After scoring, every PNG or JPEG
film the database holds at one of those files gets the pseudonym of its patient (the keyed hash a DICOM film gets
from its Patient ID; the ids themselves are never stored or logged), films scored by earlier runs too, and a
corrected CSV corrects them. DICOM films keep the patient of their own Patient ID. Rows with an empty
``patient_id`` are skipped.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from db import results
from db.config import pseudonymise
from db.engine import write_session
from db.errors import CannotRun

log = logging.getLogger("cxr.score")

COLUMNS = ("file", "patient_id")


@dataclass(frozen=True)
class PatientIds:
    """The CSV's films, by the paths the database may store them at, and their patients' pseudonyms."""

    source: Path
    pseudonyms: dict[str, str]
    files: int  # the CSV's files (``pseudonyms`` also holds the real path of a file named through a symlink)


def read_patient_ids(source: Path) -> PatientIds:
    """The CSV at ``source``; CannotRun (before any scoring) when it cannot be read, lacks a column, or gives
    one file two patients."""
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in COLUMNS if name not in (reader.fieldnames or ())]
            if missing:
                raise CannotRun(f"--patient-ids {source} has no column {' or '.join(missing)} (it needs "
                                f"{', '.join(COLUMNS)})")
            pseudonyms, files = _pseudonyms(reader, source)
            return PatientIds(source, pseudonyms, files)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CannotRun(f"cannot read --patient-ids {source}: {getattr(exc, 'strerror', None) or exc}") from None


def _pseudonyms(reader: csv.DictReader, source: Path) -> tuple[dict[str, str], int]:
    folder = os.path.dirname(os.path.abspath(source))
    pseudonyms: dict[str, str] = {}
    first_line: dict[str, int] = {}
    files = set()
    for row in reader:
        file, pseudonym = (row.get("file") or "").strip(), pseudonymise(row.get("patient_id"))
        if not file or pseudonym is None:
            continue
        absolute = os.path.abspath(os.path.join(folder, file))
        files.add(absolute)
        # The scorer stores a file at the path it was given, which may be the real one where the CSV's folder
        # was reached through a symbolic link (or the other way round): the file is matched at both.
        for path in {results.storable_path(absolute), results.storable_path(os.path.realpath(absolute))}:
            if pseudonyms.setdefault(path, pseudonym) != pseudonym:  # lines, never a patient or a file's name
                raise CannotRun(f"--patient-ids {source}: lines {first_line[path]} and {reader.line_num} give one "
                                "file two different patients")
            first_line.setdefault(path, reader.line_num)
    return pseudonyms, len(files)


def assign_patients(engine: Engine, patient_ids: PatientIds, found: Sequence[str]) -> dict[str, Any]:
    """Give the CSV's PNG and JPEG films their patients; say how many of the run's ``found`` files (as discovered)
    hold such a film still without one."""
    with write_session(engine) as session:
        done = results.set_patient_pseudonyms(session, _with_found_files(patient_ids.pseudonyms, found))
        without = results.films_without_patient(session, [results.storable_path(path) for path in found])
    log.info("--patient-ids: %d of its %d files hold films the database knows; %d PNG/JPEG films got a patient "
             "(new or changed)", done.known, patient_ids.files, done.changed)
    if done.changed_trained_on:
        log.warning("%d of them were trained or validated on by a model version: a retraining from that version "
                    "splits them with their patient now, so its validation may hold some films its starting weights "
                    "trained on (give --patient-ids from the first run on)", done.changed_trained_on)
    if without:
        log.warning("%d PNG/JPEG films found by this run have no row in --patient-ids %s: each counts as a patient "
                    "of its own", without, patient_ids.source)
    return {"files": patient_ids.files, "known": done.known, "changed": done.changed,
            "changed_trained_on": done.changed_trained_on, "without_patient": without}


def _with_found_files(pseudonyms: dict[str, str], found: Sequence[str]) -> dict[str, str]:
    """``pseudonyms`` plus the run's files reached through a symbolic link, under the path the run stores, where
    the CSV names their real path."""
    extended = dict(pseudonyms)
    for path in found:
        stored = results.storable_path(path)
        if stored not in extended:
            real = extended.get(results.storable_path(os.path.realpath(path)))
            if real is not None:
                extended[stored] = real
    return extended
