"""Pulling chest radiographs from a PACS over DICOMweb, for ``cxr-score --dicomweb URL [--since DATE]``.

QIDO-RS finds the CR and DX series (of studies dated on or after ``--since``), then each series' instances; an
instance whose SOP Instance UID the database already has, or that is already in the cache, is never downloaded.
WADO-RS fetches the others in the archive's own transfer syntax (no transcoding) into
``$CXR_HOME/dicomweb/<server>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, each written atomically like
cxr-receive's (:func:`scoring.dicom_store.write_instance`). The run then scores the cache as a folder: the same
incremental, resumable, locked run. The cache is where the dashboard reads the films and where a later model
version scores them again, so it is kept; it holds patient data and is created readable by this user only.

Credentials never go on the command line: ``CXR_DICOMWEB_TOKEN`` (a bearer token) or ``CXR_DICOMWEB_USER`` and
``CXR_DICOMWEB_PASSWORD`` (HTTP basic), or a file named by ``CXR_DICOMWEB_CREDENTIALS`` with ``token=...`` or
``user=...`` and ``password=...`` lines, readable by its owner only. A URL with a user name or password in it is
refused. The log names the server and counts, never a credential or a patient.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import ipaddress
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from sqlalchemy import Engine

from db import results
from db.clitools import one_line
from db.config import cxr_home
from db.engine import read_session
from db.errors import CannotRun
from scoring import dicom_store
from scoring.dicom_store import Instance, Refused

log = logging.getLogger("cxr.score")

MODALITIES = ("CR", "DX")
# Tags of the QIDO-RS answers (DICOM JSON keys)
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
# The archive's stored transfer syntax: the scorer decodes what the archive keeps, and transcoding costs it time.
AS_STORED = (("application/dicom", "*"),)
TOKEN, USER, PASSWORD, CREDENTIALS_FILE = ("CXR_DICOMWEB_TOKEN", "CXR_DICOMWEB_USER", "CXR_DICOMWEB_PASSWORD",
                                           "CXR_DICOMWEB_CREDENTIALS")
TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class DicomwebSource:
    url: str
    since: dt.date | None = None  # studies dated on or after this day; None: every study


@dataclass
class PullCounts:
    series: int = 0  # CR and DX series found
    instances: int = 0  # their instances
    known: int = 0  # already in the database or the cache: not downloaded
    fetched: int = 0
    failed: int = 0  # not fetched (the server refused it, it is not a radiograph instance, the disk refused it)
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self), seconds=round(self.seconds, 3))


@dataclass(frozen=True)
class PulledInstance:
    study_uid: str
    series_uid: str
    sop_uid: str


def parse_since(text: str) -> dt.date:
    """``--since``: a date (2026-12-01 or 20261201), or a number of days back from today (``7d``)."""
    text = text.strip()
    days = re.fullmatch(r"(\d{1,5})d", text)
    if days:
        return dt.date.today() - dt.timedelta(days=int(days.group(1)))
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, form).date()
        except ValueError:
            pass
    raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor a number of days (7d)")


def check_url(url: str) -> str:
    """The base URL of the DICOMweb service, without a trailing slash; refused with credentials in it."""
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:  # checked first: the next message shows the URL
        raise CannotRun(f"the --dicomweb URL holds a user name or password; give credentials in {TOKEN}, "
                        f"{USER}/{PASSWORD} or a file named by {CREDENTIALS_FILE}, never on the command line")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CannotRun(f"--dicomweb {url!r} is not an http(s) URL of a DICOMweb service")
    return url.rstrip("/")


def is_protected(url: str) -> bool:
    """Whether what is sent to ``url`` is safe from the network: https, or plain http that stays on this machine."""
    parts = urlsplit(url)
    if parts.scheme == "https" or parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:  # a host name: only DNS knows where it goes
        return False


def server_name(url: str) -> str:
    """The server as the log and the cache folder name it: host and port (the path may hold a tenant)."""
    return urlsplit(url).netloc


def cache_folder(url: str) -> Path:
    """``$CXR_HOME/dicomweb/<host_port>-<hash of the URL>``: one folder per service, stable from run to run."""
    parts = urlsplit(url)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parts.netloc)
    return cxr_home() / "dicomweb" / f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def credentials_from_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{"token": ...}``, ``{"user": ..., "password": ...}`` or ``{}`` (no authentication)."""
    environ = os.environ if environ is None else environ
    if environ.get(CREDENTIALS_FILE):
        return read_credentials_file(Path(environ[CREDENTIALS_FILE]))
    if environ.get(TOKEN):
        return {"token": environ[TOKEN]}
    if environ.get(USER):
        if not environ.get(PASSWORD):
            raise CannotRun(f"{USER} is set but {PASSWORD} is not")
        return {"user": environ[USER], "password": environ[PASSWORD]}
    return {}


