"""``cxr-score``: the nightly batch scorer.

Exit codes: 0 all fine; 1 finished, but some files failed (recorded in the database), an instance could not be
fetched from --dicomweb or a report not sent to --results-to (each tried again by the next run); 2 could not run (no
model, database unreachable or on an old schema, a codec or device missing); 75 another run holds the lock
on this database (EX_TEMPFAIL: try later); 130 stopped by SIGTERM or Ctrl-C (committed batches are kept).

Challengers (`cxr-train challenge VERSION`) are scored in the shadow of the active version: each image the
run decodes is decoded once and scored by every model; readers see only the active version's predictions.
A challenger never changes the exit code: one whose checkpoint is missing, invalid, changed or has other
classes is left out of the run (logged, and "unavailable" in the JSON summary's "challengers").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from db.clitools import add_db_option, add_device_option, add_verbose_option, field_defaults, run_cli
from scoring.dicomweb import DicomwebSource
from scoring.run import ScoringRequest, run_scoring

log = logging.getLogger("cxr.score")

DEFAULTS = field_defaults(ScoringRequest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-score", description="Score new chest X-rays with the active model.",
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="folders (walked recursively) or files")
    parser.add_argument("--dicomweb", metavar="URL",
                        help="also pull the CR and DX instances not scored yet from this DICOMweb service (QIDO-RS, "
                             "WADO-RS) into $CXR_HOME/dicomweb and score them; credentials from CXR_DICOMWEB_TOKEN, "
                             "CXR_DICOMWEB_USER and CXR_DICOMWEB_PASSWORD, or the file CXR_DICOMWEB_CREDENTIALS "
                             "names, never in the URL")
    parser.add_argument("--since", type=since_date, metavar="DATE",
                        help="with --dicomweb: only studies dated on or after DATE (YYYY-MM-DD), or N days back (7d)")
    add_db_option(parser)
    parser.add_argument("--engine", choices=["local", "ray"], default=DEFAULTS["engine"],
                        help="local: this machine (default); ray: decoding and the models on a Ray cluster, this "
                             "process storing the results (needs the ray extra)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="with --engine ray: the cluster to join (default: start a local Ray)")
    parser.add_argument("--results-to", type=results_destination, metavar="DESTINATION",
                        help="after scoring, send each newly scored study a Structured Report of its predictions "
                             "(not for diagnostic use): dicom://CALLED_AE@host:port (C-STORE), dicom+tls://... "
                             "(C-STORE over TLS 1.2+) or a DICOMweb URL (STOW-RS, credentials as for --dicomweb); "
                             "once per study and model version")
    parser.add_argument("--results-tls-ca", type=Path, metavar="F",
                        help="with --results-to dicom+tls://: PEM CA certificate(s) that signed the PACS's "
                             "certificate (default: the system's CAs); the host must match its certificate")
    parser.add_argument("--results-tls-cert", type=Path, metavar="F",
                        help="with --results-to dicom+tls://: this side's PEM certificate (chain), for a PACS that "
                             "asks for one (mutual TLS)")
    parser.add_argument("--results-tls-key", type=Path, metavar="F",
                        help="the PEM private key of --results-tls-cert (default: in the certificate's file)")
    parser.add_argument("--results-calling-ae", default=DEFAULTS["results_calling_ae"], metavar="TITLE",
                        help="the calling AE title of --results-to dicom://... (default: %(default)s)")
    parser.add_argument("--patient-ids", type=Path, metavar="CSV",
                        help="the patients of PNG and JPEG films, which carry no Patient ID: a CSV with the columns "
                             "file (relative to the CSV's folder, or absolute) and patient_id, e.g. cxr-train's "
                             "labels.csv; stored as pseudonyms, films of earlier runs included")
    parser.add_argument("--model", metavar="CKPT", type=Path,
                        help="checkpoint to use (registered on first use), scored alone; default: the active model "
                             "version, with every challenger scored in its shadow")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], metavar="N")
    parser.add_argument("--workers", type=int, default=DEFAULTS["workers"], metavar="N",
                        help="decoding processes (default: the CPU cores, one fewer on CUDA; 0 = decode in-process)")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], metavar="N",
                        help="CPU threads for the model (default: the CPU cores, or 1 when decoding sets the pace)")
    add_device_option(parser, DEFAULTS["device"])
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=DEFAULTS["precision"],
                        help="auto: bf16 autocast on CUDA (fp16 where unsupported), float32 on the CPU")
    parser.add_argument("--settle-seconds", type=float, default=DEFAULTS["settle_seconds"], metavar="S",
                        help="leave files modified less than S seconds ago for the next run (default: %(default)g)")
    parser.add_argument("--read-timeout", type=float, default=DEFAULTS["read_timeout"], metavar="S",
                        help="give up on a file after S seconds (default: %(default)g)")
    parser.add_argument("--retry-failed", action="store_true", help="retry unchanged files that failed before")
    parser.add_argument("--log-file", type=Path, metavar="F", help="also append the log to F")
    parser.add_argument("--log-every", type=int, default=DEFAULTS["log_every"], metavar="N",
                        help="without a terminal, log progress every N decoded files (default: %(default)s)")
    parser.add_argument("--attributions", type=attribution_methods, default=DEFAULTS["attributions"],
                        metavar="METHOD[,METHOD]",
                        help="after scoring, precompute attribution maps of these methods (gradcam, "
                             "integrated_gradients, occlusion) for the cases a reviewer opens first")
    parser.add_argument("--attributions-top", type=int, default=DEFAULTS["attributions_top"], metavar="N",
                        help="maps for the N most uncertain cases plus every case not predicted normal "
                             "(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    add_verbose_option(parser)
    return parser


def since_date(text: str):
    from scoring.dicomweb import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def results_destination(text: str):
    from scoring.results_back import parse_destination

    try:
        return parse_destination(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def attribution_methods(text: str) -> tuple[str, ...]:
    from scoring.attribution.engine import METHODS

    methods = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(METHODS)}")
    return methods


def main(argv: list[str] | None = None) -> int:
    """Through :func:`db.clitools.run_cli` like every command, so that a ``--log-file`` that cannot be opened is
    exit 2 and one line (before any run starts, so without a JSON summary), never a traceback with exit 1."""
    parser = build_parser()
    return run_cli(parser, argv, log, lambda args: score(checked_arguments(parser, args)))


def checked_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if not args.paths and not args.dicomweb:
        parser.error("give a folder or file to score, or --dicomweb URL")
    if args.since and not args.dicomweb:
        parser.error("--since applies to --dicomweb")
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address applies to --engine ray")
    if args.results_to and args.model:
        parser.error("--results-to sends the active model version's results; it cannot go with --model")
    tls_files = (args.results_tls_ca, args.results_tls_cert, args.results_tls_key)
    if any(tls_files):
        from scoring.results_back import ClientTls, with_client_tls

        if args.results_to is None:
            parser.error("--results-tls-ca, --results-tls-cert and --results-tls-key apply to --results-to")
        try:
            args.results_to = with_client_tls(args.results_to, ClientTls(*tls_files))
        except ValueError as exc:
            parser.error(str(exc))
    return args


def score(args: argparse.Namespace) -> int:
    summary = run_scoring(request_from(args))
    if args.json:
        print(json.dumps(summary.as_dict()), flush=True)
    return summary.exit_code


def request_from(args: argparse.Namespace) -> ScoringRequest:
    source = DicomwebSource(args.dicomweb, args.since) if args.dicomweb else None
    return ScoringRequest(
        paths=tuple(args.paths), dicomweb=source, db_url=args.db, model=args.model, batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads, device=args.device, precision=args.precision, settle_seconds=args.settle_seconds,
        read_timeout=args.read_timeout, retry_failed=args.retry_failed, log_every=args.log_every,
        progress_bar=sys.stderr.isatty(), attributions=args.attributions, attributions_top=args.attributions_top,
        results_to=args.results_to, results_calling_ae=args.results_calling_ae, engine=args.engine,
        ray_address=args.ray_address, patient_ids=args.patient_ids)


if __name__ == "__main__":
    raise SystemExit(main())
