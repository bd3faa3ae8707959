"""Results back to the PACS: the Structured Report of a study's predictions, and sending it once per study and
model version (again, as a successor, when the study gains a film), with C-STORE or STOW-RS, to a real Orthanc and
to a storage service that fails on purpose."""

from __future__ import annotations

import json
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from db.engine import create_database_engine, read_session
from db.models import ResultObject
from db.result_objects import StudyImage
from scoring import cli, dicomweb, results_back
from scoring.results_back import ModelInfo, parse_destination
from tests.conftest import active_model_database, self_signed_certificate
from tests.scoring.orthanc import ORTHANC_AET, free_port, report_numbers, running_orthanc

USER, PASSWORD = "cxr-results", "results-s3cret-41b0"
RG1 = ("RG1_UNCR.dcm", "RG1_J2KR.dcm")  # one CR chest study of pydicom-data, native and JPEG 2000
MODEL = ModelInfo(3, "retrained-2026-12", "resnet18", "ab" * 32, ("covid", "normal", "pneumonia"))


def study_images(paths: list[Path], probabilities: list[dict[str, float]]) -> list[StudyImage]:
    images = []
    for number, (path, probs) in enumerate(zip(paths, probabilities, strict=True), 1):
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        images.append(StudyImage(number, sop, (str(path),), probs, max(probs, key=probs.get)))
    return images


def report_texts(report) -> list[str]:
    texts = []

    def walk(items):
        for item in items:
            if "TextValue" in item:
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(report.ContentSequence)
    return texts


def test_the_report_of_a_study_of_two_films(pydicom_data):
    paths = [pydicom_data(name) for name in RG1]
    probabilities = [{"covid": 0.1, "normal": 0.7, "pneumonia": 0.2}, {"covid": 0.05, "normal": 0.9, "pneumonia": 0.05}]
    images = study_images(paths, probabilities)
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)

    report = results_back.build_report(source.StudyInstanceUID, images, MODEL)

    assert report.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and report.Modality == "SR"
    assert report.StudyInstanceUID == source.StudyInstanceUID  # filed in the study, beside its images
    assert (report.PatientID, str(report.PatientName)) == (source.PatientID, str(source.PatientName))
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in report.SeriesDescription
    assert (report.CompletionFlag, report.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    texts = report_texts(report)
    assert results_back.DISCLAIMER in texts
    assert "model version 3 (retrained-2026-12), checkpoint sha256 abababababab" in texts
    assert "Most probable: normal (calibrated probabilities: covid 0.10, normal 0.70, pneumonia 0.20)" in texts
    numbers = report_numbers(report)
    for image, probs in zip(images, probabilities, strict=True):
        for name, value in probs.items():
            assert numbers[(image.sop_uid, f"Probability of {name}")] == pytest.approx(value)
    evidence = {sop.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert evidence == {image.sop_uid for image in images}

    again = results_back.build_report(source.StudyInstanceUID, images, MODEL)
    assert again.SOPInstanceUID == report.SOPInstanceUID  # a retry sends the same instance
    other = results_back.build_report(source.StudyInstanceUID, images, ModelInfo(4, None, "resnet18", "cd" * 32,
                                                                                 MODEL.classes))
    assert other.SOPInstanceUID != report.SOPInstanceUID
    reread = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dataset_bytes(report)))
    assert reread.SOPInstanceUID == report.SOPInstanceUID

    # its successor, once the study has gained a film: a new instance, the same on a retry, naming this one
    stored = results_back.Stored(report.SOPInstanceUID, 1)
    successor = results_back.build_report(source.StudyInstanceUID, images[:1], MODEL, stored)
    assert successor.SOPInstanceUID not in (report.SOPInstanceUID, other.SOPInstanceUID)
    assert successor.SOPInstanceUID == results_back.build_report(source.StudyInstanceUID, images[:1], MODEL,
                                                                 stored).SOPInstanceUID
    assert (successor.SeriesInstanceUID, successor.InstanceNumber) == (report.SeriesInstanceUID, 2)
    assert "PredecessorDocumentsSequence" not in report
    assert successor.PredecessorDocumentsSequence[0].StudyInstanceUID == source.StudyInstanceUID


