"""``cxr-demo``: the nightly scoring job on a fresh machine with nothing else, using synthetic data.

Writes the synthetic demo cohort to ``$CXR_HOME/demo/images`` (once), trains and promotes the demo model when
no model version is active (a real active model is used as it is), then runs the scorer over the cohort —
exactly what cron would run every night, on phantoms instead of patients.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from db import config, migrate
from db.clitools import run_database_command, setup_logging
from db.engine import get_engine, read_session, write_session
from db.results import active_model_version
from model_training import registry
from model_training.train import TrainConfig, train
from scoring import cli as scoring_cli

log = logging.getLogger("cxr.demo")

DEMO_MODEL_NAME = "demo-synthetic"
DEMO_TRAINING = {"img_size": 64, "epochs": 12, "batch_size": 32, "patience": 4}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", metavar="URL", help="database URL (default: $CXR_DB_URL or $CXR_HOME/cxr.db)")
    parser.add_argument("--n", type=int, default=240, help="phantoms in a new demo cohort (default: 240)")
    parser.add_argument("--json", action="store_true", help="end with the scorer's JSON summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    return run_database_command(log, args.db, lambda: run_demo(args))


def run_demo(args: argparse.Namespace) -> int:
    home = config.ensure_home()
    images = ensure_cohort(home / "demo" / "images", args.n)
    engine = get_engine(args.db)
    migrate.ensure_schema(engine)
    ensure_active_model(engine, images, home / "models" / DEMO_MODEL_NAME, args.db)
    scorer_args = [str(images), "--settle-seconds", "0", *(["--db", args.db] if args.db else []),
                   *(["--json"] if args.json else [])]
    code = scoring_cli.main(scorer_args)
    if code in (scoring_cli.EXIT_OK, scoring_cli.EXIT_FAILURES):
        log.info("demo scored. The cohort holds a few deliberately broken files (`cxr-db failures` lists them) "
                 "and out-of-scope studies. Next: `cxr-db add-reviewer NAME --role admin`, then "
                 "`streamlit run dashboard`.")
        return 0
    return code


def ensure_cohort(folder: Path, n: int) -> Path:
    if (folder / "labels.csv").is_file():
        log.info("using the demo cohort in %s", folder)
        return folder
    from model_training.demo_data import write_demo_cohort

    log.info("writing a synthetic demo cohort of %d phantoms to %s", n, folder)
    write_demo_cohort(folder, n=n, overwrite=True)  # no labels.csv: nothing, or an interrupted earlier try
    return folder


def ensure_active_model(engine, images: Path, out: Path, db_url: str | None) -> None:
    with read_session(engine) as session:
        active = active_model_version(session)
    if active is not None:
        log.info("using the active model version %d (%s)", active.id, active.name or active.sha256[:12])
        return
    with read_session(engine) as session:
        trained = [v for v in registry.list_versions(session) if v.name == DEMO_MODEL_NAME and v.is_synthetic]
    if trained:
        version_id = trained[-1].id
    else:
        log.info("no active model: training the synthetic demo model (%s px, at most %d epochs)",
                 DEMO_TRAINING["img_size"], DEMO_TRAINING["epochs"])
        result = train(TrainConfig(data=str(images), out=str(out), name=DEMO_MODEL_NAME, synthetic=True,
                                   db=db_url, **DEMO_TRAINING))
        version_id = result.model_version_id
    with write_session(engine) as session:
        registry.promote(session, str(version_id))
    log.warning("the active model is the synthetic demo model (version %d): its predictions mean nothing "
                "clinically", version_id)


if __name__ == "__main__":
    raise SystemExit(main())
