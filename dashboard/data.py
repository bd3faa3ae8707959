"""Streamlit-side reads: one cached engine per process, and the ``db`` query functions cached with short TTLs.

Every function here reads; writes go through :mod:`dashboard.actions`, which clears the caches a write
affects. Nothing here decides who may see what: the pages are only reachable when signed in.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st
from sqlalchemy import Engine

from db import agreement, attributions, cases, events, migrate, model_versions, overview, reviewers, worklist
from db.config import private_tmp
from db.engine import get_engine, read_session
from db.models import ModelVersion
from db.paths import to_fs
from db.reviews import FlaggedCase, flagged_cases
from db.summary import Summary, database_summary
from model_training import gate
from scoring.imaging import ViewingImage, read_for_viewing
from scoring.imaging.verified import read_verified


@st.cache_resource
def engine() -> Engine:
    return get_engine()


def schema_problem() -> str | None:
    """Why the dashboard cannot use the database, or None when it can."""
    try:
        migrate.require_current(engine())
    except migrate.SchemaOutOfDate as exc:
        return str(exc)
    return None


@st.cache_data(ttl=30, show_spinner=False)
def summary() -> Summary:
    with read_session(engine()) as session:
        return database_summary(session)


@st.cache_data(ttl=60, show_spinner=False)
def has_accounts() -> bool:
    with read_session(engine()) as session:
        return bool(reviewers.list_reviewers(session))


# --- model versions ------------------------------------------------------------------------------------

@st.cache_data(ttl=30, show_spinner=False)
def versions() -> list[dict]:
    """Every registered version as plain values, oldest first."""
    with read_session(engine()) as session:
        return [dict(id=v.id, label=model_versions.label(v), name=v.name, architecture=v.architecture,
                     classes=list(v.classes), input_size=v.input_size, temperature=v.temperature,
                     metrics=dict(v.metrics or {}), created_at=v.created_at, is_active=v.is_active,
                     is_synthetic=v.is_synthetic, is_challenger=v.is_challenger, first_active_at=v.first_active_at,
                     path=v.path, sha256=v.sha256)
                for v in model_versions.list_versions(session)]


@st.cache_data(ttl=30, show_spinner=False)
def default_version_id() -> int | None:
    with read_session(engine()) as session:
        return model_versions.default_version_id(session)


def version(version_id: int | None) -> dict | None:
    return next((v for v in versions() if v["id"] == version_id), None)


# --- worklist ------------------------------------------------------------------------------------------

@st.cache_data(ttl=300, show_spinner=False)
def image_attribute_values() -> dict[str, list[str]]:
    with read_session(engine()) as session:
        return worklist.attribute_values(session)


@st.cache_data(ttl=5, show_spinner=False)
def worklist_page(flt: worklist.WorklistFilter, page: int, reviewer_id: int) -> worklist.WorklistPage:
    with read_session(engine()) as session:
        return worklist.worklist_page(session, flt, page=page, reviewer_id=reviewer_id)


@st.cache_data(ttl=30, show_spinner=False)  # cleared by every review of this session; others' within 30 s
def position(flt: worklist.WorklistFilter, image_id: int) -> tuple[int | None, int]:
    with read_session(engine()) as session:
        return worklist.position(session, flt, image_id), worklist.count(session, flt)


def neighbour(flt: worklist.WorklistFilter, image_id: int, step: int, reviewer_id: int) -> int | None:
    with read_session(engine()) as session:
        return worklist.neighbour(session, flt, image_id, step=step, skip_claimed_for=reviewer_id)


def first_case(flt: worklist.WorklistFilter, reviewer_id: int) -> int | None:
    with read_session(engine()) as session:
        return worklist.first_case(session, flt, skip_claimed_for=reviewer_id)


# --- cases ---------------------------------------------------------------------------------------------

@st.cache_data(ttl=60, show_spinner=False)
def case_detail(image_id: int, version_id: int | None) -> cases.CaseDetail | None:
    with read_session(engine()) as session:
        return cases.case_detail(session, image_id, version_id)


@st.cache_data(ttl=60, show_spinner=False)
def prior_studies(image_id: int, version_id: int | None) -> list[cases.PriorStudy]:
    with read_session(engine()) as session:
        return cases.prior_studies(session, image_id, version_id)


@st.cache_resource(ttl=600, max_entries=12, show_spinner=False)
def viewing_image(image_id: int) -> ViewingImage:
    """The decoded image, read only from bytes whose hash is the image's (its first known path that still holds
    them; raises ``NoVerifiedCopy`` when none does). Kept as it is, not copied: large arrays."""
    with read_session(engine()) as session:
        source = attributions.image_source(session, image_id)
    paths = [to_fs(path) for path in source.paths] if source else []
    return read_verified(paths, source.sha256 if source else "", read_for_viewing, workdir=private_tmp())


@st.cache_data(ttl=30, show_spinner=False)
def flagged() -> list[FlaggedCase]:
    with read_session(engine()) as session:
        return flagged_cases(session)


# --- models and overview -------------------------------------------------------------------------------

@st.cache_data(ttl=60, show_spinner="Comparing on the site's own cases…")
def gate_decision(version_id: int) -> gate.Decision:
    """What the promotion gate says of promoting the version now (its bootstrap takes a few seconds)."""
    with read_session(engine()) as session:
        return gate.decide(session, session.get(ModelVersion, version_id))


@st.cache_data(ttl=60, show_spinner=False)
def gate_overrides(limit: int = 20) -> list[events.EventRow]:
    with read_session(engine()) as session:
        return events.recent_events(session, limit=limit, kinds=[events.PROMOTE_OVERRIDE])


@st.cache_data(ttl=30, show_spinner=False)
def version_agreement(version_id: int) -> agreement.VersionAgreement:
    with read_session(engine()) as session:
        return agreement.version_agreement(session, version_id)


@st.cache_data(ttl=60, show_spinner=False)
def training_cases(version_id: int) -> tuple[int, list[agreement.TrainingCase]]:
    with read_session(engine()) as session:
        return agreement.training_cases(session, version_id)


@st.cache_data(ttl=30, show_spinner=False)
def overview_data(version_id: int | None) -> dict:
    now = dt.datetime.now(dt.UTC)
    with read_session(engine()) as session:
        return dict(
            counts=overview.counts(session, version_id), runs=overview.recent_runs(session),
            volume=overview.daily_volume(session, version_id, now=now),
            mix=overview.class_mix(session, version_id) if version_id else {},
            histogram=overview.confidence_histogram(session, version_id) if version_id else [],
            agreement=agreement.agreement_by_day(session, version_id, now=now))


@st.cache_data(ttl=30, show_spinner=False)
def runs_with_failures() -> list[overview.RunWithFailures]:
    with read_session(engine()) as session:
        return overview.runs_with_failures(session)


@st.cache_data(ttl=30, show_spinner=False)
def failures_by_reason(run_id: int) -> overview.RunFailures:
    with read_session(engine()) as session:
        return overview.failures_by_reason(session, run_id)


# --- accounts ------------------------------------------------------------------------------------------

@st.cache_data(ttl=10, show_spinner=False)
def accounts() -> list[dict]:
    with read_session(engine()) as session:
        return [dict(id=r.id, username=r.username, display_name=r.display_name, role=r.role,
                     is_active=r.is_active, created_at=r.created_at) for r in reviewers.list_reviewers(session)]


@st.cache_data(ttl=10, show_spinner=False)
def audit_events(limit: int = 200) -> list[events.EventRow]:
    with read_session(engine()) as session:
        return events.recent_events(session, limit=limit)


def clear_after_review(image_id: int) -> None:
    """A review changes its case and the lists; other cases' details (the preloaded next one) stay cached."""
    for version in versions():
        case_detail.clear(image_id, version["id"])
    case_detail.clear(image_id, None)
    for cached in (prior_studies, worklist_page, position, flagged, version_agreement, overview_data, summary):
        cached.clear()


def clear_after_promotion() -> None:
    for cached in (versions, default_version_id, worklist_page, position, case_detail, overview_data, summary,
                   gate_decision, gate_overrides):
        cached.clear()


def clear_after_account_change() -> None:
    for cached in (accounts, audit_events, has_accounts, summary):
        cached.clear()
