"""``cxr-receive`` (issue 22, part 1): the storage service run in-process on a free loopback port, fed by
pynetdicom's own SCU with the real CR films, then the real scorer reading what it stored."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RQ
from sqlalchemy import select

from db.engine import create_database_engine, read_session
from db.models import Image, Prediction
from scoring import cli, dicom_store, imaging, receive
from scoring.discovery import discover
from scoring.imaging.scope import DX_FOR_PROCESSING
from scoring.receive import ReceiverSettings, TlsFiles, start_receiver
from tests.conftest import self_signed_certificate

REPO = Path(__file__).resolve().parents[2]
CALLING, CALLED = "MODALITY1", "CXRRECEIVE"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# pydicom warns as the tests craft and send invalid UIDs on purpose
CRAFTED = pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")
FILM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def settings(folder: Path, **changes) -> ReceiverSettings:
    values = dict(folder=folder, ae_title=CALLED, allowed_callers=(CALLING, "PACS"), port=0, stop_grace_seconds=2)
    return ReceiverSettings(**{**values, **changes})


@contextlib.contextmanager
def running(folder: Path, **changes):
    receiver = start_receiver(settings(folder, **changes))
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "inbox" / "store"


@pytest.fixture
def receiver(folder):
    with running(folder) as started:
        yield started


@pytest.fixture
def film(dicom_dir) -> pydicom.Dataset:
    return pydicom.dcmread(dicom_dir / FILM)


@pytest.fixture
def cr_image(pydicom_data) -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))


@contextlib.contextmanager
def association(port: int, *datasets: pydicom.Dataset, calling: str = CALLING, called: str = CALLED, **kwargs):
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, **kwargs)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send(port: int, ds: pydicom.Dataset) -> int:
    with association(port, ds) as assoc:
        assert assoc.is_established
        return assoc.send_c_store(ds).Status


def echo(port: int, **kwargs) -> int | None:
    with association(port, **kwargs) as assoc:
        return assoc.send_c_echo().Status if assoc.is_established else None


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_c_echo(receiver):
    assert echo(receiver.port) == 0x0000


def test_real_films_are_stored_per_study_and_scored(receiver, folder, film, cr_image, tiny_checkpoint, tmp_path):
    raw = for_processing(cr_image)  # stored like the films, then recorded out of scope, not scored
    for ds in (film, cr_image, raw):
        assert send(receiver.port, ds) == 0x0000
    for ds in (film, cr_image, raw):
        stored = pydicom.dcmread(folder / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm")
        assert stored == ds and stored.PixelData == ds.PixelData
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len(files_under(folder)) == 3

    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    assert cli.main(["--db", url, "--model", str(tiny_checkpoint), "--settle-seconds", "0", str(folder)]) == 0
    engine = create_database_engine(url)
    with read_session(engine) as session:
        scopes = dict(session.execute(select(Image.sop_uid, Image.scope_reason)).all())
        assert scopes == {film.SOPInstanceUID: "ok", cr_image.SOPInstanceUID: "ok",
                          raw.SOPInstanceUID: "for_processing"}
        scored = session.scalars(select(Image.sop_uid).join(Prediction, Prediction.image_id == Image.id)).all()
        assert sorted(scored) == sorted([film.SOPInstanceUID, cr_image.SOPInstanceUID])
    engine.dispose()


def for_processing(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` as a DX image "for processing" (the detector's raw values), a separate instance."""
    raw = copy.deepcopy(ds)
    raw.Modality, raw.PresentationIntentType = "DX", "FOR PROCESSING"
    raw.SOPClassUID = raw.file_meta.MediaStorageSOPClassUID = DX_FOR_PROCESSING
    raw.SOPInstanceUID = raw.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return raw


def test_a_ct_instance_is_refused_by_negotiation(receiver, folder, pydicom_data):
    ct = pydicom.dcmread(pydicom_data("CT_small.dcm"))
    with association(receiver.port, ct) as assoc:
        assert assoc.is_established  # C-ECHO is still offered
        [rejected] = assoc.rejected_contexts
        assert rejected.abstract_syntax == CT_IMAGE and rejected.result == 0x03  # abstract syntax not supported
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ct)
    assert files_under(folder) == []


def test_a_secondary_capture_that_is_not_a_radiograph_is_refused(receiver, folder, film):
    film.Modality = "OT"
    assert send(receiver.port, film) == dicom_store.NOT_SUPPORTED
    assert files_under(folder) == []


