"""``cxr-receive``: a DICOM storage service (C-STORE SCP, with C-ECHO) that files chest radiographs for the scorer.

Only callers named with --allow-ae, calling this service by its --ae-title, get an association; others are
rejected at association (calling or called AE title not recognised). Accepted are CR, DX (for presentation and
for processing) and Secondary Capture radiographs (Modality CR or DX), in the transfer syntaxes the scorer decodes;
anything else is refused by presentation-context negotiation or with a failure status, and nothing is stored. A DX
image for processing is stored like the others, and the scorer records it out of scope (``for_processing``).

Each instance goes to FOLDER/<StudyInstanceUID>/<SOPInstanceUID>.dcm, written atomically (a hidden .part file the
scorer skips, fsynced, renamed); a second copy of an instance replaces the first. A full disk answers 0xA700 (out
of resources: the sender keeps the instance and retries). The log names calling AE titles, counts and statuses,
never a patient.

Exit codes: 0 stopped by SIGTERM or SIGINT; 2 could not start (bad arguments, a port in use, a folder that cannot
be written, a TLS file that cannot be loaded).
"""

from __future__ import annotations

import argparse
import collections
import logging
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.clitools import add_verbose_option, field_defaults, run_cli
from db.errors import CannotRun
from scoring import dicom_store
from scoring.dicom_store import Outcome, Refused

log = logging.getLogger("cxr.receive")

MAX_PDU_RANGE = (4096, 16 * 1024 * 1024)
MAX_ASSOCIATIONS_RANGE = (1, 64)
VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ diagnostics (PS3.8 9.3.4): why an association was refused, for the log.
REJECT_REASONS = {3: "calling AE title not recognised", 7: "called AE title not recognised",
                  2: "too many associations (--max-associations)"}


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # when given, callers must present a certificate it signed


@dataclass(frozen=True)
class ReceiverSettings:
    folder: Path
    ae_title: str
    allowed_callers: tuple[str, ...]
    port: int = 11112
    host: str = "127.0.0.1"
    max_associations: int = 4
    # 64 KiB: a 20 MB radiograph in ~300 PDUs, while no caller can make the service buffer a huge PDU.
    max_pdu: int = 65536
    tls: TlsFiles | None = None
    stop_grace_seconds: float = 30.0  # transfers in flight at shutdown may finish within this


_ENDING_PDUS = {"A_RELEASE_RQ": "released", "A_ABORT_RQ": "aborted"}  # pynetdicom.pdu's classes, by name


@dataclass
class Tally:
    """One association's counts, for its summary line."""

    calling: str
    stored: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    ended: str = "closed"

    def summary(self) -> str:
        refused = ", ".join(f"0x{status:04X} x{count}" for status, count in sorted(self.refused.items()))
        return (f"association from {self.calling!r} {self.ended}: {self.stored} stored, "
                f"{sum(self.refused.values())} refused" + (f" ({refused})" if refused else ""))


