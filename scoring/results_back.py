"""Results back to the PACS (``cxr-score --results-to DESTINATION``), after the run has scored.

For each study with an in-scope DICOM image the run's model version scored in the last 7 days, one Comprehensive
Structured Report (written with highdicom) in the study, in a series of its own named "CXR Review AI - NOT FOR
DIAGNOSTIC USE": the disclaimer, the model version, and for each image (referenced by its SOP Instance UID) the
calibrated probability of each class and the most probable one. It is COMPLETE and UNVERIFIED: machine output that
no reader has checked. Its patient and study attributes are copied from the image files, as a PACS needs to file
it beside the images.

DESTINATION is ``dicom://CALLED_AE@host:port`` (C-STORE over one association per run, calling as
``--results-calling-ae``), ``dicom+tls://CALLED_AE@host:port`` (the same over TLS, the server's certificate checked
against the system's CAs or ``--results-tls-ca``; ``--results-tls-cert`` and ``--results-tls-key`` give this side's
certificate where the PACS asks for one) or the http(s) URL of a DICOMweb service (STOW-RS, with the same credentials as
``--dicomweb``). Each study is sent once per model version and destination (the ``result_objects`` table); a send
that fails is tried again by the next run within the 7 days, with the same SOP Instance UID (derived from the study
and the model's checksum), so a PACS that stored an object whose answer was lost keeps one copy. A study that gains
a scored image after its report was stored gets a new report of all its images: Instance Number 2, 3, … in the same
series, its SOP Instance UID derived from its images too, and the stored report named in its Predecessor Documents
Sequence. An unreachable destination stops the sending for this run; the scores are never held back by it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import ssl
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine

from db import result_objects
from db.engine import read_session, write_session
from db.errors import CannotRun
from db.models import ModelVersion, utcnow
from db.result_objects import StudyImage
from scoring import dicomweb
from scoring.imaging.errors import scrub

log = logging.getLogger("cxr.score")

WINDOW = dt.timedelta(days=7)  # so that switching results-back on sends this week's studies, not the archive's
DISCLAIMER = ("NOT FOR DIAGNOSTIC USE. Machine-generated classification of a chest radiograph by CXR Review, "
              "unverified: calibrated class probabilities for a reader's review, not a diagnosis.")
SERIES_DESCRIPTION = "CXR Review AI - NOT FOR DIAGNOSTIC USE"
SERIES_NUMBER = 9901
MANUFACTURER = "CXR Review"
DEFAULT_CALLING_AE = "CXRREVIEW"
SUCCESS_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings by which the object was stored
SCHEME = "99CXRREVIEW"  # a private coding scheme (PS3.16 8.2: private designators start with 99)
_DIMSE = re.compile(r"(?P<scheme>dicom|dicom\+tls)://(?P<ae>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})/?")


def _code(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value, scheme, meaning)


@dataclass(frozen=True)
class ClientTls:
    """This side of DICOM TLS (``--results-tls-*``): ``ca`` checks the PACS's certificate (None: the system's CAs);
    ``cert`` and ``key`` are this side's certificate, for a PACS that asks for one (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None  # None with a cert: the key is in the cert's file


@dataclass(frozen=True)
class Destination:
    """Where results go: ``url`` is what the database records (never credentials)."""

    url: str
    called_ae: str | None = None  # C-STORE; None: STOW-RS to ``url``
    host: str | None = None
    port: int | None = None
    tls: ClientTls | None = None  # dicom+tls://

    @property
    def is_dimse(self) -> bool:
        return self.called_ae is not None


def parse_destination(text: str) -> Destination:
    match = _DIMSE.fullmatch(text.strip())
    if match:
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} of {text!r} is not a TCP port")
        tls = ClientTls() if match["scheme"] == "dicom+tls" else None
        return Destination(text.strip().rstrip("/"), match["ae"].strip(), match["host"], port, tls)
    if text.startswith(("http://", "https://")):
        try:
            return Destination(dicomweb.check_url(text))
        except CannotRun as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"{text!r} is neither dicom://CALLED_AE@host:port (C-STORE; dicom+tls:// over TLS) nor the "
                     f"http(s) URL of a DICOMweb service (STOW-RS)")


