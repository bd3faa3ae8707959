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

from db.files import fsync_folder

PSEUDONYM_KEY_FILE = "pseudonym.key"
MIN_PSEUDONYM_KEY_BYTES = 16


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
    otherwise ``$CXR_HOME/pseudonym.key`` is created with mode 0600 on first use. A key shorter than
    ``MIN_PSEUDONYM_KEY_BYTES`` is refused: with a short (or empty) key anyone could recompute every
    pseudonym from a list of patient IDs.
    """
    env = os.environ.get("CXR_PSEUDONYM_KEY")
    if env:
        try:
            key = bytes.fromhex(env)
        except ValueError as exc:
            raise ValueError("CXR_PSEUDONYM_KEY must be hexadecimal") from exc
        return _long_enough(key, "CXR_PSEUDONYM_KEY")
    path = ensure_home() / PSEUDONYM_KEY_FILE
    if not path.exists():
        _create_key_file(path)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as exc:
        raise ValueError(f"{path} must hold the key in hexadecimal") from exc
    return _long_enough(key, str(path))


def _long_enough(key: bytes, source: str) -> bytes:
    if len(key) < MIN_PSEUDONYM_KEY_BYTES:
        # Never replaced by a new key here: that would give every patient a new pseudonym and cut them off
        # from their earlier studies. The operator restores the key (from a backup or another machine).
        raise ValueError(f"{source} holds a key of {len(key)} bytes; a pseudonym key needs at least "
                         f"{MIN_PSEUDONYM_KEY_BYTES} ({2 * MIN_PSEUDONYM_KEY_BYTES} hexadecimal digits). Restore "
                         "this installation's key from its backup; a new key gives every patient a new pseudonym")
    return key


def _create_key_file(path: Path) -> None:
    # Written aside, flushed to disk and hard-linked into place, so that neither a concurrent reader nor a
    # machine that crashed just after finds a half-written or empty key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; its key stands
    finally:
        tmp.unlink()
    fsync_folder(path.parent)


def pseudonym_key_fingerprint() -> str:
    """Names this installation's pseudonym key without revealing it, so that machines that must agree on the
    key (the nodes of a Ray cluster, say) can compare theirs."""
    return hmac.new(pseudonym_key(), b"cxr-review pseudonym key fingerprint", hashlib.sha256).hexdigest()[:16]


def pseudonymise(patient_id: str | None) -> str | None:
    """A keyed hash of a PatientID: stable within an installation, useless without the key."""
    if patient_id is None or not str(patient_id).strip():
        return None
    digest = hmac.new(pseudonym_key(), str(patient_id).strip().encode("utf-8"), hashlib.sha256)
    return "P-" + digest.hexdigest()[:16]
