from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import migrate
from db.engine import get_engine, write_session
from db.models import ModelVersion

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")


@pytest.fixture(autouse=True)
def fresh_streamlit_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def test_landing_page_names_the_fix_for_a_missing_schema():
    app = AppTest.from_file(APP).run()
    assert not app.exception
    assert "cxr-db upgrade" in app.error[0].value


def test_landing_page_shows_counts_and_flags_a_synthetic_model():
    engine = get_engine()
    migrate.upgrade(engine)
    with write_session(engine) as session:
        session.add(ModelVersion(sha256="a" * 64, path="/m.pt", name="demo", architecture="resnet18",
                                 classes=["covid", "normal", "pneumonia"], input_size=64,
                                 preprocessing_hash="b" * 64, is_active=True, is_synthetic=True))
    app = AppTest.from_file(APP).run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["Images", "Predictions", "Reviewed images", "Reviewers"]
    assert "synthetic" in app.warning[0].value
    assert any("add-reviewer" in info.value for info in app.info)
