"""kill -9 at random moments of a scoring run (start-up, triage, scoring, committing) and of a training run;
after each kill and a rerun, nothing is lost, nothing is duplicated, and the database is intact."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoring.model import load_checkpoint
from tests.conftest import live_processes_naming
from tests.reliability.conftest import scale

N_GOOD = scale(120, 400)
N_BROKEN = 6
N_KILLS = scale(3, 20)


def scorer(db_path: Path, checkpoint: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "scoring", "--db", f"sqlite:///{db_path}", "--model", str(checkpoint),
            "--batch-size", "8", "--workers", "1", "--json", str(corpus)]


def check_invariants(db_path: Path, *, complete: bool) -> None:
    with sqlite3.connect(db_path, timeout=30) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not complete and not tables:
            return  # killed before the schema's one transaction committed: the rerun creates it
        assert {"alembic_version", "predictions", "scoring_runs"} <= tables, f"a half-created schema: {tables}"
        assert db.execute("SELECT count(*) FROM (SELECT image_id, model_version_id FROM predictions "
                          "GROUP BY 1, 2 HAVING count(*) > 1)").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM (SELECT path FROM scoring_failures "
                          "GROUP BY path HAVING count(*) > 1)").fetchone()[0] == 0
        # Each batch commits its rows with the run's counters: a half-written batch would break the equality.
        for run_id, scored, failed in db.execute("SELECT id, scored, failed FROM scoring_runs"):
            assert db.execute("SELECT count(*) FROM predictions WHERE run_id = ?", (run_id,)).fetchone()[0] == scored
            assert db.execute("SELECT count(*) FROM scoring_failures WHERE run_id = ?",
                              (run_id,)).fetchone()[0] == failed
        if complete:
            assert db.execute("SELECT count(*) FROM predictions").fetchone()[0] == N_GOOD
            assert db.execute("SELECT count(*) FROM scoring_failures").fetchone()[0] == N_BROKEN
            assert db.execute("SELECT count(*) FROM scoring_runs WHERE status = 'running'").fetchone()[0] == 0


def assert_nothing_left_of(path: Path) -> None:
    """No DataLoader worker (its command line is its parent's, which names ``path``) outlives a killed run."""
    if not Path("/proc/self").exists():
        return
    deadline = time.monotonic() + 15
    while (left := live_processes_naming(str(path))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes {left} outlived the killed run of {path}"


def _wait_for_database(process: subprocess.Popen, db_path) -> None:
    while process.poll() is None and not (db_path.exists() and db_path.stat().st_size):
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(scale(600, 3600))
def test_kill_minus_nine_at_random_moments_then_rerun(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(N_GOOD, N_BROKEN)
    whole_db = tmp_path / "whole.db"
    whole = subprocess.Popen(scorer(whole_db, tiny_checkpoint, corpus), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _wait_for_database(whole, whole_db)
    started = time.monotonic()
    stderr = whole.communicate(timeout=600)[1]
    duration = time.monotonic() - started  # from the database's creation to the end
    assert whole.returncode == 1, stderr  # the broken files failed
    check_invariants(tmp_path / "whole.db", complete=True)

    # Kill moments count from the database's creation, not from the start: a loaded machine starts Python and
    # torch slowly, and kills that all land before the database exists would prove nothing. A round that finishes
    # before its kill (this run quicker than the reference) is checked and run again with half the moment, so every
    # planned kill is delivered with the database in use however the machine's load changes.
    moments = random.Random(9).sample([duration * i / (4 * N_KILLS) for i in range(4 * N_KILLS)], N_KILLS)
    finished_first = 0
    for round_, moment in enumerate(sorted(moments)):
        db_path = tmp_path / f"round-{round_}.db"
        while not kill_at(moment, db_path, tiny_checkpoint, corpus):
            check_invariants(db_path, complete=True)
            finished_first += 1
            db_path = tmp_path / f"round-{round_}-again-{finished_first}.db"
            moment /= 2
        check_invariants(db_path, complete=False)
        rerun = subprocess.run(scorer(db_path, tiny_checkpoint, corpus), capture_output=True, text=True,
                               timeout=600)
        assert rerun.returncode in (0, 1), rerun.stderr
        summary = json.loads(rerun.stdout.splitlines()[-1])
        assert summary["scanned"] == N_GOOD + N_BROKEN
        check_invariants(db_path, complete=True)
    print(f"\n{N_KILLS} kills within the {duration:.1f} s a run of {N_GOOD + N_BROKEN} files writes its database "
          f"({finished_first} round(s) finished first and were run again with half the moment)")


def kill_at(moment: float, db_path: Path, checkpoint: Path, corpus: Path) -> bool:
    """A scoring run killed ``moment`` seconds after its database appeared; False if it finished first."""
    process = subprocess.Popen(scorer(db_path, checkpoint, corpus), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for_database(process, db_path)
    assert db_path.exists() and db_path.stat().st_size, f"the run ended ({process.returncode}) before its database"
    time.sleep(moment)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    killed = process.wait(timeout=30) == -signal.SIGKILL
    assert_nothing_left_of(db_path)
    return killed


TRAIN_SCRIPT = """
import sys
from model_training import cli
sys.exit(cli.main(sys.argv[1:]))
"""


N_TRAINING_KILLS = scale(2, 20)


@pytest.mark.slow
@pytest.mark.timeout(scale(900, 3600))
def test_kill_minus_nine_during_training_then_resume(tmp_path, cxr_dev, sqlite_url):
    """``cxr-train train --resume`` after kill -9 at random moments ends with the weights of an unbroken run.

    Every planned kill is delivered: a run that finishes before its kill is checked like any other and the
    remaining kills go to a new run, so the long version always tries N_TRAINING_KILLS moments."""
    data = tmp_path / "data"
    for label in ("covid", "normal", "pneumonia"):
        (data / label).mkdir(parents=True)
        for png in sorted((cxr_dev / label).glob("*.png"))[:8]:
            (data / label / png.name).symlink_to(png)
    epochs = scale(2, 5)
    db_path = tmp_path / "cxr.db"  # sqlite_url's file: the runs register their versions there
    arguments = ["train", "--data", str(data), "--img-size", "32", "--epochs", str(epochs), "--batch-size", "8",
                 "--seed", "3", "--db", sqlite_url, "--patience", "100"]

    def train(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, *arguments, "--out", str(out), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    started = time.monotonic()
    whole = train(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    duration = time.monotonic() - started
    reference = load_checkpoint(tmp_path / "whole" / "model.pt").state_dict

    def check_finished(process: subprocess.Popen, out: Path) -> None:
        assert process.wait(timeout=600) == 0, process.stderr.read()
        history = (out / "history.csv").read_text().splitlines()[1:]
        assert [row.split(",")[0] for row in history] == [str(e) for e in range(1, epochs + 1)]
        resumed = load_checkpoint(out / "model.pt").state_dict
        assert all(torch.equal(reference[k], resumed[k]) for k in reference)
        assert not (out / "last.pt").exists()  # a finished run removes its state

    rng = random.Random(5)
    delivered, runs = 0, 1
    out = tmp_path / "killed-1"
    process = train(out)
    while delivered < N_TRAINING_KILLS:
        time.sleep(rng.uniform(0.5, duration / 2))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        if process.wait(timeout=30) != -signal.SIGKILL:  # it finished first: check it, kill the next run
            check_finished(process, out)
            runs += 1
            out = tmp_path / f"killed-{runs}"
            process = train(out)
            continue
        delivered += 1
        assert_nothing_left_of(out)  # its DataLoader workers share its command line
        if db_path.exists():
            with sqlite3.connect(db_path, timeout=30) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        process = train(out, "--resume") if (out / "last.pt").exists() else train(out)
    check_finished(process, out)
    assert delivered == N_TRAINING_KILLS
    print(f"\n{delivered} kills over {runs} training run(s) of {epochs} epochs ({duration:.1f} s unbroken)")