def dataset_bytes(ds) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_study_whose_files_are_gone_has_no_report(tmp_path):
    gone = StudyImage(1, "1.2.3.4", (str(tmp_path / "moved.dcm"),), {"covid": 1.0}, "covid")
    with pytest.raises(ValueError, match="can be read any more"):
        results_back.build_report("1.2.3", [gone], MODEL)


@pytest.mark.parametrize("text, expected", [
    ("dicom://PACS@10.0.0.5:104", ("PACS", "10.0.0.5", 104)),
    ("dicom://ORTHANC@pacs.example.org:4242/", ("ORTHANC", "pacs.example.org", 4242)),
    ("dicom+tls://PACS@pacs.example.org:2762", ("PACS", "pacs.example.org", 2762)),
    ("https://pacs.example.org/dicom-web/", (None, None, None)),
])
def test_destinations(text, expected):
    destination = parse_destination(text)
    assert (destination.called_ae, destination.host, destination.port) == expected
    assert destination.is_dimse == (expected[0] is not None)
    assert (destination.tls is not None) == text.startswith("dicom+tls://")


@pytest.mark.parametrize("text, refused", [
    ("dicom://PACS@host", "neither"), ("dicom://A_TITLE_LONGER_THAN_16@h:104", "neither"),
    ("dicom://PACS@h:70000", "not a TCP port"), ("https://u:p@pacs/dicom-web", "user name or password"),
    ("pacs.example.org:104", "neither"),
])
def test_destinations_refused(text, refused):
    with pytest.raises(ValueError, match=refused):
        parse_destination(text)


# --- sending, with real networking ---------------------------------------------------------------------------

def score(url: str, *args: str, capsys) -> tuple[int, dict]:
    code = cli.main(["--db", url, "--json", "--workers", "0", "--settle-seconds", "0", *args])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def records(url: str) -> list[tuple[str, str, int]]:
    engine = create_database_engine(url)
    try:
        with read_session(engine) as session:
            return [(r.study_uid, r.status, r.attempts) for r in session.scalars(select(ResultObject))]
    finally:
        engine.dispose()


@pytest.fixture
def rg1_folder(tmp_path, pydicom_data) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in (*RG1, "RG3_UNCR.dcm"):  # RG3 is an extremity: out of scope, never reported
        (folder / name).write_bytes(pydicom_data(name).read_bytes())
    return folder


@pytest.mark.slow
def test_reports_stored_in_orthanc_once_with_c_store_and_stow_rs(tmp_path, rg1_folder, tiny_checkpoint, pydicom_data,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(dicomweb.USER, USER)
    monkeypatch.setenv(dicomweb.PASSWORD, PASSWORD)
    study_uid = pydicom.dcmread(pydicom_data(RG1[0]), stop_before_pixels=True).StudyInstanceUID
    with running_orthanc(tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD}) as orthanc:
        dimse = f"dicom://{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}"
        url = f"sqlite:///{tmp_path / 'dimse.db'}"
        active_model_database(url, tiny_checkpoint)
        code, summary = score(url, "--results-to", dimse, str(rg1_folder), capsys=capsys)
        assert code == 0, summary
        assert summary["results_back"] | {"seconds": 0} == {"due": 1, "sent": 1, "failed": 0, "not_tried": 0,
                                                             "seconds": 0}
        stored = orthanc.reports()
        assert len(stored) == 1
        report = stored[0]
        assert report.StudyInstanceUID == study_uid and "NOT FOR DIAGNOSTIC USE" in report.SeriesDescription
        assert len({sop for sop, _ in report_numbers(report)}) == 2  # both RG1 films, not the extremity
        assert records(url) == [(study_uid, "sent", 1)]

        code, summary = score(url, "--results-to", dimse, str(rg1_folder), capsys=capsys)
        assert code == 0 and summary["results_back"]["due"] == 0  # once per study and version

        # The same results over STOW-RS from another database: the same report, so Orthanc keeps one copy
        other = f"sqlite:///{tmp_path / 'stow.db'}"
        active_model_database(other, tiny_checkpoint)
        code, summary = score(other, "--results-to", orthanc.dicomweb_url, str(rg1_folder), capsys=capsys)
        assert code == 0 and summary["results_back"]["sent"] == 1
        assert [r.SOPInstanceUID for r in orthanc.reports()] == [report.SOPInstanceUID]

        # A retake arrives in the study: the next run reports the three films, as the stored report's successor
        retake = pydicom.dcmread(pydicom_data(RG1[0]))
        retake.SOPInstanceUID = retake.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        retake.save_as(rg1_folder / "retake.dcm")
        code, summary = score(url, "--results-to", dimse, str(rg1_folder), capsys=capsys)
        assert code == 0 and summary["results_back"] | {"seconds": 0} == {"due": 1, "sent": 1, "failed": 0,
                                                                          "not_tried": 0, "seconds": 0}
        successor = next(r for r in orthanc.reports() if r.SOPInstanceUID != report.SOPInstanceUID)
        assert len(orthanc.reports()) == 2 and successor.SeriesInstanceUID == report.SeriesInstanceUID
        assert {sop for sop, _ in report_numbers(successor)} == {sop for sop, _ in report_numbers(report)} | {
            retake.SOPInstanceUID}
        assert (successor.InstanceNumber, report.InstanceNumber) == (2, 1)
        predecessors = [sop.ReferencedSOPInstanceUID for study in successor.PredecessorDocumentsSequence
                        for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence]
        assert predecessors == [report.SOPInstanceUID]
        assert records(url) == [(study_uid, "sent", 2)]
        code, summary = score(url, "--results-to", dimse, str(rg1_folder), capsys=capsys)
        assert code == 0 and summary["results_back"]["due"] == 0


