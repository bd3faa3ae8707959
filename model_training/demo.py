"""``cxr-demo``: the nightly scoring job on a fresh machine with nothing else, using synthetic data.

Writes the synthetic demo cohort to ``$CXR_HOME/demo/images`` (once), trains and promotes the demo model when
no model version is active (a real active model is used as it is), then runs the scorer over the cohort —
exactly what cron would run every night, on phantoms instead of patients.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from pathlib import Path

from db import config, migrate, model_versions, reviewers
from db.clitools import add_db_option, add_verbose_option, run_cli
from db.engine import get_engine, read_session, write_session
from model_training.config import TrainConfig
from model_training.train import train
from scoring.run import EXIT_FAILURES, EXIT_OK, ScoringRequest, run_scoring

log = logging.getLogger("cxr.demo")

DEMO_MODEL_NAME = "demo-synthetic"
DEMO_ACCOUNT = "demo"
# workers=0: the phantoms decode in about 5 ms each, and on a small machine two decoding processes only take the
# cores from the model (on 2 cores an epoch took 3.4 s with two workers, 1.9 s without, the same weights)
DEMO_TRAINING = {"img_size": 64, "epochs": 8, "batch_size": 32, "patience": 4, "workers": 0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-demo", description=__doc__.split("\n\n")[0])
    add_db_option(parser)
    parser.add_argument("--n", type=int, default=240, help="phantoms in a new demo cohort (default: 240)")
    parser.add_argument("--json", action="store_true", help="end with the scorer's JSON summary")
    add_verbose_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, log, run_demo)


def run_demo(args: argparse.Namespace) -> int:
    home = config.ensure_home()
    images = ensure_cohort(home / "demo" / "images", args.n)
    engine = get_engine(args.db)
    migrate.ensure_schema(engine)
    ensure_active_model(engine, images, home / "models" / DEMO_MODEL_NAME, args.db)
    # The cohort was just written: nothing in it is still being copied, so nothing needs to settle.
    summary = run_scoring(ScoringRequest(paths=(str(images),), db_url=args.db, settle_seconds=0,
                                         progress_bar=sys.stderr.isatty()))
    if summary.exit_code in (EXIT_OK, EXIT_FAILURES):
        ensure_demo_account(engine)
    if args.json:
        print(json.dumps(summary.as_dict()), flush=True)
    if summary.exit_code in (EXIT_OK, EXIT_FAILURES):
        log.info("demo scored. The cohort holds a few deliberately broken files (`cxr-db failures` lists them) "
                 "and out-of-scope studies. Next: `streamlit run dashboard`.")
        return 0
    return summary.exit_code


def ensure_demo_account(engine) -> None:
    """A dashboard account for the demo, with a random password printed once (there is no fixed password)."""
    with write_session(engine) as session:
        if reviewers.find_reviewer(session, DEMO_ACCOUNT) is not None:
            log.info("the demo account %r exists (new password: `cxr-db set-password %s`)", DEMO_ACCOUNT, DEMO_ACCOUNT)
            return
        password = secrets.token_urlsafe(12)
        reviewers.add_reviewer(session, DEMO_ACCOUNT, password, role="admin", display_name="Demo admin")
    print(f"Dashboard sign-in: user {DEMO_ACCOUNT!r}, password {password!r} (shown once; "
          f"`cxr-db set-password {DEMO_ACCOUNT}` sets a new one)", flush=True)


def ensure_cohort(folder: Path, n: int) -> Path:
    if (folder / "labels.csv").is_file():
        log.info("using the demo cohort in %s", folder)
        return folder
    from model_training.demo_cohort import write_demo_cohort

    log.info("writing a synthetic demo cohort of %d phantoms to %s", n, folder)
    write_demo_cohort(folder, n=n, overwrite=True)  # no labels.csv: nothing, or an interrupted earlier try
    return folder


def ensure_active_model(engine, images: Path, out: Path, db_url: str | None) -> None:
    with read_session(engine) as session:
        active = model_versions.active_version(session)
    if active is not None:
        log.info("using the active model version %d (%s)", active.id, active.name or active.sha256[:12])
        return
    with read_session(engine) as session:
        trained = [v for v in model_versions.list_versions(session)
                   if v.name == DEMO_MODEL_NAME and v.is_synthetic]
    if trained:
        version_id = trained[-1].id
        log.info("no active model: the synthetic demo model was trained before (version %d)", version_id)
    else:
        log.info("no active model: training the synthetic demo model (%s px, at most %d epochs)",
                 DEMO_TRAINING["img_size"], DEMO_TRAINING["epochs"])
        result = train(TrainConfig(data=str(images), out=str(out), name=DEMO_MODEL_NAME, synthetic=True,
                                   db=db_url, **DEMO_TRAINING))
        version_id = result.model_version_id
    with write_session(engine) as session:
        model_versions.promote(session, str(version_id))
    # training registers every version inactive; the demo alone promotes without asking
    log.warning("promoted model version %d, the synthetic demo model, so that the scorer uses it: its predictions "
                "mean nothing clinically", version_id)


if __name__ == "__main__":
    raise SystemExit(main())
