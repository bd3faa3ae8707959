"""The state of an installation for the dashboard's overview: counts, the last scoring runs (with what their
challengers scored in the shadow: counts only) and the series behind its charts. Aggregation happens in SQL.
Functions take a Session and never commit.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Integer, cast, exists, func, select
from sqlalchemy.orm import Session

from db.models import Image, ImageFile, Prediction, Review, ScoringFailure, ScoringRun, utcnow
from db.results import run_failures
from db.reviews import latest_reviews

CONFIDENCE_BINS = 20
FAILED_FILES_SHOWN = 500  # a folder of thousands of non-images is counted in full, listed in part


@dataclass(frozen=True)
class Counts:
    scored: int  # images with a prediction of the version
    awaiting_review: int
    reviewed: int  # images with at least one review
    flagged: int  # images whose latest review is flagged for retraining
    failed_files: int  # files that failed and have not been scored since
    out_of_scope: int


@dataclass(frozen=True)
class RunRow:
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    model_version_id: int | None
    scanned: int
    scored: int
    skipped: int
    out_of_scope: int
    failed: int
    known_failures: int
    # Challengers of the run (scoring.run names them in its arguments): images each scored in the shadow, by
    # model version id, and those the run left out with the reason. Counts only: readers never see their output.
    shadow_scored: dict[int, int] = field(default_factory=dict)
    shadow_unavailable: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunWithFailures:
    run_id: int
    started_at: dt.datetime
    failures: int  # recorded by the run: the files it could not score


@dataclass(frozen=True)
class FailedFile:
    reason: str
    path: str  # as stored (db.paths: one printable line)
    detail: str  # the message, less the file name it starts with


@dataclass(frozen=True)
class RunFailures:
    run_id: int
    by_reason: dict[str, int]  # every failure of the run, the most frequent reason first
    files: list[FailedFile]  # the first FAILED_FILES_SHOWN, in the order they failed

    @cached_property
    def folder(self) -> str:
        """The deepest folder every listed file is in ("" when they share no more than the root): the Overview
        names the files from there, so that long absolute paths leave room for what is wrong with them."""
        parents = [posixpath.dirname(f.path) for f in self.files]
        if not parents or not all(posixpath.isabs(p) for p in parents):
            return ""
        common = posixpath.commonpath(parents)
        return "" if common == "/" else common

    def name_in_folder(self, failed: FailedFile) -> str:
        folder = self.folder
        return failed.path[len(folder) + 1:] if folder else failed.path


@dataclass(frozen=True)
class DayCount:
    day: dt.date
    count: int


@dataclass(frozen=True)
class HistogramBin:
    predicted_class: str
    low: float  # the bin covers [low, low + 1 / CONFIDENCE_BINS)
    count: int


def counts(session: Session, model_version_id: int | None) -> Counts:
    def n(query) -> int:
        return session.scalar(query) or 0

    reviewed_any = exists().where(Review.image_id == Prediction.image_id)
    latest = latest_reviews()
    scored = awaiting = 0
    if model_version_id is not None:
        of_version = Prediction.model_version_id == model_version_id
        scored = n(select(func.count()).select_from(Prediction).where(of_version))
        awaiting = n(select(func.count()).select_from(Prediction).where(of_version, ~reviewed_any))
    return Counts(
        scored=scored, awaiting_review=awaiting,
        reviewed=n(select(func.count(func.distinct(Review.image_id)))),
        flagged=n(select(func.count()).select_from(Review).join(latest, latest.c.review_id == Review.id)
                  .where(Review.flagged_for_retraining)),
        failed_files=n(select(func.count(func.distinct(ScoringFailure.path)))
                       .where(~exists().where(ImageFile.path == ScoringFailure.path))),
        out_of_scope=n(select(func.count()).select_from(Image).where(Image.in_scope.is_(False))),
    )


def recent_runs(session: Session, limit: int = 10) -> list[RunRow]:
    runs = list(session.scalars(select(ScoringRun).order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc())
                                .limit(limit)))
    shadow = shadow_scored(session, runs)
    return [RunRow(r.id, r.started_at, r.finished_at, r.status, r.model_version_id, r.scanned, r.scored, r.skipped,
                   r.out_of_scope, r.failed, r.known_failures, shadow.get(r.id, {}),
                   {int(v): str(why) for v, why in (r.arguments or {}).get("challengers_unavailable", {}).items()})
            for r in runs]


def runs_with_failures(session: Session, limit: int = 10) -> list[RunWithFailures]:
    """The latest runs that recorded failures, newest first, with how many."""
    rows = session.execute(select(ScoringRun.id, ScoringRun.started_at, func.count(ScoringFailure.id))
                           .join(ScoringFailure, ScoringFailure.run_id == ScoringRun.id)
                           .group_by(ScoringRun.id, ScoringRun.started_at)
                           .order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc()).limit(limit))
    return [RunWithFailures(run_id, started_at, n) for run_id, started_at, n in rows]


def failures_by_reason(session: Session, run_id: int, shown: int = FAILED_FILES_SHOWN) -> RunFailures:
    """What a run could not score: the count per reason, and the first ``shown`` files (``results.run_failures``)
    with their messages."""
    counts = session.execute(select(ScoringFailure.reason, func.count()).where(ScoringFailure.run_id == run_id)
                             .group_by(ScoringFailure.reason).order_by(func.count().desc(), ScoringFailure.reason))
    return RunFailures(run_id, dict(counts.all()),
                       [FailedFile(f.reason, f.path, f.message.removeprefix(f"{f.path}: "))
                        for f in run_failures(session, run_id, limit=shown)])


def shadow_scored(session: Session, runs: Sequence[ScoringRun]) -> dict[int, dict[int, int]]:
    """Per run, the images each of its challengers scored in it (0 included), counted from their predictions.

    Only the challengers' predictions since the oldest of these runs began are read (the index on model version
    and time), so the cost follows the recent runs' volume, not the table's."""
    challengers = {r.id: [int(v) for v in (r.arguments or {}).get("challengers", ())] for r in runs}
    versions = {v for ids in challengers.values() for v in ids}
    if not versions:
        return {}
    found = {run_id: dict.fromkeys(ids, 0) for run_id, ids in challengers.items() if ids}
    rows = session.execute(
        select(Prediction.run_id, Prediction.model_version_id, func.count())
        .where(Prediction.model_version_id.in_(versions), Prediction.scored_at >= min(r.started_at for r in runs),
               Prediction.run_id.in_(list(found)))
        .group_by(Prediction.run_id, Prediction.model_version_id))
    for run_id, version_id, n in rows:
        if version_id in found[run_id]:  # a version that was the run's own (promoted since) is not its shadow
            found[run_id][version_id] = n
    return found


def daily_volume(session: Session, model_version_id: int | None = None, *, days: int = 90,
                 now: dt.datetime | None = None) -> list[DayCount]:
    """Predictions stored per day (UTC) over the last ``days``."""
    since = (now or utcnow()) - dt.timedelta(days=days)
    day = func.date(Prediction.scored_at)
    query = select(day, func.count()).where(Prediction.scored_at >= since).group_by(day).order_by(day)
    if model_version_id is not None:
        query = query.where(Prediction.model_version_id == model_version_id)
    return [DayCount(_as_date(d), c) for d, c in session.execute(query)]


def class_mix(session: Session, model_version_id: int) -> dict[str, int]:
    rows = session.execute(select(Prediction.predicted_class, func.count())
                           .where(Prediction.model_version_id == model_version_id)
                           .group_by(Prediction.predicted_class).order_by(Prediction.predicted_class))
    return dict(rows.all())


def confidence_histogram(session: Session, model_version_id: int) -> list[HistogramBin]:
    """Counts of confidence in ``CONFIDENCE_BINS`` equal bins over [0, 1], per predicted class."""
    bin_index = func.min(cast(Prediction.confidence * CONFIDENCE_BINS, Integer), CONFIDENCE_BINS - 1)
    if session.get_bind().dialect.name == "postgresql":
        # PostgreSQL rounds on a cast to integer, and its two-argument min is least()
        bin_index = func.least(func.floor(Prediction.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)
    rows = session.execute(select(Prediction.predicted_class, bin_index, func.count())
                           .where(Prediction.model_version_id == model_version_id)
                           .group_by(Prediction.predicted_class, bin_index))
    return [HistogramBin(cls, int(b) / CONFIDENCE_BINS, c) for cls, b, c in rows]


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