class FlakyStore:
    """A C-STORE service that answers "out of resources" to its first ``failures`` requests (over TLS with
    ``ssl_context``)."""

    def __init__(self, failures: int, ssl_context=None) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage

        self.failures, self.received = failures, []
        ae = AE(ae_title="FLAKYPACS")
        ae.add_supported_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        self.lock = threading.Lock()

    def on_store(self, event) -> int:
        with self.lock:
            self.received.append(event.dataset.SOPInstanceUID)
            return 0xA700 if len(self.received) <= self.failures else 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_a_refused_report_is_sent_again_by_the_next_run_under_the_same_uid(tmp_path, rg1_folder, tiny_checkpoint,
                                                                          monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    active_model_database(url, tiny_checkpoint)
    store = FlakyStore(failures=1)
    try:
        destination = f"dicom://FLAKYPACS@127.0.0.1:{store.port}"
        code, summary = score(url, "--results-to", destination, str(rg1_folder), capsys=capsys)
        assert code == 1  # finished, but a report was not sent
        assert (summary["results_back"]["failed"], summary["scored"]) == (1, 2)
        study_uid, status, attempts = records(url)[0]
        assert (status, attempts) == ("failed", 1)

        code, summary = score(url, "--results-to", destination, str(rg1_folder), capsys=capsys)
        assert code == 0 and summary["results_back"]["sent"] == 1
        assert records(url) == [(study_uid, "sent", 2)]
        assert len(store.received) == 2 and store.received[0] == store.received[1]
    finally:
        store.stop()


@dataclass(frozen=True)
class TlsPeers:
    """Self-signed certificates of a PACS and of this side; each trusts the other's as its CA."""

    pacs: tuple[Path, Path]
    ours: tuple[Path, Path]

    def pacs_context(self) -> ssl.SSLContext:
        """The PACS's side: its certificate, and a client certificate required and checked."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.pacs)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.ours[0])
        return context


@pytest.fixture(scope="module")
def tls_peers(tmp_path_factory) -> TlsPeers:
    return TlsPeers(self_signed_certificate(tmp_path_factory.mktemp("pacs")),
                    self_signed_certificate(tmp_path_factory.mktemp("ours")))


@pytest.mark.parametrize(("trusted", "client_certificate", "stored"), [
    ("the PACS's CA", True, True),  # mutual TLS, as PACS that take DICOM TLS usually ask
    ("the PACS's CA", False, False),  # the PACS asks for a client certificate, none given
    ("system CAs", True, False),  # the PACS's certificate is signed by no CA this machine trusts
])
def test_reports_go_over_dicom_tls_only_to_a_pacs_whose_certificate_checks_out(
        tmp_path, rg1_folder, tiny_checkpoint, monkeypatch, capsys, caplog, tls_peers, trusted, client_certificate,
        stored):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    options = []
    if trusted == "the PACS's CA":
        options += ["--results-tls-ca", str(tls_peers.pacs[0])]
    if client_certificate:
        options += ["--results-tls-cert", str(tls_peers.ours[0]), "--results-tls-key", str(tls_peers.ours[1])]
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    active_model_database(url, tiny_checkpoint)
    store = FlakyStore(failures=0, ssl_context=tls_peers.pacs_context())
    try:
        code, summary = score(url, "--results-to", f"dicom+tls://FLAKYPACS@127.0.0.1:{store.port}", *options,
                              str(rg1_folder), capsys=capsys)
    finally:
        store.stop()
    assert summary["scored"] == 2
    assert (code, summary["results_back"]["sent"], len(store.received)) == ((0, 1, 1) if stored else (1, 0, 0))
    if not stored:
        assert "the TLS handshake failed" in caplog.text


@pytest.mark.parametrize(("destination", "options", "refused"), [
    ("dicom+tls://PACS@127.0.0.1:2762", ["--results-tls-ca", "/nowhere/ca.pem"],
     "cannot load --results-tls-ca /nowhere/ca.pem: No such file or directory"),
    ("dicom+tls://PACS@127.0.0.1:2762", ["--results-tls-cert", "/nowhere/client.pem"],
     "cannot load --results-tls-cert /nowhere/client.pem: No such file or directory"),
    ("dicom+tls://PACS@127.0.0.1:2762", ["--results-tls-key", "/some/client.key"],
     "--results-tls-key needs --results-tls-cert"),
    ("dicom://PACS@127.0.0.1:104", ["--results-tls-ca", "/etc/ssl/certs/ca-certificates.crt"],
     "apply to --results-to dicom+tls://"),
    (None, ["--results-tls-ca", "/etc/ssl/certs/ca-certificates.crt"], "apply to --results-to"),
])
def test_unusable_tls_settings_stop_the_command_before_it_scores(tmp_path, capsys, destination, options, refused):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--db", f"sqlite:///{tmp_path / 'x.db'}", *(["--results-to", destination] if destination else []),
                  *options, str(tmp_path)])
    assert stopped.value.code == 2 and refused in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_a_certificate_whose_key_is_wrong_is_refused_before_scoring(tls_peers, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--db", f"sqlite:///{tmp_path / 'x.db'}", "--results-to", "dicom+tls://PACS@127.0.0.1:2762",
                  "--results-tls-cert", str(tls_peers.ours[0]), "--results-tls-key", str(tls_peers.pacs[1]),
                  str(tmp_path)])
    assert stopped.value.code == 2
    assert f"cannot load --results-tls-cert {tls_peers.ours[0]} with --results-tls-key" in capsys.readouterr().err


def test_an_unreachable_destination_does_not_hold_back_the_scores(tmp_path, rg1_folder, tiny_checkpoint,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    active_model_database(url, tiny_checkpoint)
    code, summary = score(url, "--results-to", f"dicom://NOBODY@127.0.0.1:{free_port()}", str(rg1_folder),
                          capsys=capsys)
    assert code == 1
    assert summary["scored"] == 2 and summary["results_back"]["failed"] == 1
    assert records(url)[0][1:] == ("failed", 1)


def test_results_to_cannot_go_with_an_explicit_model(tmp_path, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--db", f"sqlite:///{tmp_path / 'x.db'}", "--model", str(tiny_checkpoint), "--results-to",
                  "dicom://PACS@127.0.0.1:104", str(tmp_path)])
    assert stopped.value.code == 2
    assert "cannot go with --model" in capsys.readouterr().err


def test_a_refused_header_value_stays_out_of_the_error_that_is_logged_and_stored(tmp_path, pydicom_data):
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientBirthDate = "1970-01-01"  # written with dashes by a modality: read with a warning, refused by the SR
    path = tmp_path / "film.dcm"
    ds.save_as(path)

    class Sender:
        def send(self, report):
            raise AssertionError("a report that could not be built was sent")

    [image] = study_images([path], [{"covid": 0.2, "normal": 0.1, "pneumonia": 0.7}])
    error = results_back.send_study(Sender(), ds.StudyInstanceUID, [image], MODEL, None)
    assert isinstance(error, ValueError)
    assert "1970" not in str(error)
    assert "convert" in str(error)  # still says what went wrong
