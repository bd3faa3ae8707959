"""kill -9 at several points of a run over a few hundred files loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

N_PNGS = 240
N_BROKEN = 12


@pytest.fixture
def big_corpus(tmp_path, cxr_dev) -> Path:
    root = tmp_path / "incoming"
    root.mkdir()
    for png in sorted(cxr_dev.glob("*/*.png"))[:N_PNGS]:
        shutil.copy2(png, root / png.name)
    sample = next(root.glob("*.png")).read_bytes()
    for i in range(N_BROKEN):
        (root / f"broken-{i:02d}.png").write_bytes(sample[: 200 + 97 * i])
    return root


def count(db_path: Path, sql: str) -> int:
    with sqlite3.connect(db_path, timeout=30) as connection:
        return connection.execute(sql).fetchone()[0]


def command(db_url: str, checkpoint: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "scoring", "--db", db_url, "--model", str(checkpoint), "--settle-seconds", "0",
            "--batch-size", "8", "--workers", "1", "--json", str(corpus)]


def kill_when(process: subprocess.Popen, db_path: Path, predictions_at_least: int, deadline_s: float = 120) -> None:
    """SIGKILL the scorer once it has committed at least this many predictions (0: as soon as it has a run)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s and process.poll() is None:
        try:
            runs = count(db_path, "SELECT count(*) FROM scoring_runs")
            done = count(db_path, "SELECT count(*) FROM predictions")
        except sqlite3.OperationalError:  # tables not created yet
            runs = done = 0
        if runs and done >= predictions_at_least:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed; raise the corpus size"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_kill_minus_nine_then_rerun(tmp_path, tiny_checkpoint, big_corpus):
    db_path = tmp_path / "cxr.db"
    db_url = f"sqlite:///{db_path}"
    cmd = command(db_url, tiny_checkpoint, big_corpus)
    for threshold in (0, 60, 150):  # during triage or the first batch, about a quarter, well past half
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(process, db_path, threshold)
    assert count(db_path, "SELECT count(*) FROM predictions") < N_PNGS

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode in (0, 1), final.stderr
    summary = json.loads(final.stdout.splitlines()[-1])
    assert summary["scanned"] == N_PNGS + N_BROKEN

    assert count(db_path, "SELECT count(*) FROM predictions") == N_PNGS
    assert count(db_path, "SELECT count(*) FROM (SELECT image_id, model_version_id FROM predictions "
                          "GROUP BY 1, 2 HAVING count(*) > 1)") == 0
    assert count(db_path, "SELECT count(*) FROM image_files") == N_PNGS
    assert count(db_path, "SELECT count(DISTINCT path) FROM scoring_failures") == N_BROKEN
    assert count(db_path, "SELECT count(*) FROM scoring_failures") == N_BROKEN
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = [row[0] for row in connection.execute("SELECT status FROM scoring_runs ORDER BY id")]
    assert statuses == ["interrupted"] * 3 + ["finished"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = json.loads(again.stdout.splitlines()[-1])
    assert (again.returncode, summary["scored"], summary["skipped"], summary["known_failures"]) == \
        (0, 0, N_PNGS, N_BROKEN)
