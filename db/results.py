"""What the scorer reads and writes: images and where they lie, runs, predictions, failures (model versions are
in :mod:`db.model_versions`).

Functions take a Session and never commit; the scorer commits one transaction per batch.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Image, ImageFile, Prediction, ScoringFailure, ScoringRun, utcnow

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


def _insert(session: Session, table):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))


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


def upsert_image(session: Session, *, sha256: str, stat: FileStat, meta: dict[str, Any],
                 in_scope: bool, scope_reason: str) -> int:
    """The id of the image with this content, inserted from the reader's metadata if it is new."""
    values = {key: _fit_column(key, meta.get(key)) for key in IMAGE_META_COLUMNS}
    values.update(
        sha256=sha256, path=storable_path(stat.path), size_bytes=stat.size_bytes, mtime=stat.mtime_ns / 1e9,
        study_date=parse_dicom_date(meta.get("study_date")), in_scope=in_scope,
        scope_reason=_fit_column("scope_reason", scope_reason),
        first_seen_at=utcnow(), **_pixel_spacing(meta.get("pixel_spacing")),
    )
    session.execute(_insert(session, Image).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    return session.scalar(select(Image.id).where(Image.sha256 == sha256))


def record_file(session: Session, stat: FileStat, image_id: int) -> None:
    """Remember that ``stat.path`` holds image ``image_id`` at this size and mtime."""
    statement = _insert(session, ImageFile).values(
        path=storable_path(stat.path), size_bytes=stat.size_bytes, mtime_ns=stat.mtime_ns, image_id=image_id,
        last_seen_at=utcnow())
    session.execute(statement.on_conflict_do_update(
        index_elements=["path"],
        set_={"size_bytes": statement.excluded.size_bytes, "mtime_ns": statement.excluded.mtime_ns,
              "image_id": statement.excluded.image_id, "last_seen_at": statement.excluded.last_seen_at}))


def add_prediction(session: Session, *, image_id: int, model_version_id: int, run_id: int,
                   probabilities: dict[str, float], predicted_class: str, confidence: float,
                   entropy: float) -> None:
    """Insert, or do nothing if this model version already scored this image."""
    session.execute(_insert(session, Prediction).values(
        image_id=image_id, model_version_id=model_version_id, run_id=run_id, probabilities=probabilities,
        predicted_class=predicted_class, confidence=confidence, entropy=entropy, scored_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["image_id", "model_version_id"]))


def add_failure(session: Session, run_id: int, stat: FileStat, reason: str, message: str) -> None:
    session.add(ScoringFailure(run_id=run_id, path=storable_path(stat.path), size_bytes=stat.size_bytes,
                               mtime_ns=stat.mtime_ns, reason=reason, message=message))


def run_failures(session: Session, run_id: int | None = None) -> list[ScoringFailure]:
    """The failures recorded by a run (default: the latest run that recorded any)."""
    if run_id is None:
        run_id = session.scalar(select(func.max(ScoringFailure.run_id)))
    return list(session.scalars(select(ScoringFailure).where(ScoringFailure.run_id == run_id)
                                .order_by(ScoringFailure.id)))


# --- helpers --------------------------------------------------------------------------------------------

def storable_path(path: str) -> str:
    """A path as text the database accepts: undecodable bytes of a file name become backslash escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_dicom_date(value: Any) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD) or a date; None when absent or malformed."""
    if value is None or isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


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
