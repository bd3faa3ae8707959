from __future__ import annotations

import stat

import pytest

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


@pytest.mark.parametrize("key", ["00", "ab" * 15])
def test_a_short_pseudonym_key_in_the_environment_is_refused(isolated_home, monkeypatch, key):
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", key)
    with pytest.raises(ValueError, match=f"CXR_PSEUDONYM_KEY holds a key of {len(key) // 2} bytes"):
        config.pseudonymise("PAT-12345")


@pytest.mark.parametrize("key", ["", "00", "ab" * 15])
def test_a_short_key_file_is_refused_and_kept(isolated_home, key):
    key_file = isolated_home / config.PSEUDONYM_KEY_FILE
    key_file.write_text(key + "\n")  # e.g. a key file emptied by a crash or a bad copy
    with pytest.raises(ValueError, match=f"holds a key of {len(key) // 2} bytes.*Restore"):
        config.pseudonymise("PAT-12345")
    assert key_file.read_text() == key + "\n"  # left for the operator, never replaced by a new key


def test_a_key_of_sixteen_bytes_is_enough(isolated_home, monkeypatch):
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", "ab" * 16)
    assert config.pseudonymise("PAT-12345").startswith("P-")
