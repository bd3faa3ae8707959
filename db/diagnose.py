"""One line that says what is wrong with a database a command could not use, without its password."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

SECRET_QUERY_KEYS = ("password", "sslpassword", "passfile")


def shown_url(url: str) -> str:
    """The URL as logs and files may show it: the password hidden, in the authority part and in the query
    string (libpq and psycopg also take ``?password=...``)."""
    parsed = make_url(url)
    hidden = {key: "***" for key in parsed.query if key.lower() in SECRET_QUERY_KEYS}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def database_problem(url: str, exc: BaseException) -> str:
    """Why the database at ``url`` failed with ``exc`` (a DBAPI error wrapped by SQLAlchemy), in one line."""
    detail = _first_line(getattr(exc, "orig", None) or exc)
    lowered = detail.lower()
    shown = shown_url(url)
    if "disk is full" in lowered or "no space left" in lowered or "could not extend file" in lowered:
        return f"the disk holding database {shown} is full ({detail}); nothing of the failed batch was kept"
    if "readonly" in lowered or "read-only" in lowered or _sqlite_file_is_read_only(url):
        return f"database {shown} is read-only ({detail}); scoring and reviews need to write to it"
    return f"database {shown} is unreachable: {detail}"


def _sqlite_file_is_read_only(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return False
    path = Path(parsed.database).expanduser()
    folder = path.parent if path.parent.exists() else None
    try:
        if folder is not None and os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
        # SQLite in WAL mode writes beside the file (-wal, -shm), so the folder must be writable too.
        return (path.exists() and not os.access(path, os.W_OK)) or (folder is not None
                                                                     and not os.access(folder, os.W_OK))
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