def with_client_tls(destination: Destination, tls: ClientTls) -> Destination:
    """``destination`` (a ``dicom+tls://`` one) with these files, checked now: a missing or unreadable file stops
    the command before it scores, not at the first send after a night's scoring (ValueError)."""
    if destination.tls is None:
        raise ValueError("--results-tls-ca, --results-tls-cert and --results-tls-key apply to --results-to "
                         "dicom+tls://...")
    if tls.key is not None and tls.cert is None:
        raise ValueError("--results-tls-key needs --results-tls-cert")
    try:
        tls_context(tls)
    except CannotRun as exc:
        raise ValueError(str(exc)) from None
    return dataclasses.replace(destination, tls=tls)


def tls_context(tls: ClientTls) -> ssl.SSLContext:
    """The client side of DICOM TLS: the PACS's certificate and host name checked (against ``tls.ca``, else the
    system's CAs), TLS 1.2 or later, and this side's certificate where one is given."""
    what = f"--results-tls-ca {tls.ca}" if tls.ca is not None else "the system's CA certificates"
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert is not None:
            what = f"--results-tls-cert {tls.cert}" + (f" with --results-tls-key {tls.key}" if tls.key else "")
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise CannotRun(f"DICOM TLS: cannot load {what}: {getattr(exc, 'strerror', None) or exc}") from None
    return context


@dataclass
class ResultsCounts:
    due: int = 0
    sent: int = 0
    failed: int = 0
    not_tried: int = 0  # left for the next run after the destination could not be reached
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self), seconds=round(self.seconds, 3))


class Unreachable(Exception):
    """The destination cannot be reached at all: no use trying the other studies in this run."""


@dataclass(frozen=True)
class ModelInfo:
    version_id: int
    name: str | None
    architecture: str
    sha256: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Stored:
    """The study's report the destination last stored, which a new one replaces."""

    sop_uid: str
    reports: int  # stored so far: the new one's Instance Number follows


def report_uids(study_uid: str, model: ModelInfo, images: list[StudyImage], stored: Stored | None = None
                ) -> tuple[str, str]:
    """The report's series and SOP Instance UIDs, the same on every try and at every site: the study's first report
    is named by the study and the model, a later one (the study gained images) by its images too."""
    report = ["cxr-review-results-report", study_uid, model.sha256]
    if stored is not None:
        report += sorted(image.sop_uid for image in images)
    return (generate_uid(entropy_srcs=["cxr-review-results-series", study_uid, model.sha256]),
            generate_uid(entropy_srcs=report))


def source_headers(images: list[StudyImage]) -> dict[str, Dataset]:
    """Each image's header (no pixels) from the first of its files that can still be read, by SOP Instance UID."""
    headers: dict[str, Dataset] = {}
    for image in images:
        for path in image.paths:
            try:
                headers[image.sop_uid] = pydicom.dcmread(path, stop_before_pixels=True)
                break
            except (OSError, pydicom.errors.InvalidDicomError):
                continue
    return headers


