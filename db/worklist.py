"""The reviewers' worklist: one model version's predictions, filtered, ordered and paged in SQL.

Uncertainty order (normalised entropy, most uncertain first) is the default; cases that have waited longer
than ``max_wait_days`` since they were scored come first in it, so triage never buries a case. Every order
ends with the prediction id, so it is total and the previous/next case of any case is well defined (also of
a case that has just left the filter, e.g. by being reviewed). Functions take a Session and never commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace
from pathlib import PurePath

from sqlalchemy import ColumnElement, Select, and_, case, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from db import claims
from db.attributions import looks_outside_lungs
from db.models import Image, Prediction, Review, Reviewer, utcnow
from db.reviews import latest_reviews

STATUSES = ("all", "unreviewed", "reviewed", "flagged", "disagrees")
SORTS = ("uncertainty", "confidence", "date")
DATE_FIELDS = ("scored", "study")
DEFAULT_MAX_WAIT_DAYS = 7
PAGE_SIZE = 50


@dataclass(frozen=True)
class WorklistFilter:
    model_version_id: int
    classes: tuple[str, ...] = ()
    confidence_min: float = 0.0
    confidence_max: float = 1.0
    status: str = "all"
    date_field: str = "scored"
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str | None = None
    view: str | None = None
    folder: str | None = None
    outside_lungs: bool = False
    sort: str = "uncertainty"
    max_wait_days: int = DEFAULT_MAX_WAIT_DAYS

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown review status {self.status!r}")
        if self.sort not in SORTS:
            raise ValueError(f"unknown order {self.sort!r}")
        if self.date_field not in DATE_FIELDS:
            raise ValueError(f"unknown date field {self.date_field!r}")

    @property
    def active_filters(self) -> list[str]:
        """The names of the conditions that narrow the list (the order and the version are not filters)."""
        default = WorklistFilter(self.model_version_id)
        ignored = {"model_version_id", "sort", "max_wait_days", "date_field"}
        return [f.name for f in fields(self)
                if f.name not in ignored and getattr(self, f.name) != getattr(default, f.name)]


@dataclass(frozen=True)
class WorklistRow:
    image_id: int
    prediction_id: int
    file_name: str
    predicted_class: str
    confidence: float
    entropy: float
    scored_at: dt.datetime
    waited: dt.timedelta
    overdue: bool
    study_date: dt.date | None
    modality: str | None
    view_position: str | None
    latest_label: str | None
    latest_flagged: bool | None
    latest_reviewer: str | None  # who gave the latest review: display name, else user name
    claimed_by: str | None


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def first(self) -> int:
        return (self.page - 1) * self.page_size + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


def attribute_values(session: Session) -> dict[str, list[str]]:
    """The modalities and views present (for the filter menus)."""
    modalities = session.scalars(select(Image.modality).where(Image.modality.is_not(None)).distinct())
    views = session.scalars(select(Image.view_position).where(Image.view_position.is_not(None)).distinct())
    return {"modality": sorted(modalities), "view": sorted(views)}


def worklist_page(session: Session, flt: WorklistFilter, *, page: int = 1, page_size: int = PAGE_SIZE,
                  reviewer_id: int | None = None, now: dt.datetime | None = None) -> WorklistPage:
    now = now or utcnow()
    total = count(session, flt, now=now)
    page = max(1, min(page, max(1, -(-total // page_size))))
    ids = list(session.scalars(_ordered(select(Prediction.id), flt, now)
                               .offset((page - 1) * page_size).limit(page_size)))
    return WorklistPage(_rows(session, ids, flt, reviewer_id, now), total, page, page_size)


def _rows(session: Session, prediction_ids: list[int], flt: WorklistFilter, reviewer_id: int | None,
          now: dt.datetime) -> list[WorklistRow]:
    """The details of one page, in the order of ``prediction_ids``."""
    latest = aliased(Review)
    shown_name = func.coalesce(func.nullif(Reviewer.display_name, ""), Reviewer.username)
    fetched = {p.id: (p, *rest) for p, *rest in session.execute(
        select(Prediction, Image.path, Image.study_date, Image.modality, Image.view_position,
               latest.label, latest.flagged_for_retraining, shown_name)
        .join(Image, Image.id == Prediction.image_id)
        .outerjoin(latest, latest.id == _latest_review_id(Prediction.image_id))
        .outerjoin(Reviewer, Reviewer.id == latest.reviewer_id)
        .where(Prediction.id.in_(prediction_ids)))}
    held = claims.holders(session, [row[0].image_id for row in fetched.values()], reviewer_id, now=now)
    cutoff = _overdue_cutoff(flt, now)
    rows = []
    for prediction_id in prediction_ids:
        p, path, study_date, modality, view, label, flagged, reviewer = fetched[prediction_id]
        holder = held.get(p.image_id)
        rows.append(WorklistRow(
            image_id=p.image_id, prediction_id=p.id, file_name=PurePath(path).name, predicted_class=p.predicted_class,
            confidence=p.confidence, entropy=p.entropy, scored_at=p.scored_at, waited=now - p.scored_at,
            overdue=p.scored_at < cutoff, study_date=study_date, modality=modality, view_position=view,
            latest_label=label, latest_flagged=flagged, latest_reviewer=reviewer,
            claimed_by=holder.username if holder else None))
    return rows


def count(session: Session, flt: WorklistFilter, *, now: dt.datetime | None = None) -> int:
    return session.scalar(_filtered(select(func.count()), flt, now or utcnow())) or 0


def position(session: Session, flt: WorklistFilter, image_id: int, *, now: dt.datetime | None = None) -> int | None:
    """The 1-based place of ``image_id`` in the filtered list, or None when it is not in it."""
    now = now or utcnow()
    key = _key_of(session, flt, image_id, now)
    if key is None or not session.scalar(_filtered(select(func.count()), flt, now)
                                         .where(Prediction.image_id == image_id)):
        return None
    before = _filtered(select(func.count()), flt, now).where(_after(flt, now, key, reverse=True))
    return (session.scalar(before) or 0) + 1


def neighbour(session: Session, flt: WorklistFilter, image_id: int, *, step: int = 1,
              skip_claimed_for: int | None = None, now: dt.datetime | None = None) -> int | None:
    """The next (``step`` 1) or previous (-1) case after ``image_id`` in the filter's order, skipping cases
    that another reviewer holds when ``skip_claimed_for`` is given. ``image_id`` need not match the filter."""
    now = now or utcnow()
    key = _key_of(session, flt, image_id, now)
    if key is None:
        return first_case(session, flt, skip_claimed_for=skip_claimed_for, now=now) if step > 0 else None
    query = _ordered(select(Prediction.image_id), flt, now, reverse=step < 0).where(
        _after(flt, now, key, reverse=step < 0))
    return _first_unclaimed(session, query, skip_claimed_for, now)


def first_case(session: Session, flt: WorklistFilter, *, skip_claimed_for: int | None = None,
               now: dt.datetime | None = None) -> int | None:
    now = now or utcnow()
    query = _ordered(select(Prediction.image_id), flt, now)
    return _first_unclaimed(session, query, skip_claimed_for, now)


def without_review_filter(flt: WorklistFilter) -> WorklistFilter:
    return replace(flt, status="all")


# --- the query -------------------------------------------------------------------------------------------

def _filtered(query: Select, flt: WorklistFilter, now: dt.datetime) -> Select:
    return query.select_from(Prediction).where(*_conditions(flt, now))


def _ordered(query: Select, flt: WorklistFilter, now: dt.datetime, reverse: bool = False) -> Select:
    return _filtered(query, flt, now).order_by(*_order(flt, now, reverse))


def _conditions(flt: WorklistFilter, now: dt.datetime) -> list[ColumnElement[bool]]:
    """Conditions on the prediction itself, and sets of image ids for the rest: a join to every image row would
    cost more than the whole covering-index scan."""
    conditions: list[ColumnElement[bool]] = [Prediction.model_version_id == flt.model_version_id]
    if flt.classes:
        conditions.append(Prediction.predicted_class.in_(flt.classes))
    if flt.confidence_min > 0:
        conditions.append(Prediction.confidence >= flt.confidence_min)
    if flt.confidence_max < 1:
        conditions.append(Prediction.confidence <= flt.confidence_max)
    if flt.date_field == "scored":
        conditions.extend(_scored_conditions(flt))
    image_conditions = _image_conditions(flt)
    if image_conditions:
        conditions.append(Prediction.image_id.in_(select(Image.id).where(*image_conditions)))
    if flt.status != "all":
        conditions.append(_status_condition(flt.status, flt.model_version_id))
    if flt.outside_lungs:
        conditions.append(looks_outside_lungs(Prediction.image_id, Prediction.model_version_id))
    return conditions


def _image_conditions(flt: WorklistFilter) -> list[ColumnElement[bool]]:
    conditions = []
    if flt.modality:
        conditions.append(Image.modality == flt.modality)
    if flt.view:
        conditions.append(Image.view_position == flt.view)
    if flt.folder:
        conditions.append(Image.path.startswith(flt.folder.rstrip("/") + "/", autoescape=True))
    if flt.date_field == "study" and flt.date_from:
        conditions.append(Image.study_date >= flt.date_from)
    if flt.date_field == "study" and flt.date_to:
        conditions.append(Image.study_date <= flt.date_to)
    return conditions


def _scored_conditions(flt: WorklistFilter) -> list[ColumnElement[bool]]:
    out = []
    if flt.date_from:
        out.append(Prediction.scored_at >= dt.datetime.combine(flt.date_from, dt.time(), dt.UTC))
    if flt.date_to and flt.date_to < dt.date.max:  # the last representable day has no day after it: no bound
        out.append(Prediction.scored_at < dt.datetime.combine(flt.date_to + dt.timedelta(days=1), dt.time(), dt.UTC))
    return out


def _latest_review_id(image_id: ColumnElement[int]):
    review = aliased(Review)
    return (select(review.id).where(review.image_id == image_id)
            .order_by(review.created_at.desc(), review.id.desc()).limit(1).correlate_except(review)
            .scalar_subquery())


def _status_condition(status: str, model_version_id: int) -> ColumnElement[bool]:
    """Membership in a set of image ids (built once per query), not a subquery per prediction."""
    if status == "unreviewed":
        return Prediction.image_id.not_in(select(Review.image_id))
    if status == "reviewed":
        return Prediction.image_id.in_(select(Review.image_id))
    latest_ids = latest_reviews()
    latest = select(Review.image_id).join(latest_ids, latest_ids.c.review_id == Review.id)
    if status == "flagged":
        return Prediction.image_id.in_(latest.where(Review.flagged_for_retraining))
    predicted = aliased(Prediction)  # disagrees: the latest reading differs from this version's prediction
    predicted_class = (select(predicted.predicted_class)
                       .where(predicted.image_id == Review.image_id, predicted.model_version_id == model_version_id)
                       .scalar_subquery())
    return Prediction.image_id.in_(latest.where(Review.label != predicted_class))


def _overdue_cutoff(flt: WorklistFilter, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(days=flt.max_wait_days)


def _sort_keys(flt: WorklistFilter, now: dt.datetime) -> list[tuple[ColumnElement, bool]]:
    """(expression, descending) pairs, ending with the prediction id."""
    if flt.sort == "confidence":
        keys = [(Prediction.confidence, False)]
    elif flt.sort == "date":
        keys = [(Prediction.scored_at, False)]
    else:
        overdue = case((Prediction.scored_at < _overdue_cutoff(flt, now), 1), else_=0)
        keys = [(overdue, True), (Prediction.entropy, True)]
    return [*keys, (Prediction.id, False)]


def _order(flt: WorklistFilter, now: dt.datetime, reverse: bool = False) -> list[ColumnElement]:
    return [expr.desc() if descending != reverse else expr.asc() for expr, descending in _sort_keys(flt, now)]


def _key_of(session: Session, flt: WorklistFilter, image_id: int, now: dt.datetime) -> tuple | None:
    exprs = [expr for expr, _ in _sort_keys(flt, now)]
    row = session.execute(select(*exprs).where(Prediction.model_version_id == flt.model_version_id,
                                               Prediction.image_id == image_id)).first()
    return tuple(row) if row is not None else None


def _after(flt: WorklistFilter, now: dt.datetime, key: tuple, reverse: bool = False) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in the order (before it when ``reverse``): a lexicographic comparison."""
    keys = _sort_keys(flt, now)
    alternatives = []
    for i, (expr, descending) in enumerate(keys):
        later = expr < key[i] if descending != reverse else expr > key[i]
        alternatives.append(and_(*[e == key[j] for j, (e, _) in enumerate(keys[:i])], later))
    return or_(*alternatives) if alternatives else false()


def _first_unclaimed(session: Session, query: Select, reviewer_id: int | None, now: dt.datetime) -> int | None:
    offset = 0
    while True:
        ids = list(session.scalars(query.offset(offset).limit(20)))
        if not ids:
            return None
        held = claims.holders(session, ids, reviewer_id, now=now) if reviewer_id is not None else {}
        for image_id in ids:
            if image_id not in held:
                return image_id
        offset += len(ids)
