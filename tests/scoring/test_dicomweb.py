"""``cxr-score --dicomweb``: pulling chest radiographs from a real PACS (Debian's Orthanc with its DICOMweb plugin,
HTTP basic authentication, on loopback).

Orthanc holds the real CR film of shared/data/dicom (StudyDate 1901), pydicom-data's RG1 chest film twice (native
and JPEG 2000, one study of 2004), its RG3 extremity film (CR, out of scope) and a CT. A run finds the four CR
instances, fetches them once into the cache and scores them; the next run fetches nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re

import pydicom
import pytest
import requests
from sqlalchemy import select

from db.engine import create_database_engine, read_session
from db.errors import CannotRun
from db.models import Image, Prediction
from scoring import cli, dicom_store, dicomweb
from tests.scoring.orthanc import running_orthanc

pytestmark = pytest.mark.slow

USER, PASSWORD = "cxr-puller", "dicomweb-s3cret-9f2c"
FILM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # the real CR film in shared/data/dicom
CR_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, dicom_dir, pydicom_data):
    """Orthanc with DICOMweb and authentication, holding four CR instances and a CT; its UIDs by file name."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True,
                         users={USER: PASSWORD}) as orthanc:
        files = {FILM: dicom_dir / FILM, **{name: pydicom_data(name) for name in (*CR_FILES, "CT_small.dcm")}}
        for path in files.values():
            orthanc.store(path)
        orthanc.sop_uids = {name: pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                            for name, path in files.items()}
        yield orthanc


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    for name in (dicomweb.TOKEN, dicomweb.USER, dicomweb.PASSWORD, dicomweb.CREDENTIALS_FILE):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def credentials(home, monkeypatch):
    monkeypatch.setenv(dicomweb.USER, USER)
    monkeypatch.setenv(dicomweb.PASSWORD, PASSWORD)


def score(db_url: str, checkpoint, *args: str, capsys=None) -> tuple[int, dict]:
    code = cli.main(["--db", db_url, "--model", str(checkpoint), "--json", "--workers", "0", *args])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1]) if capsys else {}
    return code, summary


def stored_images(db_url: str) -> dict[str, tuple[bool | None, bool]]:
    """SOP Instance UID -> (in scope, predicted)."""
    engine = create_database_engine(db_url)
    try:
        with read_session(engine) as session:
            rows = session.execute(select(Image.sop_uid, Image.in_scope, Prediction.id)
                                   .outerjoin(Prediction, Prediction.image_id == Image.id))
            return {sop: (in_scope, prediction is not None) for sop, in_scope, prediction in rows}
    finally:
        engine.dispose()


def test_a_run_fetches_and_scores_every_cr_instance_and_the_next_fetches_nothing(pacs, credentials, home,
                                                                                  tiny_checkpoint, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 0, summary
    pulled = summary["dicomweb"]
    assert (pulled["instances"], pulled["known"], pulled["fetched"], pulled["failed"]) == (4, 0, 4, 0)
    assert pulled["series"] == 3 and pulled["bytes"] > 0  # the two RG1 films are one series
    images = stored_images(url)
    cr = {pacs.sop_uids[name] for name in (FILM, *CR_FILES)}
    assert set(images) == cr  # the CT was never fetched
    assert images[pacs.sop_uids["RG3_UNCR.dcm"]] == (False, False)  # an extremity: fetched, left out of scope
    assert all(images[pacs.sop_uids[name]] == (True, True) for name in (FILM, "RG1_UNCR.dcm", "RG1_J2KR.dcm"))

    cached = sorted(p for p in home.joinpath("dicomweb").rglob("*") if p.is_file())
    assert len(cached) == 4 and all(p.suffix == ".dcm" for p in cached)
    assert os.stat(dicomweb.cache_folder(pacs.dicomweb_url)).st_mode & 0o077 == 0  # patient data: this user only
    by_sop = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in cached}
    assert pydicom.dcmread(by_sop[pacs.sop_uids["RG1_J2KR.dcm"]]).file_meta.TransferSyntaxUID == \
        pydicom.uid.JPEG2000Lossless  # as the archive keeps it, not transcoded

    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 0, summary
    assert (summary["dicomweb"]["known"], summary["dicomweb"]["fetched"]) == (4, 0)
    assert summary["scored"] == 0 and summary["skipped"] == 3


