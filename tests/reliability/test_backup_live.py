"""``cxr-db backup`` while the scorer writes: every copy opens, passes the integrity check and holds whole
batches only (each run's counters equal the rows it committed)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

from db.backup import backup_database
from scoring.imaging import TEST_DELAY_ENV
from tests.reliability.conftest import scale


def test_backups_of_a_database_being_written(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(scale(150, 1000))
    db_path = tmp_path / "cxr.db"
    env = {**os.environ, TEST_DELAY_ENV: "0.02"}  # slow reads: the run is still writing while we copy
    scorer = subprocess.Popen([sys.executable, "-m", "scoring", "--db", f"sqlite:///{db_path}", "--model",
                               str(tiny_checkpoint), "--batch-size", "4", "--workers", "1", str(corpus)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    copies = []
    try:
        while scorer.poll() is None and len(copies) < scale(4, 20):
            time.sleep(0.5)
            if not db_path.exists() or _predictions(db_path) == 0:
                continue
            copies.append(backup_database(f"sqlite:///{db_path}", tmp_path / f"copy-{len(copies)}.db"))
    finally:
        assert scorer.wait(timeout=600) == 0
    assert len(copies) >= 2, "the run ended before two copies were taken; raise the corpus size"
    counts = []
    for copy in copies:
        with sqlite3.connect(copy.path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for run_id, scored in db.execute("SELECT id, scored FROM scoring_runs"):
                assert db.execute("SELECT count(*) FROM predictions WHERE run_id = ?",
                                  (run_id,)).fetchone()[0] == scored
            counts.append(db.execute("SELECT count(*) FROM predictions").fetchone()[0])
    assert counts == sorted(counts) and counts[-1] < _predictions(db_path)  # taken mid-run, in order
    print(f"\n{len(copies)} copies during the run, predictions in them: {counts}")


def _predictions(db_path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=30) as db:
            return db.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
