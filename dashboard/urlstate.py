"""The worklist's filter, order and page in the URL query, so that they survive opening a case, coming back,
a reload and a shared link. Pure functions over the query's strings: every value is checked against bounds (an
id the database can hold, a date a reader could mean), an invalid one falls back to its default, and
``invalid_keys`` names them so that the page can say so plainly. The folder filter (a path prefix) is for admins
only: for reviewers it is ignored, so that it cannot tell them whether a folder exists; so is the model version
(reviewers see the active version's output only)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from db.worklist import DATE_FIELDS, SORTS, STATUSES, WorklistFilter

# URL key -> WorklistFilter field
KEYS = {"v": "model_version_id", "cls": "classes", "cmin": "confidence_min", "cmax": "confidence_max",
        "status": "status", "datefield": "date_field", "from": "date_from", "to": "date_to", "mod": "modality",
        "view": "view", "folder": "folder", "outside": "outside_lungs", "sort": "sort"}
PAGE = "page"
IMAGE = "image"
MAX_ID = 2**31 - 1  # ids are PostgreSQL integers
MAX_PAGE = 1_000_000
MAX_TEXT = 200  # longer modality, view or folder values are not real ones
EARLIEST_DATE = dt.date(1900, 1, 1)


def filter_from_query(query: Mapping[str, str | list[str]], default_version: int, max_wait_days: int,
                      default_status: str = "unreviewed", *, allow_folder: bool = False,
                      any_version: bool = False) -> WorklistFilter:
    """The filter a link asks for. Readers (``any_version`` False) always get ``default_version``, the active one:
    a challenger's output, scored in the shadow, is never theirs to see, whatever the link says."""
    def one(key: str) -> str | None:
        return _one(query, key)

    classes = query.get("cls") or ()
    classes = tuple(sorted({classes} if isinstance(classes, str) else set(classes)))
    status = one("status")
    return WorklistFilter(
        model_version_id=_id(one("v"), default_version) if any_version else default_version,
        classes=tuple(c for c in classes if c and len(c) <= MAX_TEXT),
        confidence_min=_fraction(one("cmin"), 0.0), confidence_max=_fraction(one("cmax"), 1.0),
        status=status if status in STATUSES else default_status,
        date_field=one("datefield") if one("datefield") in DATE_FIELDS else "scored",
        date_from=_date(one("from")), date_to=_date(one("to")), modality=_text(one("mod")), view=_text(one("view")),
        folder=_text(one("folder")) if allow_folder else None, outside_lungs=one("outside") == "1",
        sort=one("sort") if one("sort") in SORTS else "uncertainty", max_wait_days=max_wait_days)


def invalid_keys(query: Mapping[str, str | list[str]]) -> list[str]:
    """The query's keys whose values were not valid and were ignored (for a plain message)."""
    checks = {"v": lambda v: _id(v, None) is not None, IMAGE: lambda v: _id(v, None) is not None,
              PAGE: lambda v: _bounded_int(v, 1, MAX_PAGE) is not None,
              "cmin": lambda v: _fraction(v, None) is not None, "cmax": lambda v: _fraction(v, None) is not None,
              "status": lambda v: v in STATUSES, "datefield": lambda v: v in DATE_FIELDS,
              "from": lambda v: _date(v) is not None, "to": lambda v: _date(v) is not None,
              "sort": lambda v: v in SORTS, "mod": lambda v: _text(v) is not None,
              "view": lambda v: _text(v) is not None, "folder": lambda v: _text(v) is not None}
    return [key for key, valid in checks.items() if _one(query, key) is not None and not valid(_one(query, key))]


def filter_to_query(flt: WorklistFilter, default_status: str = "unreviewed") -> dict[str, str | list[str]]:
    """Only what differs from the defaults, so that plain links stay short."""
    query: dict[str, str | list[str]] = {"v": str(flt.model_version_id)}
    if flt.classes:
        query["cls"] = list(flt.classes)
    if flt.confidence_min > 0:
        query["cmin"] = f"{flt.confidence_min:g}"
    if flt.confidence_max < 1:
        query["cmax"] = f"{flt.confidence_max:g}"
    if flt.status != default_status:
        query["status"] = flt.status
    if flt.date_field != "scored":
        query["datefield"] = flt.date_field
    for key, value in (("from", flt.date_from), ("to", flt.date_to)):
        if value:
            query[key] = value.isoformat()
    for key, value in (("mod", flt.modality), ("view", flt.view), ("folder", flt.folder)):
        if value:
            query[key] = value
    if flt.outside_lungs:
        query["outside"] = "1"
    if flt.sort != "uncertainty":
        query["sort"] = flt.sort
    return query


