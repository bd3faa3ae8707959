"""``cxr-db backup`` while the scorer writes: every copy opens, passes the integrity check and holds whole
batches only (each run's counters equal the rows it committed). Pointed at the live database itself (or a link
to it, or its side files) while a writer commits, it is refused and the writer loses nothing; started together
in the same second, each backup makes its own copy."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from db import migrate
from db.backup import backup_database
from db.engine import create_database_engine, write_session
from db.models import Image
from db.reviewers import add_reviewer
from scoring.imaging import TEST_DELAY_ENV
from tests.reliability.conftest import scale


@pytest.mark.slow
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


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from db.engine import create_database_engine, write_session
    from db.reviews import add_review
    engine = create_database_engine(sys.argv[1])
    stop, commits = Path(sys.argv[2]), 0
    while not stop.exists() or commits < 50:
        with write_session(engine) as session:
            add_review(session, image_id=1, reviewer_id=1, label="normal", comment=f"commit {commits}")
        commits += 1
    print(commits)
""")


def _destinations(db_path: Path) -> dict[str, Path]:
    """The live database under every name that reaches it, and its side files."""
    folder = db_path.parent
    (folder / "link.db").symlink_to(db_path)
    os.link(db_path, folder / "hard.db")
    (folder.parent / "linked-folder").symlink_to(folder)
    return {"its own path": db_path, "a symbolic link": folder / "link.db", "a hard link": folder / "hard.db",
            "a linked folder": folder.parent / "linked-folder" / db_path.name,
            "its -wal": db_path.with_name(db_path.name + "-wal"), "its -shm": db_path.with_name(db_path.name + "-shm")}


def test_backup_onto_the_live_database_is_refused_while_a_writer_commits(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    db_path = folder / "cxr.db"
    url = f"sqlite:///{db_path}"
    engine = create_database_engine(url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        add_reviewer(session, "ada", "a long enough password")
        session.add(Image(sha256="a" * 64, path="/x.png", size_bytes=1, mtime=0.0, format="png"))
    engine.dispose()
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        while not _reviews(db_path):
            time.sleep(0.05)
        backups = {name: subprocess.Popen([sys.executable, "-m", "db", "--db", url, "backup", str(destination)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for name, destination in _destinations(db_path).items()}
        outcomes = {name: (b.wait(timeout=120), b.stdout.read(), b.stderr.read()) for name, b in backups.items()}
    finally:
        stop.touch()
        commits = int(writer.communicate(timeout=120)[0])
    for name, (code, out, err) in outcomes.items():
        lines = err.strip().splitlines()
        assert code == 2 and out == "", f"{name}: exit {code}, {out!r} {err!r}"
        assert len(lines) == 1 and "one of its -wal, -shm or -journal files" in lines[0], f"{name}: {err!r}"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM reviews").fetchone()[0] == commits  # not one commit lost
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("cxr.db")) == ["hard.db", "link.db"]
    print(f"\n{len(outcomes)} refused backups while the writer made {commits} commits, all kept")


def _reviews(db_path: Path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=30) as db:
            return db.execute("SELECT count(*) FROM reviews").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


STARTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from db import cli
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.001)
    raise SystemExit(cli.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("at_once", [scale(4, 8)])
def test_backups_started_in_the_same_second_each_make_their_own_copy(tmp_path, sqlite_url, at_once):
    engine = create_database_engine(sqlite_url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        add_reviewer(session, "ada", "a long enough password")
    engine.dispose()
    folder, go = tmp_path / "backups", tmp_path / "go"
    folder.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", STARTER, str(go), "--db", sqlite_url, "backup", str(folder)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(at_once)]
    time.sleep(3)  # all started and waiting; then go just after a second begins, so they share it
    time.sleep(1.02 - time.time() % 1)
    go.touch()
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    assert [code for code, _, _ in results] == [0] * at_once, results
    copies = sorted(folder.iterdir())
    assert len(copies) == at_once and sorted(out.split("\t")[0] for _, out, _ in results) == [str(c) for c in copies]
    for copy in copies:
        with sqlite3.connect(copy) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT username FROM reviewers").fetchall() == [("ada",)]
    print(f"\n{at_once} backups at once: {', '.join(c.name for c in copies)}")
