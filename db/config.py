"""Where CXR Review keeps its state, and the key for patient pseudonyms.

``CXR_HOME`` (default ``~/.cxr-review``) holds the SQLite file, model checkpoints, caches and logs.
``CXR_DB_URL`` overrides the database URL (default ``sqlite:///$CXR_HOME/cxr.db``); every CLI's
``--db URL`` overrides both.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

PSEUDONYM_KEY_FILE = "pseudonym.key"


def cxr_home() -> Path:
    return Path(os.environ.get("CXR_HOME") or Path.home() / ".cxr-review").expanduser()


def ensure_home() -> Path:
    home = cxr_home()
    home.mkdir(parents=True, exist_ok=True)
    return home


def private_tmp() -> Path:
    """``$CXR_HOME/tmp``, readable by this user only: short-lived copies of patient files (verified reads)."""
    folder = ensure_home() / "tmp"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def database_url(override: str | None = None) -> str:
    if override:
        return override
    env = os.environ.get("CXR_DB_URL")
    if env:
        return env
    return f"sqlite:///{cxr_home() / 'cxr.db'}"


def pseudonym_key() -> bytes:
    """The secret that keys patient pseudonyms, created once per installation.

    ``CXR_PSEUDONYM_KEY`` (hex) wins, so that several machines sharing one database can agree;
    otherwise ``$CXR_HOME/pseudonym.key`` is created with mode 0600 on first use.
    """
    env = os.environ.get("CXR_PSEUDONYM_KEY")
    if env:
        try:
            return bytes.fromhex(env)
        except ValueError as exc:
            raise ValueError("CXR_PSEUDONYM_KEY must be hexadecimal") from exc
    path = ensure_home() / PSEUDONYM_KEY_FILE
    if not path.exists():
        _create_key_file(path)
    return bytes.fromhex(path.read_text().strip())


def _create_key_file(path: Path) -> None:
    # Written aside and hard-linked into place, so a concurrent reader never sees a half-written key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; its key stands
    finally:
        tmp.unlink()


def pseudonymise(patient_id: str | None) -> str | None:
    """A keyed hash of a PatientID: stable within an installation, useless without the key."""
    if patient_id is None or not str(patient_id).strip():
        return None
    digest = hmac.new(pseudonym_key(), str(patient_id).strip().encode("utf-8"), hashlib.sha256)
    return "P-" + digest.hexdigest()[:16]