def test_only_the_readers_transfer_syntaxes_are_offered(receiver, folder, cr_image):
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(cr_image.SOPClassUID, "1.2.840.10008.1.2.4.100")  # MPEG-2: not decoded by the reader
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [VERIFICATION]
    assert [c.result for c in assoc.rejected_contexts] == [0x04]  # transfer syntaxes not supported
    assoc.release()
    assert set(dicom_store.TRANSFER_SYNTAXES) == set(imaging.SUPPORTED_TRANSFER_SYNTAXES)


def test_unknown_calling_or_called_ae_titles_are_rejected_at_association(receiver, folder, caplog):
    caplog.set_level(logging.INFO, logger="cxr")
    with association(receiver.port, calling="INTRUDER") as assoc:
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 3)
    with association(receiver.port, called="SOMEONEELSE") as assoc:
        assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 7
    assert "'INTRUDER'" in caplog.text and "calling AE title not recognised" in caplog.text
    assert "called AE title not recognised" in caplog.text
    assert echo(receiver.port, calling="PACS") == 0x0000


def test_missing_or_truncated_pixel_data_is_refused_and_nothing_stored(receiver, folder, cr_image):
    cr_image["PixelData"].value = cr_image.PixelData[: len(cr_image.PixelData) // 2]
    assert send(receiver.port, cr_image) == dicom_store.DOES_NOT_MATCH
    del cr_image.PixelData
    assert send(receiver.port, cr_image) == dicom_store.DOES_NOT_MATCH
    assert files_under(folder) == []


@CRAFTED
def test_crafted_uids_never_become_paths(receiver, folder, film):
    for uid in ("../../etc", "1.2/../../3", ".", "1." * 40 + "1"):
        film.StudyInstanceUID = uid
        assert send(receiver.port, film) == dicom_store.CANNOT_UNDERSTAND, uid
    assert files_under(folder.parent.parent) == [] and not (folder.parent.parent / "etc").exists()


def test_an_association_aborted_mid_transfer_leaves_nothing(receiver, folder, cr_image):
    with association(receiver.port, cr_image, max_pdu=16382) as assoc:
        context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == cr_image.SOPClassUID)
        pdus = partial_c_store(cr_image, context.context_id, assoc.acceptor.maximum_length)
        for pdu in pdus:
            assoc.dul.send_pdu(pdu)
        time.sleep(0.3)
        assoc.abort()
    time.sleep(0.3)
    assert files_under(folder) == []
    assert echo(receiver.port) == 0x0000


def partial_c_store(ds: pydicom.Dataset, context_id: int, max_pdu: int, count: int = 5) -> list:
    """The first ``count`` P-DATA PDUs of a C-STORE of ``ds``: the command and the start of the dataset."""
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True))  # explicit VR little endian, as negotiated
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = []
    for pdu in message.encode_msg(context_id, max_pdu):
        pdus.append(pdu)
        if len(pdus) == count:
            return pdus
    raise AssertionError("the dataset fits in fewer PDUs than the test cuts it at")


def test_a_full_disk_answers_out_of_resources_and_the_service_goes_on(small_disk, cr_image, film):
    with running(small_disk) as receiver:
        assert send(receiver.port, cr_image) == dicom_store.OUT_OF_RESOURCES  # 7 MB on a 2 MiB disk
        assert files_under(small_disk) == []
        assert echo(receiver.port) == 0x0000
        assert send(receiver.port, film) == 0x0000  # the partial file's space was given back
        assert [p.name for p in files_under(small_disk)] == [f"{film.SOPInstanceUID}.dcm"]


def test_a_second_copy_replaces_the_first(receiver, folder, film):
    assert send(receiver.port, film) == 0x0000
    film.DerivationDescription = "corrected copy"
    assert send(receiver.port, film) == 0x0000
    [stored] = files_under(folder)
    assert pydicom.dcmread(stored).DerivationDescription == "corrected copy"


def test_the_temporary_file_is_one_the_scorer_skips(receiver, folder, film, monkeypatch):
    seen = []
    replace = os.replace

    def look_then_replace(source, target):
        seen.append((Path(source).name, discover([folder], settle_seconds=0)))
        replace(source, target)

    monkeypatch.setattr(dicom_store.os, "replace", look_then_replace)
    assert send(receiver.port, film) == 0x0000
    [(name, found)] = seen
    assert name.startswith(".") and name.endswith(".part")
    assert found.files == [] and found.ignored == 1