class Receiver:
    """The running service: start with :func:`start_receiver`, end with :meth:`stop`."""

    def __init__(self, settings: ReceiverSettings) -> None:
        from pynetdicom import AE

        self.settings = settings
        self._tallies: dict[int, Tally] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        self.ae.maximum_pdu_size = settings.max_pdu
        self.ae.require_calling_aet = list(settings.allowed_callers)
        self.ae.require_called_aet = True
        self.ae.add_supported_context(VERIFICATION)
        for sop_class in dicom_store.STORAGE_CLASSES:
            self.ae.add_supported_context(sop_class, list(dicom_store.TRANSFER_SYNTAXES))
        self.server: Any = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_ACCEPTED, self.on_accepted),
                    (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_ABORTED, self.on_aborted),
                    (evt.EVT_RELEASED, self.on_released), (evt.EVT_PDU_RECV, self.on_pdu),
                    (evt.EVT_CONN_CLOSE, self.on_closed)]
        address = (self.settings.host, self.settings.port)
        self.server = self.ae.start_server(address, block=False, ssl_context=ssl_context, evt_handlers=handlers)

    def stop(self) -> None:
        """Stop accepting, give transfers in flight the grace time, then abort what is left."""
        self.server.shutdown()
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in self.server.active_associations:
            log.warning("aborting an association from %r still open at shutdown", assoc.requestor.ae_title)
            assoc.abort()

    def handle_store(self, event: Any) -> Any:
        from pydicom import Dataset

        outcome, tally = self.store(event), self.tally(event.assoc)
        answer = Dataset()
        answer.Status = outcome.status
        tally.stored += outcome.stored
        if not outcome.stored:
            tally.refused[outcome.status] += 1
            log.warning("refused an instance from %r: 0x%04X %s", event.assoc.requestor.ae_title, outcome.status,
                        outcome.reason)
            answer.ErrorComment = outcome.reason[:64]
        return answer

    def store(self, event: Any) -> Outcome:
        try:
            instance = checked_instance(event)
        except Refused as refused:
            return refused.outcome
        try:
            path = dicom_store.write_instance(self.settings.folder, instance, event.encoded_dataset())
        except OSError as exc:
            return dicom_store.write_failure(exc)
        log.debug("stored %s", path)  # UIDs, not names; still only with -v
        return Outcome(dicom_store.SUCCESS, "stored")

    def tally(self, assoc: Any) -> Tally:
        with self._lock:
            return self._tallies.setdefault(id(assoc), Tally(assoc.requestor.ae_title))

    def on_accepted(self, event: Any) -> None:
        tally = self.tally(event.assoc)
        log.info("association from %r (%s) accepted", tally.calling, event.assoc.requestor.address)

    def on_rejected(self, event: Any) -> None:
        requestor, diagnostic = event.assoc.requestor, getattr(event.assoc.acceptor.primitive, "diagnostic", None)
        log.warning("association from %r (%s) rejected: %s", requestor.ae_title, requestor.address,
                    REJECT_REASONS.get(diagnostic, f"diagnostic {diagnostic}"))

    def on_aborted(self, event: Any) -> None:
        self.tally(event.assoc).ended = "aborted"

    def on_released(self, event: Any) -> None:
        self.tally(event.assoc).ended = "released"

    def on_pdu(self, event: Any) -> None:
        """A release or abort request seen as it arrives. EVT_RELEASED comes from the association's thread after
        the reply is sent, so the connection's close (the network thread's, once the modality hangs up) could come
        first and the summary say "closed"; this event and the close come from the same thread, in order."""
        ended = _ENDING_PDUS.get(type(event.pdu).__name__)
        if ended is not None:
            with self._lock:
                tally = self._tallies.get(id(event.assoc))  # None: a rejected association, already logged
            if tally is not None:
                tally.ended = ended

    def on_closed(self, event: Any) -> None:
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is not None:  # None: rejected, already logged
            log.info("%s", tally.summary())


def checked_instance(event: Any) -> dicom_store.Instance:
    """The request's dataset, checked (:func:`scoring.dicom_store.check_instance`); a dataset pydicom cannot
    decode is refused, by the exception's type alone (its text may quote a value)."""
    request = event.request
    return dicom_store.check_instance(decoded(event), str(request.AffectedSOPClassUID),
                                      str(request.AffectedSOPInstanceUID), str(event.file_meta.TransferSyntaxUID))


def decoded(event: Any) -> Any:
    """The request's dataset with every element converted (pydicom converts lazily), so that a malformed value
    is refused here rather than met later by the checks."""
    try:
        ds = event.dataset
        for _ in ds.iterall():
            pass
    except Exception as exc:  # whatever a malformed stream makes pydicom raise: the caller gets a status
        raise Refused(dicom_store.CANNOT_DECODE, f"dataset cannot be decoded ({type(exc).__name__})") from None
    return ds


