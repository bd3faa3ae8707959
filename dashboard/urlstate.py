"""The worklist's filter, order and page in the URL query, so that they survive opening a case, coming back,
a reload and a shared link. Pure functions over the query's strings (invalid values fall back to defaults)."""

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


def filter_from_query(query: Mapping[str, str | list[str]], default_version: int, max_wait_days: int,
                      default_status: str = "unreviewed") -> WorklistFilter:
    def one(key: str) -> str | None:
        value = query.get(key)
        if isinstance(value, list):
            value = value[-1] if value else None
        return value or None

    classes = query.get("cls") or ()
    classes = tuple(sorted({classes} if isinstance(classes, str) else set(classes)))
    status = one("status")
    return WorklistFilter(
        model_version_id=_int(one("v"), default_version), classes=tuple(c for c in classes if c),
        confidence_min=_fraction(one("cmin"), 0.0), confidence_max=_fraction(one("cmax"), 1.0),
        status=status if status in STATUSES else default_status,
        date_field=one("datefield") if one("datefield") in DATE_FIELDS else "scored",
        date_from=_date(one("from")), date_to=_date(one("to")), modality=one("mod"), view=one("view"),
        folder=one("folder"), outside_lungs=one("outside") == "1",
        sort=one("sort") if one("sort") in SORTS else "uncertainty", max_wait_days=max_wait_days)


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
    value = query.get(PAGE)
    return max(1, _int(value[-1] if isinstance(value, list) and value else value, 1))


def image_from_query(query: Mapping[str, str | list[str]]) -> int | None:
    value = query.get(IMAGE)
    value = value[-1] if isinstance(value, list) and value else value
    return _int(value, None)


def _int(value, default):
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _fraction(value: str | None, default: float) -> float:
    try:
        number = float(value) if value is not None else default
    except ValueError:
        return default
    return min(1.0, max(0.0, number)) if number == number else default


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None