@CRAFTED
def test_the_log_names_callers_and_counts_but_no_patient(receiver, folder, film, cr_image, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, pynetdicom's too, at its most talkative
    assert send(receiver.port, film) == 0x0000
    cr_image.StudyInstanceUID = "../x"
    assert send(receiver.port, cr_image) == dicom_store.CANNOT_UNDERSTAND
    summaries = ("association from 'MODALITY1' released: 1 stored, 0 refused",
                 "association from 'MODALITY1' released: 0 stored, 1 refused (0xC000 x1)")
    deadline = time.monotonic() + 30  # the summary follows the connection's close, after release() returns
    while not all(line in caplog.text for line in summaries) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(line in caplog.text for line in summaries), caplog.text[-2000:]
    for ds in (film, cr_image):
        for value in (str(ds.PatientName), str(ds.PatientID)):
            assert value and value not in caplog.text


@pytest.mark.parametrize(("pdu", "ended"), [(A_RELEASE_RQ(), "released"), (A_ABORT_RQ(), "aborted"),
                                            (None, "closed")])
def test_the_summary_says_how_the_association_ended_whichever_thread_is_first(folder, caplog, pdu, ended):
    """The connection's close (network thread) before EVT_RELEASED (association thread), as happens under load:
    the release or abort request, seen on the network thread before the close, still names the ending."""
    receiver = receive.Receiver(ReceiverSettings(folder, "CXR", ()))
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="MODALITY1", address="127.0.0.1"))
    caplog.set_level(logging.INFO, logger="cxr.receive")
    receiver.on_accepted(SimpleNamespace(assoc=assoc))
    if pdu is not None:
        receiver.on_pdu(SimpleNamespace(assoc=assoc, pdu=pdu))
    receiver.on_closed(SimpleNamespace(assoc=assoc))
    assert f"association from 'MODALITY1' {ended}: 0 stored, 0 refused" in caplog.text


def test_the_association_limit_holds(folder):
    with running(folder, max_associations=1) as receiver, association(receiver.port) as first:
        assert first.is_established
        with association(receiver.port) as second:
            assert second.is_rejected and second.acceptor.primitive.diagnostic == 2  # local limit exceeded
        assert first.send_c_echo().Status == 0x0000


def test_tls(folder, tmp_path):
    import ssl

    certificate = self_signed(tmp_path)
    with running(folder, tls=certificate) as receiver:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificate.cert))
        assert echo(receiver.port, tls_args=(client, "127.0.0.1")) == 0x0000
        assert echo(receiver.port) is None  # plain DICOM is not spoken on a TLS port


def self_signed(folder: Path) -> TlsFiles:
    return TlsFiles(*self_signed_certificate(folder))


def test_check_instance_refuses_a_dataset_of_another_class(cr_image):
    with pytest.raises(dicom_store.Refused) as refused:
        dicom_store.check_instance(cr_image, dicom_store.DX_FOR_PRESENTATION, cr_image.SOPInstanceUID,
                                   cr_image.file_meta.TransferSyntaxUID)
    assert refused.value.outcome.status == dicom_store.DOES_NOT_MATCH
    with pytest.raises(dicom_store.Refused) as refused:
        dicom_store.check_instance(cr_image, cr_image.SOPClassUID, "1.2.3", cr_image.file_meta.TransferSyntaxUID)
    assert refused.value.outcome.status == dicom_store.CANNOT_UNDERSTAND


def cli_args(folder: Path, port: int, *more: str) -> list[str]:
    return ["--dir", str(folder), "--port", str(port), "--ae-title", CALLED, "--allow-ae", CALLING, *more]


def test_a_port_in_use_is_exit_2_naming_the_port(folder, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert receive.main(cli_args(folder, port)) == 2
    assert f"port {port}" in caplog.text and "in use" in caplog.text


def test_a_folder_that_cannot_be_written_is_exit_2_naming_it(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert receive.main(cli_args(blocker / "store", 11112)) == 2
    assert f"--dir {blocker / 'store'}" in caplog.text


@pytest.mark.parametrize(("bad", "named"), [(["--allow-ae", "A" * 17], "A" * 17), (["--port", "70000"], "70000"),
                                            (["--tls-cert", "c.pem"], "--tls-key"),
                                            (["--max-associations", "0"], "'0'")])
def test_bad_arguments_are_exit_2_naming_the_value(folder, bad, named, capsys):
    with pytest.raises(SystemExit) as exited:
        receive.main(cli_args(folder, 11112, *bad))
    assert exited.value.code == 2 and named in capsys.readouterr().err


def test_sigterm_is_a_clean_exit_0(folder):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = subprocess.Popen([sys.executable, "-m", "scoring.receive", *cli_args(folder, port)], cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while echo(port) != 0x0000:
            assert service.poll() is None and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()
    log = service.stderr.read()
    assert f"listening on 127.0.0.1 port {port}" in log and "stopping" in log
