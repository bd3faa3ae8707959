"""What the scorer reads and writes: images and where they lie, runs, predictions, failures (model versions are
in :mod:`db.model_versions`).

Functions take a Session and never commit; the scorer commits one transaction per batch. A batch is written
with one Core statement per table (:func:`store_results`): per-row ORM statements cost milliseconds each in
statement construction alone, more than the scoring of the image.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Image, ImageFile, ModelTrainingImage, Prediction, ScoringFailure, ScoringRun, utcnow
from db.paths import to_stored

IMAGE_META_COLUMNS = (
    "format", "rows", "cols", "modality", "body_part", "view_position", "study_uid", "series_uid", "sop_uid",
    "manufacturer", "photometric", "bits_stored", "burned_in_annotation", "patient_pseudonym",
)


@dataclass(frozen=True)
class FileStat:
    path: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class KnownFile:
    """What the database already knows about a path whose size and mtime are unchanged."""

    image_id: int | None
    sha256: str | None
    scored: bool
    in_scope: bool | None
    failed: bool

    @property
    def settled(self) -> bool:
        """Nothing left to do for this content: scored by this model version, or out of scope."""
        return self.scored or self.in_scope is False


@dataclass(frozen=True)
class Score:
    """What the model said about one image."""

    probabilities: dict[str, float]
    predicted_class: str
    confidence: float
    entropy: float


@dataclass(frozen=True)
class ImageResult:
    """One decoded image to store: its content, the paths that hold it, its metadata and, if scored, its score."""

    sha256: str
    stats: tuple[FileStat, ...]  # the first is where the content was first seen
    values: dict[str, Any]  # image_values(meta)
    in_scope: bool
    scope_reason: str
    score: Score | None = None
    # (model version id, score) of each challenger that scored the image in the shadow of ``score``'s version
    shadow_scores: tuple[tuple[int, Score], ...] = ()


@dataclass(frozen=True)
class FileFailure:
    stat: FileStat
    reason: str
    message: str


def _insert(session: Session, table: Table):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))


def _execute_many(session: Session, statement, rows: list[dict[str, Any]]) -> None:
    """One Core executemany in the session's transaction (and savepoint), bypassing the ORM's per-row work."""
    if rows:
        session.connection().execute(statement, rows)


# --- runs -----------------------------------------------------------------------------------------------

def start_run(session: Session, arguments: dict[str, Any], model_version_id: int | None, pid: int) -> ScoringRun:
    run = ScoringRun(host=socket.gethostname(), pid=pid, arguments=arguments, model_version_id=model_version_id)
    session.add(run)
    session.flush()
    return run


def mark_interrupted_runs(session: Session) -> int:
    """Runs still 'running' when the run lock is free were killed; say so. Returns how many."""
    result = session.execute(update(ScoringRun).where(ScoringRun.status == "running")
                             .values(status="interrupted"))
    return result.rowcount or 0


def update_run(session: Session, run_id: int, *, status: str | None = None, finished: bool = False,
               **counts: int) -> None:
    values: dict[str, Any] = dict(counts)
    if status is not None:
        values["status"] = status
    if finished:
        values["finished_at"] = utcnow()
    session.execute(update(ScoringRun).where(ScoringRun.id == run_id).values(**values))


# --- files and images -----------------------------------------------------------------------------------

def known_files(session: Session, stats: Iterable[FileStat], model_version_id: int) -> dict[str, KnownFile]:
    """For each file whose size and mtime are unchanged since it was last seen, what is already known.

    Keyed by ``FileStat.path``. A file that failed before and is unchanged is known as ``failed``.
    """
    stats = list(stats)
    by_path = {storable_path(s.path): s for s in stats}
    known: dict[str, KnownFile] = {}
    for chunk in _chunks(list(by_path), 500):
        rows = session.execute(
            select(ImageFile.path, ImageFile.size_bytes, ImageFile.mtime_ns, ImageFile.image_id, Image.sha256,
                   Image.in_scope, Prediction.id)
            .join(Image, Image.id == ImageFile.image_id)
            .outerjoin(Prediction, (Prediction.image_id == Image.id)
                       & (Prediction.model_version_id == model_version_id))
            .where(ImageFile.path.in_(chunk)))
        for path, size, mtime_ns, image_id, sha, in_scope, prediction_id in rows:
            stat = by_path[path]
            if (size, mtime_ns) == (stat.size_bytes, stat.mtime_ns):
                known[stat.path] = KnownFile(image_id, sha, prediction_id is not None, in_scope, failed=False)
        failures = session.execute(
            select(ScoringFailure.path, ScoringFailure.size_bytes, ScoringFailure.mtime_ns)
            .where(ScoringFailure.path.in_(chunk)))
        for path, size, mtime_ns in failures:
            stat = by_path[path]
            if stat.path not in known and (size, mtime_ns) == (stat.size_bytes, stat.mtime_ns):
                known[stat.path] = KnownFile(None, None, False, None, failed=True)
    return known


def images_by_sha(session: Session, shas: Iterable[str], model_version_id: int) -> dict[str, KnownFile]:
    """For content already in the database (perhaps at another path): its image and whether it is scored."""
    found: dict[str, KnownFile] = {}
    for chunk in _chunks(list(set(shas)), 500):
        rows = session.execute(
            select(Image.sha256, Image.id, Image.in_scope, Prediction.id)
            .outerjoin(Prediction, (Prediction.image_id == Image.id)
                       & (Prediction.model_version_id == model_version_id))
            .where(Image.sha256.in_(chunk)))
        for sha, image_id, in_scope, prediction_id in rows:
            found[sha] = KnownFile(image_id, sha, prediction_id is not None, in_scope, failed=False)
    return found


def predicted_versions(session: Session, shas: Iterable[str], model_version_ids: Iterable[int]) -> dict[str, set[int]]:
    """For content already in the database: which of ``model_version_ids`` have a prediction for it (content
    none of them scored is left out)."""
    versions = list(model_version_ids)
    found: dict[str, set[int]] = {}
    if not versions:
        return found
    for chunk in _chunks(list(set(shas)), 500):
        rows = session.execute(
            select(Image.sha256, Prediction.model_version_id).join(Prediction, Prediction.image_id == Image.id)
            .where(Image.sha256.in_(chunk), Prediction.model_version_id.in_(versions)))
        for sha, version_id in rows:
            found.setdefault(sha, set()).add(version_id)
    return found


def image_values(meta: dict[str, Any]) -> dict[str, Any]:
    """The images table's metadata columns from the reader's ``meta``: plain values, cut to their columns.
    Pure Python, so the scorer's decode workers compute it, not the process that writes."""
    values = {key: _fit_column(key, meta.get(key)) for key in IMAGE_META_COLUMNS}
    values["study_date"] = parse_dicom_date(meta.get("study_date"))
    values.update(_pixel_spacing(meta.get("pixel_spacing")))
    return values


