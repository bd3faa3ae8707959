"""The nightly scorer and reviewers on one database at once: reviewer processes write reviews through the
dashboard's write functions while the scorer commits its batches. No "database is locked" reaches either
side, no review is lost, and the SQLite WAL is small again after the run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import migrate
from db.engine import create_database_engine, read_session, write_session
from db.models import Prediction, Review
from db.reviewers import add_reviewer
from scoring.imaging import TEST_DELAY_ENV
from tests.reliability.conftest import scale

N_FILES = scale(600, 3000)
N_REVIEWERS = scale(4, 10)
REVIEW_SECONDS = scale(12, 120)
WAL_LIMIT_BYTES = 8 * 1024 * 1024

# One simulated reviewer: picks a scored case and reads it, then writes through the dashboard's own write functions
# (dashboard.actions.claim when the case opens, dashboard.actions.save_review on "Save and next"), each its own
# short write transaction, and counts what it attempted, what it wrote, the cases it found claimed by another
# reviewer, and every error it met. dashboard.actions reaches the database through dashboard.data.engine(), a
# Streamlit cache_resource, which outside a Streamlit server is an in-memory cache: the engine of CXR_DB_URL.
REVIEWER = """
import json, os, random, sys, time
url, username, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.environ["CXR_DB_URL"] = url
from sqlalchemy import func, select
from dashboard import actions, data
from db import signin
from db.engine import read_session
from db.models import Prediction, Reviewer

engine = data.engine()
rng = random.Random(username)
attempted, written, claimed_by_others, errors = 0, 0, 0, []
deadline = time.monotonic() + seconds
with read_session(engine) as session:
    me = signin.current_account(session, session.scalar(select(Reviewer.id).where(Reviewer.username == username)))
while time.monotonic() < deadline:
    try:
        with read_session(engine) as session:
            top = session.scalar(select(func.max(Prediction.id))) or 0
            case = session.execute(select(Prediction.id, Prediction.image_id, Prediction.predicted_class)
                                   .where(Prediction.id >= rng.randint(0, top)).limit(1)).first()
        if case is None:
            time.sleep(0.05)
            continue
        if not actions.claim(me, case.image_id).claimed:
            claimed_by_others += 1  # the page would offer a second reading; this reviewer takes another case
            continue
        label = rng.choice(["covid", "normal", "pneumonia"])
        attempted += 1
        actions.save_review(me, image_id=case.image_id, prediction_id=case.id, label=label,
                            flagged=label != case.predicted_class, comment=f"load test {written}",
                            mode="standard", overlay_shown=False, seconds_spent=rng.uniform(2.0, 30.0))
        written += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    time.sleep(rng.uniform(0.0, 0.05))
print(json.dumps({"attempted": attempted, "written": written, "claimed_by_others": claimed_by_others,
                  "errors": errors}))
"""


def run_load(db_url: str, checkpoint: Path, corpus: Path) -> dict:
    engine = create_database_engine(db_url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        for i in range(N_REVIEWERS):
            add_reviewer(session, f"reader{i}", "a long enough password")
    # Reads slowed down so that the scorer commits batches during the whole review period, not only its start.
    slow_reads = {**os.environ, TEST_DELAY_ENV: f"{0.8 * REVIEW_SECONDS / N_FILES:.4f}"}
    scorer = subprocess.Popen([sys.executable, "-m", "scoring", "--db", db_url, "--model", str(checkpoint),
                               "--batch-size", "16", "--workers", "1", "--json", str(corpus)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slow_reads)
    reviewers = [subprocess.Popen([sys.executable, "-c", REVIEWER, db_url, f"reader{i}", str(REVIEW_SECONDS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(N_REVIEWERS)]
    started = time.monotonic()
    outputs = [r.communicate(timeout=REVIEW_SECONDS + 300) for r in reviewers]
    scorer_out, scorer_err = scorer.communicate(timeout=1800)
    elapsed = time.monotonic() - started
    assert scorer.returncode == 0, scorer_err
    assert "locked" not in scorer_err.lower()
    attempted, written, claimed_by_others, errors = 0, 0, 0, []
    for reviewer, (out, err) in zip(reviewers, outputs, strict=True):
        assert reviewer.returncode == 0, err
        report = json.loads(out.splitlines()[-1])
        attempted += report["attempted"]
        written += report["written"]
        claimed_by_others += report["claimed_by_others"]
        errors += report["errors"]
    assert errors == []  # no "database is locked", nor anything else
    assert written == attempted > 0  # every save the reviewers attempted went through
    with read_session(engine) as session:
        stored = session.scalar(select(func.count()).select_from(Review))
        scored = session.scalar(select(func.count()).select_from(Prediction))
    engine.dispose()
    assert stored == written  # no review lost
    assert scored == N_FILES
    summary = json.loads(scorer_out.splitlines()[-1])
    return {"reviews": written, "claimed_by_others": claimed_by_others, "reviewers": N_REVIEWERS,
            "files": N_FILES, "seconds": round(elapsed, 1), "scorer_seconds": summary["seconds"]}


@pytest.mark.slow
@pytest.mark.timeout(scale(600, 3600))
def test_scorer_and_reviewers_on_sqlite(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(N_FILES)
    db_path = tmp_path / "cxr.db"
    wal = db_path.with_name("cxr.db-wal")
    peak, done = [0], threading.Event()

    def watch_wal() -> None:
        while not done.wait(0.2):
            with contextlib.suppress(FileNotFoundError):
                peak[0] = max(peak[0], wal.stat().st_size)

    watcher = threading.Thread(target=watch_wal)
    watcher.start()
    try:
        figures = run_load(f"sqlite:///{db_path}", tiny_checkpoint, corpus)
    finally:
        done.set()
        watcher.join()
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    assert wal_bytes <= WAL_LIMIT_BYTES
    print(f"\nSQLite: {figures}, WAL at most {peak[0]} bytes during the run, {wal_bytes} after it")


@pytest.mark.slow
@pytest.mark.timeout(scale(600, 3600))
def test_scorer_and_reviewers_on_postgresql(tmp_path, tiny_checkpoint, corpus_factory, postgres_url):
    import uuid

    from sqlalchemy import create_engine, make_url

    name = f"cxr_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        figures = run_load(url, tiny_checkpoint, corpus_factory(N_FILES))
        print(f"\nPostgreSQL: {figures}")
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