def test_instances_already_scored_from_a_folder_are_not_fetched(pacs, credentials, home, dicom_dir, tiny_checkpoint,
                                                               tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    assert score(url, tiny_checkpoint, "--settle-seconds", "0", str(dicom_dir / FILM), capsys=capsys)[0] == 0
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 0
    assert (summary["dicomweb"]["known"], summary["dicomweb"]["fetched"]) == (1, 3)


def test_since_asks_only_for_studies_of_those_days(pacs, credentials, home, tiny_checkpoint, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, "--since", "2004-08-01",
                          capsys=capsys)
    assert code == 0
    assert summary["dicomweb"]["instances"] == 3  # the RG films of 2004, not the film dated 1901
    assert pacs.sop_uids[FILM] not in stored_images(url)
    _, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, "--since", "2030-01-01", capsys=capsys)
    assert summary["dicomweb"]["instances"] == 0


def test_a_credentials_file_readable_by_its_owner_only(pacs, home, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    secret = tmp_path / "dicomweb.credentials"
    secret.write_text(f"# the PACS account of the nightly run\nuser={USER}\npassword={PASSWORD}\n")
    monkeypatch.setenv(dicomweb.CREDENTIALS_FILE, str(secret))
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    secret.chmod(0o644)
    code, _ = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 2
    secret.chmod(0o600)
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 0 and summary["dicomweb"]["fetched"] == 4


def test_wrong_credentials_stop_the_run_and_no_secret_or_patient_reaches_the_log(pacs, home, tiny_checkpoint,
                                                                               tmp_path, monkeypatch, caplog, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(dicomweb.USER, USER)
    monkeypatch.setenv(dicomweb.PASSWORD, "not-the-password-7d1e")
    code, _ = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 2
    assert "refused the credentials (HTTP 401)" in caplog.text

    monkeypatch.setenv(dicomweb.PASSWORD, PASSWORD)
    code, _ = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, "-v", capsys=capsys)
    assert code == 0
    film = pydicom.dcmread(next(home.joinpath("dicomweb").rglob("*.dcm")), stop_before_pixels=True)
    for secret in (PASSWORD, "not-the-password-7d1e", str(film.PatientName), str(film.PatientID)):
        assert secret and secret not in caplog.text


def test_an_instance_the_server_will_not_give_is_asked_for_again_next_run(pacs, credentials, home, tiny_checkpoint,
                                                                         tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    real_fetch, refused = dicomweb.fetch, pacs.sop_uids["RG1_UNCR.dcm"]

    def fetch_refusing_one(client, folder, wanted):
        if wanted.sop_uid == refused:
            response = requests.Response()
            response.status_code = 503
            raise requests.HTTPError("503 Server Error", response=response)
        return real_fetch(client, folder, wanted)

    monkeypatch.setattr(dicomweb, "fetch", fetch_refusing_one)
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 1  # finished, but something failed
    assert (summary["dicomweb"]["fetched"], summary["dicomweb"]["failed"]) == (3, 1)
    assert refused not in stored_images(url)

    monkeypatch.setattr(dicomweb, "fetch", real_fetch)
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 0
    assert (summary["dicomweb"]["known"], summary["dicomweb"]["fetched"]) == (3, 1)
    assert stored_images(url)[refused] == (True, True)


def test_a_full_disk_stops_fetching_leaves_no_partial_file_and_the_run_scores_what_arrived(
        pacs, credentials, home, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    real_write, writes = dicom_store.write_synced, []

    def disk_full_after_two(path, data):
        if len(writes) == 2:
            with open(path, "wb") as partial:  # what a full disk leaves: part of the file
                partial.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(path)
        real_write(path, data)

    monkeypatch.setattr(dicom_store, "write_synced", disk_full_after_two)
    code, summary = score(url, tiny_checkpoint, "--dicomweb", pacs.dicomweb_url, capsys=capsys)
    assert code == 1
    assert (summary["dicomweb"]["fetched"], summary["dicomweb"]["failed"]) == (2, 2)
    files = [p for p in home.joinpath("dicomweb").rglob("*") if p.is_file()]
    assert len(files) == 2 and not [p for p in files if p.name.endswith(dicom_store.PART_SUFFIX)]
    assert summary["scored"] + summary["out_of_scope"] == 2


@pytest.mark.parametrize("url, refused", [
    ("http://user:pw@127.0.0.1:8042/dicom-web", "holds a user name or password"),
    ("ftp://user:pw@127.0.0.1/dicom-web", "holds a user name or password"),
    ("ftp://127.0.0.1/dicom-web", "is not an http(s) URL"),
    ("127.0.0.1:8042/dicom-web", "is not an http(s) URL"),
])
def test_urls_refused(url, refused):
    with pytest.raises(CannotRun, match=re.escape(refused)) as caught:
        dicomweb.check_url(url)
    assert "pw@" not in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    ("2026-12-01", "2026-12-01"), ("20261201", "2026-12-01"), (" 2004-08-26 ", "2004-08-26"),
])
def test_since_dates(text, expected):
    assert dicomweb.parse_since(text).isoformat() == expected


def test_since_days_back_and_refusals():
    import datetime as dt

    assert dicomweb.parse_since("7d") == dt.date.today() - dt.timedelta(days=7)
    for text in ("yesterday", "2026-13-01", "7", "-3d"):
        with pytest.raises(ValueError, match="neither a date"):
            dicomweb.parse_since(text)


@pytest.mark.parametrize("environ, expected", [
    ({}, {}),
    ({dicomweb.TOKEN: "abc"}, {"token": "abc"}),
    ({dicomweb.USER: "u", dicomweb.PASSWORD: "p"}, {"user": "u", "password": "p"}),
])
def test_credentials_from_the_environment(environ, expected):
    assert dicomweb.credentials_from_environment(environ) == expected


def test_a_user_without_a_password_is_refused():
    with pytest.raises(CannotRun, match="CXR_DICOMWEB_PASSWORD is not"):
        dicomweb.credentials_from_environment({dicomweb.USER: "u"})


@pytest.mark.parametrize("text, expected", [
    ("token=a=b\n", {"token": "a=b"}),
    ("user = u\npassword = p w\n", {"user": "u", "password": "p w"}),
    ("# comment\n\nuser=u\npassword=p\n", {"user": "u", "password": "p"}),
    ("user=u\n", "neither token"),
    ("username=u\n", "line 1: expected"),
])
def test_credentials_files(tmp_path, text, expected):
    path = tmp_path / "credentials"
    path.write_text(text)
    path.chmod(0o600)
    if isinstance(expected, dict):
        assert dicomweb.read_credentials_file(path) == expected
    else:
        with pytest.raises(CannotRun, match=expected):
            dicomweb.read_credentials_file(path)


def test_a_bearer_token_goes_in_the_authorization_header():
    session = dicomweb.http_session({"token": "t0ken"})
    assert session.headers["Authorization"] == "Bearer t0ken" and session.auth is None
    assert dicomweb.http_session({"user": "u", "password": "p"}).auth == ("u", "p")


@pytest.mark.parametrize(("url", "credentials", "warned"), [
    ("https://pacs.example.org/dicom-web", {"token": "t"}, None),
    ("http://127.0.0.1:8042/dicom-web", {"token": "t"}, None),  # never leaves this machine
    ("http://localhost:8042/dicom-web", {}, None),
    ("http://[::1]:8042/dicom-web", {}, None),
    ("http://10.1.2.3:8042/dicom-web", {}, "DICOMweb 10.1.2.3:8042 over plain http: films, reports cross"),
    ("http://pacs.hospital.local/dicom-web", {"user": "u", "password": "p"},
     "DICOMweb pacs.hospital.local over plain http: films, reports and credentials cross"),
])
def test_plain_http_to_another_machine_is_warned_about(url, credentials, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="cxr"):
        dicomweb.dicomweb_client(url, credentials)
    said = [record.getMessage() for record in caplog.records if "plain http" in record.getMessage()]
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(warned), said
        assert "use https" in said[0]