def store_results(session: Session, model_version_id: int, run_id: int, images: Sequence[ImageResult],
                  failures: Sequence[FileFailure]) -> None:
    """A batch's images, the paths that hold them, their predictions (the challengers' too) and the batch's
    failures: one statement per table, and per model version for the predictions. Raises whatever the database
    raises; the caller decides whether to retry row by row."""
    ids = store_images(session, images)
    record_files(session, [(stat, ids[image.sha256]) for image in images for stat in image.stats])
    add_predictions(session, model_version_id, run_id,
                    [(ids[image.sha256], image.score) for image in images if image.score is not None])
    shadow: dict[int, list[tuple[int, Score]]] = {}
    for image in images:
        for version_id, score in image.shadow_scores:
            shadow.setdefault(version_id, []).append((ids[image.sha256], score))
    for version_id, scores in shadow.items():
        add_predictions(session, version_id, run_id, scores)
    add_failures(session, run_id, failures)


def store_images(session: Session, images: Sequence[ImageResult]) -> dict[str, int]:
    """Inserts the images whose content is new; returns the id of every image's content, by sha256."""
    now = utcnow()
    rows = [{**image.values, "sha256": image.sha256, "path": storable_path(image.stats[0].path),
             "size_bytes": image.stats[0].size_bytes, "mtime": image.stats[0].mtime_ns / 1e9,
             "in_scope": image.in_scope, "scope_reason": _fit_column("scope_reason", image.scope_reason),
             "first_seen_at": now} for image in images]
    _execute_many(session, _insert(session, Image.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
                  rows)
    ids: dict[str, int] = {}
    for chunk in _chunks([image.sha256 for image in images], 500):
        ids.update(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).all())
    return ids


