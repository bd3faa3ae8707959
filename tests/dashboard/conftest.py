"""A small scored database for the dashboard's AppTests: a synthetic fill whose images are real cxr-dev PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from db import migrate, signin, synthetic
from db.engine import get_engine, read_session, write_session
from db.hashing import file_sha256
from db.models import Image

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")
PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Filled:
    version_id: int
    image_ids: list[int]
    admin_id: int
    reviewer_id: int
    password: str = PASSWORD


@pytest.fixture(autouse=True)
def fresh_streamlit_caches():
    """Empty caches, and ``__main__`` given back afterwards: AppTest runs the app as ``__main__``, and a later
    test's ``spawn`` child would re-run the app instead of pytest's main module."""
    import sys

    import streamlit as st

    main = sys.modules["__main__"]
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    sys.modules["__main__"] = main


@pytest.fixture
def filled(cxr_dev) -> Filled:
    """30 scored images (10 reviewed), accounts synthetic0 (admin) and synthetic1 (reviewer)."""
    engine = get_engine()
    migrate.upgrade(engine)
    pngs = sorted(cxr_dev.glob("*/*.png"))[:30]
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=30, reviews=10, reviewers=2, password=PASSWORD)
        for image_id, png in zip(fill.image_ids, pngs, strict=True):  # the case viewer checks the content
            session.execute(update(Image).where(Image.id == image_id).values(path=str(png), format="png",
                                                                             sha256=file_sha256(png)))
    return Filled(fill.model_version_id, fill.image_ids, fill.reviewer_ids[0], fill.reviewer_ids[1])


def account(account_id: int) -> signin.Account:
    """The account as the dashboard holds it after signing in (for calling ``dashboard.actions`` directly)."""
    with read_session(get_engine()) as session:
        return signin.current_account(session, account_id)


@pytest.fixture
def fake_maps(monkeypatch) -> list[tuple[int, str, str]]:
    """Attribution maps without a model (a bright square); the list records each (image, method, class) asked."""
    import numpy as np

    import scoring.attribution as attribution
    from scoring.attribution import AttributionMap

    calls = []

    def load_or_compute(engine, image_id, version_id, method, target, **params):
        calls.append((image_id, method, target))
        values = np.zeros((8, 8), dtype=np.float32)
        values[2:5, 2:5] = 1.0
        return AttributionMap(values=values, method=method, target_class=target, params={"layer": "layer4"},
                              value_min=0.0, value_max=1.0, outside_share=0.1, caption="test map", sanity_ok=True)

    monkeypatch.setattr(attribution, "load_or_compute", load_or_compute)
    monkeypatch.setattr(attribution, "is_cached", lambda *args, **kwargs: True)
    return calls


@pytest.fixture
def app():
    """Run the app: ``app(account_id, page=..., query=...)``, signed in as ``account_id`` (None: signed out)."""
    return run_app


@pytest.fixture
def texts():
    """Everything a page shows as text: ``texts(at)``."""
    return page_texts


def run_app(account_id: int | None = None, *, page: str | None = None, query: dict | None = None) -> AppTest:
    """The app, signed in as ``account_id`` (None: signed out), run once."""
    at = AppTest.from_file(APP, default_timeout=60)
    if account_id is not None:
        at.session_state["account_id"] = account_id
        at.session_state["session_epoch"] = account(account_id).session_epoch
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def viewer_data(at: AppTest) -> dict | None:
    """What the case page sent to its film viewer (films and overlay), or None when no viewer is on the page."""
    import json

    shown = [e for e in at.get("bidi_component") if e.proto.component_name == "cxr_case_viewer"]
    return json.loads(shown[0].proto.json) if shown else None


def page_texts(at: AppTest) -> str:
    """Everything a page shows as text (markdown, captions, alerts, titles, tables), for content checks."""
    parts = []
    for kind in ("markdown", "caption", "title", "subheader", "header", "info", "warning", "error", "success",
                 "metric"):
        for element in getattr(at, kind):
            parts.append(str(getattr(element, "value", "")) + " " + str(getattr(element, "label", "")))
    for frame in at.dataframe:
        parts.append(frame.value.to_csv())
    return "\n".join(parts)
