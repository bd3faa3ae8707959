from __future__ import annotations

import stat

from db import config


def test_defaults_follow_cxr_home(isolated_home, monkeypatch):
    assert config.cxr_home() == isolated_home
    assert config.database_url() == f"sqlite:///{isolated_home / 'cxr.db'}"
    monkeypatch.setenv("CXR_DB_URL", "postgresql+psycopg://u@h/db")
    assert config.database_url() == "postgresql+psycopg://u@h/db"
    assert config.database_url("sqlite:///other.db") == "sqlite:///other.db"


def test_pseudonyms_are_stable_keyed_and_reveal_nothing(isolated_home, monkeypatch):
    first = config.pseudonymise("PAT-12345")
    assert first == config.pseudonymise(" PAT-12345 ")
    assert "12345" not in first and first != config.pseudonymise("PAT-12346")
    key_file = isolated_home / config.PSEUDONYM_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", "00" * 32)
    assert config.pseudonymise("PAT-12345") != first
    assert config.pseudonymise("") is None and config.pseudonymise(None) is None