def record_files(session: Session, locations: Sequence[tuple[FileStat, int]]) -> None:
    """Remember that each ``stat.path`` holds its image at this size and mtime."""
    now = utcnow()
    statement = _insert(session, ImageFile.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["path"],
        set_={"size_bytes": statement.excluded.size_bytes, "mtime_ns": statement.excluded.mtime_ns,
              "image_id": statement.excluded.image_id, "last_seen_at": statement.excluded.last_seen_at})
    _execute_many(session, statement, [
        {"path": storable_path(stat.path), "size_bytes": stat.size_bytes, "mtime_ns": stat.mtime_ns,
         "image_id": image_id, "last_seen_at": now} for stat, image_id in locations])


@dataclass(frozen=True)
class PatientAssignment:
    known: int  # paths that hold an image the database knows
    changed: int  # PNG/JPEG images given a new or changed pseudonym
    changed_trained_on: int  # ... whose content a model version trained or validated on


def set_patient_pseudonyms(session: Session, pseudonyms: dict[str, str]) -> PatientAssignment:
    """Give the PNG and JPEG images held at these stored paths these patient pseudonyms (their files carry no
    Patient ID); a DICOM image keeps the pseudonym of its own Patient ID."""
    known, changes = 0, {}
    for chunk in _chunks(list(pseudonyms), 500):
        rows = session.execute(select(ImageFile.path, Image.id, Image.format, Image.patient_pseudonym)
                               .join(Image, Image.id == ImageFile.image_id).where(ImageFile.path.in_(chunk)))
        for path, image_id, image_format, current in rows:
            known += 1
            if image_format != "dicom" and current != pseudonyms[path]:
                changes[image_id] = pseudonyms[path]
    trained_on = 0
    for chunk in _chunks(list(changes), 500):
        trained_on += session.scalar(select(func.count(func.distinct(Image.id))).join(
            ModelTrainingImage, ModelTrainingImage.sha256 == Image.sha256).where(Image.id.in_(chunk)))
    if changes:
        session.execute(update(Image), [{"id": image_id, "patient_pseudonym": pseudonym}
                                        for image_id, pseudonym in changes.items()])
    return PatientAssignment(known, len(changes), trained_on)


def films_without_patient(session: Session, paths: Sequence[str]) -> int:
    """How many PNG and JPEG images held at these stored paths have no patient pseudonym."""
    images: set[int] = set()
    for chunk in _chunks(list(paths), 500):
        images.update(session.scalars(select(ImageFile.image_id).join(Image, Image.id == ImageFile.image_id).where(
            ImageFile.path.in_(chunk), Image.format != "dicom", Image.patient_pseudonym.is_(None))))
    return len(images)


def add_predictions(session: Session, model_version_id: int, run_id: int,
                    scores: Sequence[tuple[int, Score]]) -> None:
    """Inserts each (image id, score), or does nothing for an image this model version already scored."""
    now = utcnow()
    statement = _insert(session, Prediction.__table__).on_conflict_do_nothing(
        index_elements=["image_id", "model_version_id"])
    _execute_many(session, statement, [
        {"image_id": image_id, "model_version_id": model_version_id, "run_id": run_id,
         "probabilities": score.probabilities, "predicted_class": score.predicted_class,
         "confidence": score.confidence, "entropy": score.entropy, "scored_at": now} for image_id, score in scores])


def add_failures(session: Session, run_id: int, failures: Sequence[FileFailure]) -> None:
    now = utcnow()
    _execute_many(session, ScoringFailure.__table__.insert(), [
        {"run_id": run_id, "path": storable_path(f.stat.path), "size_bytes": f.stat.size_bytes,
         "mtime_ns": f.stat.mtime_ns, "reason": f.reason, "message": f.message, "created_at": now}
        for f in failures])