def cleared(flt: WorklistFilter, default_status: str = "unreviewed") -> WorklistFilter:
    """What "Clear filters" leaves: the same model version, every filter and the order at their defaults."""
    return WorklistFilter(flt.model_version_id, status=default_status, max_wait_days=flt.max_wait_days)


def describe_filters(flt: WorklistFilter) -> list[str]:
    """The active filters in words, with their values, e.g. ['unreviewed', 'confidence 0–0.5']."""
    active = set(flt.active_filters)
    words = []
    if "status" in active:
        words.append("reviewer disagrees with model" if flt.status == "disagrees" else flt.status)
    if "classes" in active:
        words.append("predicted " + " or ".join(flt.classes))
    if active & {"confidence_min", "confidence_max"}:
        words.append(f"confidence {flt.confidence_min:g}–{flt.confidence_max:g}")
    if active & {"date_from", "date_to"}:
        words.append(f"{flt.date_field} {flt.date_from or '…'} – {flt.date_to or '…'}")
    words += [f"{name} {getattr(flt, name)}" for name in ("modality", "view", "folder") if name in active]
    if "outside_lungs" in active:
        words.append("looks outside the lungs")
    return words


def widget_values(flt: WorklistFilter, version_id: int, version_classes: list[str], modalities: list[str],
                  views: list[str]) -> dict[str, Any]:
    """What each worklist filter widget (by key) shows for this filter: only values the widget offers."""
    return {"wl_version": version_id, "wl_classes": [c for c in flt.classes if c in version_classes],
            "wl_status": flt.status, "wl_sort": flt.sort, "wl_confidence": (flt.confidence_min, flt.confidence_max),
            "wl_date_field": flt.date_field,
            "wl_dates": (flt.date_from, flt.date_to) if flt.date_from and flt.date_to else (),
            "wl_modality": flt.modality if flt.modality in modalities else None,
            "wl_view": flt.view if flt.view in views else None,
            "wl_folder": flt.folder or "", "wl_outside": flt.outside_lungs}


def page_from_query(query: Mapping[str, str | list[str]]) -> int:
    return _bounded_int(_one(query, PAGE), 1, MAX_PAGE) or 1


def image_from_query(query: Mapping[str, str | list[str]]) -> int | None:
    return _id(_one(query, IMAGE), None)


def _one(query: Mapping[str, str | list[str]], key: str) -> str | None:
    value = query.get(key)
    if isinstance(value, list):
        value = value[-1] if value else None
    return value or None


def _bounded_int(value: str | None, low: int, high: int) -> int | None:
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > len(str(high)):
        return None  # also keeps int() away from 4300-digit strings
    number = int(value)
    return number if low <= number <= high else None


def _id(value: str | None, default: int | None) -> int | None:
    found = _bounded_int(value, 1, MAX_ID)
    return default if found is None else found


def _fraction(value: str | None, default: float | None) -> float | None:
    try:
        number = float(value) if value is not None else default
    except (ValueError, OverflowError):
        return default
    if number is None or number != number:  # NaN
        return default
    return min(1.0, max(0.0, number))


def _date(value: str | None) -> dt.date | None:
    """A date a reader could mean: from 1900 up to tomorrow (a date range's end may be today, in any time zone)."""
    try:
        day = dt.date.fromisoformat(value) if value and len(value) <= 10 else None
    except ValueError:
        return None
    return day if day is not None and EARLIEST_DATE <= day <= dt.date.today() + dt.timedelta(days=1) else None


def _text(value: str | None) -> str | None:
    return value if value is not None and len(value) <= MAX_TEXT and value.isprintable() else None