def build_report(study_uid: str, images: list[StudyImage], model: ModelInfo, stored: Stored | None = None
                 ) -> Dataset:
    """The study's Comprehensive SR, replacing ``stored`` where there is one (its predecessor); ValueError when none
    of its images' files can be read any more."""
    import highdicom as hd

    headers = source_headers(images)
    images = [image for image in images if image.sop_uid in headers]
    if not images:
        raise ValueError("no file of the study's images can be read any more")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    content = [
        hd.sr.TextContentItem(_code("121106", "DCM", "Comment"), DISCLAIMER, relationship_type=contains),
        hd.sr.TextContentItem(_code("111001", "DCM", "Algorithm Name"), f"CXR Review {model.architecture}",
                              relationship_type=contains),
        hd.sr.TextContentItem(_code("111003", "DCM", "Algorithm Version"), model_label(model),
                              relationship_type=contains),
    ]
    content += [image_findings(image, headers[image.sop_uid], model) for image in images]
    root = hd.sr.ContainerContentItem(_code("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = hd.sr.ContentSequence(content)
    series_uid, sop_uid = report_uids(study_uid, model, images, stored)
    with warnings.catch_warnings():  # highdicom's advice on the patient's name: it is the PACS's, copied as it is
        warnings.simplefilter("ignore", UserWarning)
        return hd.sr.ComprehensiveSR(
            evidence=[headers[image.sop_uid] for image in images], content=root, series_instance_uid=series_uid,
            series_number=SERIES_NUMBER, sop_instance_uid=sop_uid,
            instance_number=1 if stored is None else stored.reports + 1, manufacturer=MANUFACTURER,
            is_complete=True, is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            previous_versions=None if stored is None else [_predecessor(study_uid, series_uid, stored)])


def _predecessor(study_uid: str, series_uid: str, stored: Stored) -> Dataset:
    """What the Predecessor Documents Sequence names of the stored report (in the same study and series)."""
    from pydicom.uid import ComprehensiveSRStorage

    previous = Dataset()
    previous.StudyInstanceUID, previous.SeriesInstanceUID = study_uid, series_uid
    previous.SOPClassUID, previous.SOPInstanceUID = ComprehensiveSRStorage, stored.sop_uid
    return previous


def model_label(model: ModelInfo) -> str:
    name = f" ({model.name})" if model.name else ""
    return f"model version {model.version_id}{name}, checkpoint sha256 {model.sha256[:12]}"


def image_findings(image: StudyImage, header: Dataset, model: ModelInfo):
    import highdicom as hd

    contains = hd.sr.RelationshipTypeValues.CONTAINS
    summary = ", ".join(f"{name} {image.probabilities.get(name, 0.0):.2f}" for name in model.classes)
    items = [
        hd.sr.ImageContentItem(_code("260753009", "SCT", "Source"), str(header.SOPClassUID), image.sop_uid,
                               relationship_type=contains),
        hd.sr.TextContentItem(_code("121111", "DCM", "Summary"),
                              f"Most probable: {image.predicted_class} (calibrated probabilities: {summary})",
                              relationship_type=contains),
    ]
    items += [hd.sr.NumContentItem(_code(f"p{index}", SCHEME, f"Probability of {name}"[:64]),
                                   round(float(image.probabilities.get(name, 0.0)), 4),
                                   _code("1", "UCUM", "no units"), relationship_type=contains)
              for index, name in enumerate(model.classes)]
    findings = hd.sr.ContainerContentItem(_code("121070", "DCM", "Findings"), relationship_type=contains)
    findings.ContentSequence = hd.sr.ContentSequence(items)
    return findings


class DimseSender:
    """C-STORE over one association, opened at the first report and kept for the run."""

    def __init__(self, destination: Destination, calling_ae: str) -> None:
        self.destination, self.calling_ae, self.association = destination, calling_ae, None

    def send(self, report: Dataset) -> None:
        if self.association is None or not self.association.is_established:
            self.association = self._associate()
        status = self.association.send_c_store(report)
        code = int(getattr(status, "Status", -1)) if status else -1
        if code == -1:
            self.association = None
            raise Unreachable("the association ended before the C-STORE was answered")
        if code not in SUCCESS_STATUSES:
            raise ValueError(f"C-STORE status 0x{code:04X}")

    def _associate(self):
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage

        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        d = self.destination
        tls = (tls_context(d.tls), d.host) if d.tls is not None else None
        association = ae.associate(d.host, d.port, ae_title=d.called_ae, tls_args=tls)
        if not association.is_established:
            why = "refused, or nobody answers" + (", or the TLS handshake failed" if d.tls is not None else "")
            raise Unreachable(f"no association with {d.called_ae} at {d.host}:{d.port} ({why})")
        return association

    def close(self) -> None:
        if self.association is not None and self.association.is_established:
            self.association.release()


class StowSender:
    def __init__(self, destination: Destination, credentials: dict[str, str] | None) -> None:
        credentials = dicomweb.credentials_from_environment() if credentials is None else credentials
        self.client = dicomweb.dicomweb_client(destination.url, credentials)

    def send(self, report: Dataset) -> None:
        try:
            self.client.store_instances([report])
        except requests.ConnectionError as exc:
            raise Unreachable(f"cannot reach the DICOMweb service ({type(exc).__name__})") from None
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            if code in (401, 403):
                raise Unreachable(f"the DICOMweb service refused the credentials (HTTP {code})") from None
            raise ValueError(f"STOW-RS answered HTTP {code}") from None

    def close(self) -> None:
        pass


def send_results(engine: Engine, destination: Destination, model_version_id: int,
                 calling_ae: str = DEFAULT_CALLING_AE, credentials: dict[str, str] | None = None) -> ResultsCounts:
    """Send the due studies' reports; never raises for a send that fails (it is recorded and tried again)."""
    started = time.perf_counter()
    counts = ResultsCounts()
    with read_session(engine) as session:
        model = model_info(session.get(ModelVersion, model_version_id))
        due = result_objects.due_studies(session, model_version_id, destination.url, utcnow() - WINDOW)
    counts.due = len(due)
    sender = DimseSender(destination, calling_ae) if destination.is_dimse else StowSender(destination, credentials)
    try:
        for position, study_uid in enumerate(due):
            with read_session(engine) as session:
                images = result_objects.study_images(session, study_uid, model_version_id)
                stored = _stored(result_objects.result_record(session, study_uid, model_version_id, destination.url))
            error = send_study(sender, study_uid, images, model, stored)
            with write_session(engine) as session:
                result_objects.record_send(session, study_uid, model_version_id, destination.url,
                                           report_uids(study_uid, model, images, stored)[1], len(images),
                                           None if error is None else str(error))
            if error is None:
                counts.sent += 1
                continue
            counts.failed += 1
            if isinstance(error, Unreachable):
                counts.not_tried = len(due) - position - 1
                log.error("results back: %s; %d studies left for the next run", error, counts.not_tried)
                break
            log.warning("results back: a study's report was not stored: %s (tried again next run)", error)
    finally:
        sender.close()
    counts.seconds = time.perf_counter() - started
    log.info("results back to %s: %d studies due, %d sent, %d failed", destination_name(destination), counts.due,
             counts.sent, counts.failed)
    return counts


def _stored(record) -> Stored | None:
    return Stored(record.sent_sop_uid, record.reports_sent) if record is not None and record.sent_sop_uid else None


def send_study(sender, study_uid: str, images: list[StudyImage], model: ModelInfo, stored: Stored | None
               ) -> Exception | None:
    """Build and send one study's report; the exception that stopped it, or None when it was stored."""
    try:
        sender.send(build_report(study_uid, images, model, stored))
        return None
    except Unreachable as exc:
        return exc
    except Exception as exc:  # one study's report: recorded, tried again next run, the others still go
        log.debug("the report of a study could not be sent", exc_info=True)
        # pydicom and highdicom quote the header value they refused (a birth date, a name): the message goes
        # to the log and the database, so it is scrubbed as the reader's failure messages are
        return ValueError(scrub(exc))


def model_info(version: ModelVersion | None) -> ModelInfo:
    if version is None:
        raise CannotRun("results back: the run's model version is not in the database")
    return ModelInfo(version.id, version.name, version.architecture, version.sha256, tuple(version.classes))


def destination_name(destination: Destination) -> str:
    if destination.is_dimse:
        return f"{destination.called_ae}@{destination.host}:{destination.port}"
    return dicomweb.server_name(destination.url)