def read_credentials_file(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CannotRun(f"cannot read the credentials file {path} ({CREDENTIALS_FILE}): {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CannotRun(f"the credentials file {path} can be read by others; `chmod 600 {path}`")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in ("token", "user", "password"):
            raise CannotRun(f"{path} line {number}: expected token=..., user=... or password=...")
        values[key.strip()] = value.strip()
    if "token" in values:
        return {"token": values["token"]}
    if values.get("user") and values.get("password"):
        return {"user": values["user"], "password": values["password"]}
    raise CannotRun(f"{path} holds neither token=... nor both user=... and password=...")


def http_session(credentials: dict[str, str]) -> requests.Session:
    session = requests.Session()
    if "token" in credentials:
        session.headers["Authorization"] = f"Bearer {credentials['token']}"
    elif credentials:
        session.auth = (credentials["user"], credentials["password"])
    return session


def dicomweb_client(url: str, credentials: dict[str, str]):
    from dicomweb_client.api import DICOMwebClient

    if not is_protected(url):
        log.warning("DICOMweb %s over plain http: films, reports%s cross the network unencrypted; use https (or a "
                    "TLS proxy in front of the server)", server_name(url), " and credentials" if credentials else "")
    session = http_session(credentials)
    # requests has no default timeout: a server that stops answering must not hang the nightly run
    session.request = _with_timeout(session.request)  # type: ignore[method-assign]
    return DICOMwebClient(url, session=session)


def _with_timeout(request):
    def timed(*args, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT_SECONDS)
        return request(*args, **kwargs)
    return timed


def server_problem(url: str, exc: Exception) -> CannotRun:
    """A QIDO-RS query that failed: the run cannot know what to fetch."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        why = {401: "refused the credentials", 403: "refused access"}.get(code, "answered an error")
        return CannotRun(f"the DICOMweb server {server_name(url)} {why} (HTTP {code})")
    return CannotRun(f"cannot query the DICOMweb server {server_name(url)}: {type(exc).__name__}")


def find_instances(client, source: DicomwebSource) -> Iterator[PulledInstance]:
    """Every instance of the CR and DX series of the studies ``source`` asks for (QIDO-RS, paged)."""
    filters: dict[str, str] = {}
    if source.since is not None:
        filters["StudyDate"] = f"{source.since:%Y%m%d}-"
    for modality in MODALITIES:
        for series in client.search_for_series(search_filters={**filters, "Modality": modality},
                                               get_remaining=True):
            study_uid, series_uid = _uid(series, STUDY_UID), _uid(series, SERIES_UID)
            if not (study_uid and series_uid):
                continue
            for instance in client.search_for_instances(study_uid, series_uid, get_remaining=True):
                sop_uid = _uid(instance, SOP_UID)
                if sop_uid:
                    yield PulledInstance(study_uid, series_uid, sop_uid)


def _uid(attributes: dict[str, Any], tag: str) -> str | None:
    """The UID under ``tag``, if it is one: the study's and instance's become parts of a path in the cache."""
    values = (attributes.get(tag) or {}).get("Value") or []
    value = str(values[0]) if values else ""
    if not dicom_store.is_valid_uid(value):
        log.debug("a QIDO-RS answer without a valid %s left out", tag)
        return None
    return value


def pull(engine: Engine, source: DicomwebSource, credentials: dict[str, str] | None = None) -> tuple[Path, PullCounts]:
    """Fetch into the cache every instance of ``source`` not yet known; the cache folder and what was done.

    A query the server refuses stops the run (:class:`CannotRun`); an instance it will not give, or one that is not
    a radiograph instance, is counted as failed and asked for again on the next run; a full disk stops fetching and
    the run scores what has arrived.
    """
    started = time.perf_counter()
    url = check_url(source.url)
    client = dicomweb_client(url, credentials_from_environment() if credentials is None else credentials)
    folder = cache_folder(url)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    counts = PullCounts()
    try:
        found = list(dict.fromkeys(find_instances(client, source)))
    except Exception as exc:
        log.debug("the QIDO-RS query failed", exc_info=True)
        raise server_problem(url, exc) from None
    counts.series = len({i.series_uid for i in found})
    counts.instances = len(found)
    with read_session(engine) as session:
        known = results.known_sop_instances(session, [i.sop_uid for i in found])
    wanted = [i for i in found if i.sop_uid not in known and not _cached(folder, i)]
    counts.known = len(found) - len(wanted)
    log.info("DICOMweb %s: %d CR/DX series, %d instances, %d known, %d to fetch", server_name(url), counts.series,
             counts.instances, counts.known, len(wanted))
    for instance in wanted:
        try:
            counts.bytes += fetch(client, folder, instance)
            counts.fetched += 1
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                counts.failed = len(wanted) - counts.fetched  # this one and those not tried
                log.error("the DICOMweb cache cannot be written (%s): fetching stops, the run scores what arrived",
                          exc.strerror)
                break
            counts.failed += 1
            log.warning("an instance could not be written into the cache: %s", one_line(exc))
        except Exception as exc:  # one instance the server will not give, or that is not one we store
            counts.failed += 1
            log.warning("an instance could not be fetched: %s (asked for again next run)", _reason(exc))
            log.debug("instance %s of study %s", instance.sop_uid, instance.study_uid, exc_info=True)
    counts.seconds = time.perf_counter() - started
    log.info("DICOMweb %s: %d fetched (%.1f MB), %d failed, in %.1f s", server_name(url), counts.fetched,
             counts.bytes / 1e6, counts.failed, counts.seconds)
    return folder, counts


def _cached(folder: Path, instance: PulledInstance) -> bool:
    return Instance(instance.study_uid, instance.sop_uid).path_in(folder).is_file()


def fetch(client, folder: Path, wanted: PulledInstance) -> int:
    """Download one instance (WADO-RS, as stored) and write it atomically; its size in bytes."""
    ds = client.retrieve_instance(wanted.study_uid, wanted.series_uid, wanted.sop_uid, media_types=AS_STORED)
    instance = Instance(dicom_store.checked_uid(ds, "StudyInstanceUID"), dicom_store.checked_uid(ds, "SOPInstanceUID"))
    if instance.sop_uid != wanted.sop_uid:
        raise Refused(dicom_store.DOES_NOT_MATCH, "the server sent another SOP Instance UID than the one asked for")
    dicom_store.check_pixel_data(ds, str(ds.file_meta.TransferSyntaxUID))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    dicom_store.write_instance(folder, instance, data)
    return len(data)


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, Refused):
        return str(exc)
    return type(exc).__name__
