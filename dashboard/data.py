"""Streamlit-side access to the database: one cached engine per process, cached queries."""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from db import migrate
from db.engine import get_engine, read_session
from db.summary import Summary, database_summary


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


@st.cache_data(ttl=30)
def summary() -> Summary:
    with read_session(engine()) as session:
        return database_summary(session)