def upsert_image(session: Session, *, sha256: str, stat: FileStat, meta: dict[str, Any],
                 in_scope: bool, scope_reason: str) -> int:
    """The id of the image with this content, inserted from the reader's metadata if it is new."""
    image = ImageResult(sha256, (stat,), image_values(meta), in_scope, scope_reason)
    return store_images(session, [image])[sha256]


def record_file(session: Session, stat: FileStat, image_id: int) -> None:
    """Remember that ``stat.path`` holds image ``image_id`` at this size and mtime."""
    record_files(session, [(stat, image_id)])


def add_prediction(session: Session, *, image_id: int, model_version_id: int, run_id: int,
                   probabilities: dict[str, float], predicted_class: str, confidence: float,
                   entropy: float) -> None:
    """Insert, or do nothing if this model version already scored this image."""
    add_predictions(session, model_version_id, run_id,
                    [(image_id, Score(probabilities, predicted_class, confidence, entropy))])


def add_failure(session: Session, run_id: int, stat: FileStat, reason: str, message: str) -> None:
    add_failures(session, run_id, [FileFailure(stat, reason, message)])


def run_failures(session: Session, run_id: int | None = None, limit: int | None = None) -> list[ScoringFailure]:
    """The failures recorded by a run (default: the latest run that recorded any), in the order they failed; the
    first ``limit`` of them when given."""
    if run_id is None:
        run_id = session.scalar(select(func.max(ScoringFailure.run_id)))
    return list(session.scalars(select(ScoringFailure).where(ScoringFailure.run_id == run_id)
                                .order_by(ScoringFailure.id).limit(limit)))


# --- helpers --------------------------------------------------------------------------------------------

def storable_path(path: str) -> str:
    """A path as the database stores it: lossless text, one line, no collisions (:mod:`db.paths`)."""
    return to_stored(path)


def parse_dicom_date(value: Any) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD, or the ACR-NEMA YYYY.MM.DD that PS3.5 asks readers to accept) that is a real
    date, or a date; None for anything else. Never lenient: strptime read "2026120" as 2026-01-20, and a wrong
    study date misleads a reader more than a missing one."""
    if value is None or isinstance(value, dt.date):
        return value
    match = _DICOM_DATE.fullmatch(str(value).strip("\x00 "))
    if match is None:
        return None
    try:
        return dt.date(int(match["year"]), int(match["month"]), int(match["day"]))
    except ValueError:  # not a calendar date: 20240230, 20241341, 00000000
        return None


_DICOM_DATE = re.compile(r"(?P<year>[0-9]{4})(?P<dot>\.?)(?P<month>[0-9]{2})(?P=dot)(?P<day>[0-9]{2})")


def refused_study_date(meta: dict[str, Any]) -> bool:
    """Whether the header has a StudyDate that :func:`parse_dicom_date` refused (stored as NULL; the scorer counts
    them, never showing the value)."""
    value = meta.get("study_date")
    return value is not None and str(value).strip("\x00 ") != "" and parse_dicom_date(value) is None


def _fit_column(name: str, value: Any) -> Any:
    """A metadata string cut to its column's length: a malformed header must not fail a whole batch
    (PostgreSQL enforces VARCHAR lengths; SQLite does not)."""
    length = getattr(Image.__table__.columns[name].type, "length", None)
    if isinstance(value, str) and length is not None:
        return value[:length]
    return value


def _pixel_spacing(value: Any) -> dict[str, float | None]:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return {"pixel_spacing_row": None, "pixel_spacing_col": None}
    return {"pixel_spacing_row": row, "pixel_spacing_col": col}


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def known_sop_instances(session: Session, sop_uids: Iterable[str]) -> set[str]:
    """The SOP Instance UIDs among ``sop_uids`` that an image in the database already has (scored, out of scope or
    kept from an earlier run, by whatever way it arrived)."""
    known: set[str] = set()
    for chunk in _chunks(list(set(sop_uids)), 500):
        known.update(session.scalars(select(Image.sop_uid).where(Image.sop_uid.in_(chunk))))
    return known