def start_receiver(settings: ReceiverSettings) -> Receiver:
    """Check the folder and TLS files, then listen. Raises :class:`CannotRun` naming what stops it."""
    check_folder(settings.folder)
    context = tls_context(settings.tls) if settings.tls else None
    receiver = Receiver(settings)
    try:
        receiver.start(context)
    except OSError as exc:
        raise CannotRun(f"cannot listen on {settings.host} port {settings.port} (--host/--port): "
                        f"{exc.strerror or exc}") from None
    return receiver


def check_folder(folder: Path) -> None:
    probe = folder / f".cxr-receive-probe{dicom_store.PART_SUFFIX}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dicom_store.write_synced(probe, b"")
        probe.unlink()
    except OSError as exc:
        dicom_store.remove_quietly(probe)
        raise CannotRun(f"cannot write to --dir {folder}: {exc.strerror or exc}") from None


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise CannotRun(f"cannot load --tls-cert {tls.cert} with --tls-key {tls.key}: {exc}") from None
    if tls.ca is not None:
        try:
            context.load_verify_locations(tls.ca)
        except (OSError, ssl.SSLError) as exc:
            raise CannotRun(f"cannot load --tls-ca {tls.ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def ae_title(text: str) -> str:
    """An AE title as DICOM allows it: 1 to 16 characters of printable ASCII, no backslash, not only spaces."""
    title = text.strip()
    if not title or len(title) > 16 or "\\" in title or not all(" " <= c <= "~" for c in title):
        raise argparse.ArgumentTypeError(f"{text!r} is not an AE title (1-16 printable ASCII characters, no \\)")
    return title


def bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return value

    return parse


DEFAULTS = field_defaults(ReceiverSettings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-receive", description="Receive chest radiographs over DICOM.",
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, metavar="FOLDER", help="where studies are written")
    parser.add_argument("--port", required=True, type=bounded_int(1, 65535), metavar="N")
    parser.add_argument("--ae-title", required=True, type=ae_title, metavar="TITLE",
                        help="this service's AE title; callers must call it by this title")
    parser.add_argument("--allow-ae", required=True, action="append", type=ae_title, metavar="CALLING",
                        help="a calling AE title allowed to store (repeat for each modality or PACS)")
    parser.add_argument("--host", default=DEFAULTS["host"], help="address to listen on (default: %(default)s)")
    parser.add_argument("--max-associations", type=bounded_int(*MAX_ASSOCIATIONS_RANGE), metavar="N",
                        default=DEFAULTS["max_associations"], help="concurrent associations (default: %(default)s)")
    parser.add_argument("--max-pdu", type=bounded_int(*MAX_PDU_RANGE), default=DEFAULTS["max_pdu"], metavar="BYTES",
                        help="largest PDU accepted from a caller (default: %(default)s)")
    parser.add_argument("--tls-cert", type=Path, metavar="F", help="PEM certificate (chain): serve DICOM over TLS")
    parser.add_argument("--tls-key", type=Path, metavar="F", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", type=Path, metavar="F",
                        help="PEM CA certificate(s): callers must present a certificate signed by one")
    add_verbose_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser, argv, log, lambda args: receive(settings_from(parser, args)))


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ReceiverSettings:
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together (and --tls-ca needs them)")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    return ReceiverSettings(folder=args.dir, ae_title=args.ae_title, allowed_callers=tuple(args.allow_ae),
                            port=args.port, host=args.host, max_associations=args.max_associations,
                            max_pdu=args.max_pdu, tls=tls)


def receive(settings: ReceiverSettings) -> int:
    # pynetdicom logs every request at INFO; our own lines say what an operator needs
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    receiver = start_receiver(settings)
    log.info("listening on %s port %d as %r%s, storing in %s; callers allowed: %s", settings.host, receiver.port,
             settings.ae_title, " over TLS" if settings.tls else "", settings.folder,
             ", ".join(settings.allowed_callers))
    while not stop.wait(1.0):
        pass
    log.info("stopping")
    receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
