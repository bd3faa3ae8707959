"""Faults the nightly job meets in the wild: each gives one clear line, the documented exit code, and no
half-written batch (every run's counters equal the rows it committed).

The read-only and full-disk tests that use real mounts skip without mount rights; the ``injected`` tests below
raise the same errors from inside the process (SQLite's own error texts, ``OSError(ENOSPC)`` from a file write),
so they run on every machine and CI cannot pass without checking these faults.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, event

import model_training.train
import scoring.model
from db import migrate
from db.engine import create_database_engine
from model_training import cli as train_cli
from scoring import cli as score_cli
from tests.conftest import tmpfs
from tests.reliability.conftest import sqlite_value

N_GOOD = 60


def score(db_url: str, checkpoint: Path, corpus: Path, *, env: dict | None = None,
          cxr_home: Path | None = None) -> tuple[int, dict, list[str]]:
    """Run cxr-score; return its exit code, JSON summary and the ERROR lines of its log."""
    environment = {**os.environ, **(env or {})}
    if cxr_home is not None:
        environment["CXR_HOME"] = str(cxr_home)
    result = subprocess.run([sys.executable, "-m", "scoring", "--db", db_url, "--model", str(checkpoint),
                             "--batch-size", "8", "--workers", "1", "--json", str(corpus)],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    return result.returncode, json.loads(result.stdout.splitlines()[-1]), errors


def batches_whole(db_path: Path) -> None:
    with sqlite3.connect(db_path, timeout=30) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for run_id, scored, failed in db.execute("SELECT id, scored, failed FROM scoring_runs"):
            assert db.execute("SELECT count(*) FROM predictions WHERE run_id = ?", (run_id,)).fetchone()[0] == scored
            assert db.execute("SELECT count(*) FROM scoring_failures WHERE run_id = ?",
                              (run_id,)).fetchone()[0] == failed


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.mark.slow
def test_a_read_only_database_folder(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(N_GOOD)
    with tmpfs(tmp_path / "ro", "64m") as folder:
        db_url = f"sqlite:///{folder / 'cxr.db'}"
        assert score(db_url, tiny_checkpoint, corpus / "..", cxr_home=tmp_path / "home")[0] in (0, 1)
        corpus_factory(10, name="tonight")
        remount(folder, "ro")
        code, summary, errors = score(db_url, tiny_checkpoint, tmp_path / "tonight", cxr_home=tmp_path / "home")
        assert code == 2 and summary["exit_code"] == 2
        assert len(errors) == 1 and "read-only" in errors[0]
        remount(folder, "rw")
        batches_whole(folder / "cxr.db")


@pytest.mark.slow
def test_a_read_only_database_file(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(N_GOOD)
    db_path = tmp_path / "cxr.db"
    assert score(f"sqlite:///{db_path}", tiny_checkpoint, corpus)[0] == 0
    corpus_factory(10, name="tonight")
    bound = subprocess.run(["mount", "--bind", str(db_path), str(db_path)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bound.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(db_path)], check=True)
        code, _, errors = score(f"sqlite:///{db_path}", tiny_checkpoint, tmp_path / "tonight")
    finally:
        subprocess.run(["umount", "-l", str(db_path)], check=False)
    assert code == 2 and len(errors) == 1 and "read-only" in errors[0]
    batches_whole(db_path)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_a_rerun_finishes_it(tmp_path, tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(200)
    with tmpfs(tmp_path / "small", "400k") as folder:
        db_url = f"sqlite:///{folder / 'cxr.db'}"
        code, summary, errors = score(db_url, tiny_checkpoint, corpus, cxr_home=tmp_path / "home")
        assert code == 2, errors
        assert len(errors) == 1 and "full" in errors[0]
        batches_whole(folder / "cxr.db")
        remount(folder, "size=64m")  # space freed: the next night finishes the rest, nothing twice
        code, summary, _ = score(db_url, tiny_checkpoint, corpus, cxr_home=tmp_path / "home")
        assert code == 0 and summary["skipped"] + summary["scored"] == 200
        with sqlite3.connect(folder / "cxr.db") as db:
            assert db.execute("SELECT count(*) FROM predictions").fetchone()[0] == 200
        batches_whole(folder / "cxr.db")


def corrupt_checkpoints(good: Path, folder: Path) -> dict[str, Path]:
    folder.mkdir()
    data = good.read_bytes()
    cases = {"missing": folder / "nope.pt", "truncated": folder / "truncated.pt", "random": folder / "random.pt",
             "empty": folder / "empty.pt", "not a checkpoint": folder / "other.pt"}
    cases["truncated"].write_bytes(data[: len(data) // 2])
    cases["random"].write_bytes(os.urandom(4096))
    cases["empty"].write_bytes(b"")
    import torch

    torch.save({"weights": torch.zeros(3)}, cases["not a checkpoint"])
    return cases


def test_a_missing_or_corrupt_checkpoint(tmp_path, tiny_checkpoint, corpus_factory, sqlite_url, capsys, caplog):
    """Each refused before a run began, with one line naming the file. The first as cron runs it, in a process of its
    own (no traceback on stderr); the others in this process, which saves a torch start-up each."""
    corpus = corpus_factory(5)
    for n, (name, checkpoint) in enumerate(corrupt_checkpoints(tiny_checkpoint, tmp_path / "models").items()):
        if n == 0:
            code, summary, errors = score(sqlite_url, checkpoint, corpus)
        else:
            code, summary, errors = score_in_process(capsys, caplog, tmp_path / "cxr.db", checkpoint, corpus)
        assert code == 2, name
        assert len(errors) == 1 and str(checkpoint) in errors[0], (name, errors)
        assert summary["run_id"] is None, name  # refused before a run began


@pytest.mark.slow
def test_an_active_model_whose_file_was_replaced(tmp_path, tiny_checkpoint, corpus_factory, sqlite_url):
    corpus = corpus_factory(5)
    model = tmp_path / "active.pt"
    shutil.copy(tiny_checkpoint, model)
    assert score(sqlite_url, model, corpus)[0] == 0
    engine = create_database_engine(sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE model_versions SET is_active = 1")
    engine.dispose()
    model.write_bytes(model.read_bytes()[:1000])
    result = subprocess.run([sys.executable, "-m", "scoring", "--db", sqlite_url, "--json", str(corpus)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_missing_codec_plugin(tmp_path, tiny_checkpoint, corpus_factory, sqlite_url):
    """Without GDCM, JPEG lossless DICOMs could not be decoded: the run refuses to start rather than record
    good files as failures that would not be retried once the codec is back."""
    corpus = corpus_factory(5)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gdcm.py").write_text('raise ImportError("simulated: python-gdcm is not installed")\n')
    code, summary, errors = score(sqlite_url, tiny_checkpoint, corpus, env={"PYTHONPATH": str(shadow)})
    assert code == 2 and summary["run_id"] is None
    assert len(errors) == 1 and "python-gdcm" in errors[0]


def test_a_database_on_an_old_schema(tmp_path, tiny_checkpoint, corpus_factory, sqlite_url):
    corpus = corpus_factory(5)
    engine = create_database_engine(sqlite_url)
    migrate.upgrade(engine, "0001")
    engine.dispose()
    code, summary, errors = score(sqlite_url, tiny_checkpoint, corpus)
    assert code == 2 and len(errors) == 1 and "cxr-db upgrade" in errors[0]


def test_an_unreachable_postgresql_server(tiny_checkpoint, corpus_factory):
    corpus = corpus_factory(5)
    url = "postgresql+psycopg://cxr:Sup3rSecretPassw0rd@127.0.0.1:9/cxr"  # port 9 (discard): nothing listens
    code, summary, errors = score(url, tiny_checkpoint, corpus)
    assert code == 2 and len(errors) == 1 and "unreachable" in errors[0]
    assert "Sup3rSecretPassw0rd" not in "\n".join(errors)


# --- the same faults injected in-process: these never skip ---------------------------------------------------

@contextlib.contextmanager
def failing_statements(error: sqlite3.Error, first_words: tuple[str, ...], *, after: int = 0):
    """Every SQL statement that starts with one of ``first_words`` (upper case) raises ``error`` once ``after``
    of them went through. Raised where the driver's cursor would raise it, so SQLAlchemy wraps it exactly as it
    wraps SQLite's own error, and every layer above sees what a real full or read-only database gives."""
    passed = [0]

    def fail(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(first_words):
            if passed[0] >= after:
                raise error
            passed[0] += 1

    event.listen(Engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", fail)


def score_in_process(capsys, caplog, db_path: Path, checkpoint: Path, corpus: Path) -> tuple[int, dict, list[str]]:
    """cxr-score in this process; its exit code, JSON summary and ERROR lines (each checked to be one line)."""
    caplog.clear()
    code = score_cli.main(["--db", f"sqlite:///{db_path}", "--model", str(checkpoint), "--batch-size", "8",
                           "--workers", "0", "--json", str(corpus)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert all("\n" not in line for line in errors), errors
    return code, json.loads(out.splitlines()[-1]), errors


def test_a_full_disk_injected_at_the_third_batch(tmp_path, tiny_checkpoint, corpus_factory, capsys, caplog):
    """SQLITE_FULL from the third batch's INSERT: exit 2 and one line, the two committed batches kept whole and
    nothing of the third (one transaction per batch), and the next run finishes the rest, nothing twice."""
    corpus = corpus_factory(24)
    db_path = tmp_path / "cxr.db"
    full = sqlite3.OperationalError("database or disk is full")
    with failing_statements(full, ("INSERT INTO PREDICTIONS",), after=2):
        code, summary, errors = score_in_process(capsys, caplog, db_path, tiny_checkpoint, corpus)
    assert code == 2 and summary["exit_code"] == 2
    assert len(errors) == 1 and "is full" in errors[0], errors
    batches_whole(db_path)
    assert sqlite_value(db_path, "SELECT count(*) FROM predictions") == 16  # batches 1 and 2 of 8
    code, summary, errors = score_in_process(capsys, caplog, db_path, tiny_checkpoint, corpus)  # space freed
    assert (code, summary["scored"], summary["skipped"], errors) == (0, 8, 16, [])
    assert sqlite_value(db_path, "SELECT count(*) FROM predictions") == 24
    batches_whole(db_path)


def test_a_read_only_database_injected(tmp_path, tiny_checkpoint, corpus_factory, capsys, caplog):
    """SQLITE_READONLY on every write (root can write to a chmod-ed file, so it is injected): exit 2, one line
    saying read-only, and the database as the last good run left it."""
    corpus = corpus_factory(16)
    db_path = tmp_path / "cxr.db"
    assert score_in_process(capsys, caplog, db_path, tiny_checkpoint, corpus)[0] == 0
    tonight = corpus_factory(24, name="tonight")  # 8 new images beyond the 16 already scored
    read_only = sqlite3.OperationalError("attempt to write a readonly database")
    with failing_statements(read_only, ("INSERT", "UPDATE", "DELETE")):
        code, summary, errors = score_in_process(capsys, caplog, db_path, tiny_checkpoint, tonight)
    assert code == 2 and summary["exit_code"] == 2
    assert len(errors) == 1 and "read-only" in errors[0], errors
    batches_whole(db_path)
    assert sqlite_value(db_path, "SELECT count(*) FROM predictions") == 16
    assert sqlite_value(db_path, "SELECT group_concat(status) FROM scoring_runs") == "finished"


class FillingDisk:
    """A file on a disk with ``room`` bytes left: the write that crosses it stores what fits and fails with
    ENOSPC, as write(2) does."""

    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        if len(data) > self._room:
            self._handle.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.mark.parametrize("target", ["last.pt", "model.pt"])
def test_a_full_disk_under_training_output_injected(tmp_path, cxr_dev, sqlite_url, monkeypatch, capsys, caplog,
                                                    target):
    """ENOSPC half-way through writing the training state after epoch 2 (``last.pt``) or the final checkpoint
    (``model.pt``): exit 2 and one line, the atomic writer leaves the previous state whole and no partial file,
    and ``--resume`` (once there is room) finishes the run with one history row per epoch."""
    data = tmp_path / "data"
    for label in ("covid", "normal", "pneumonia"):
        (data / label).mkdir(parents=True)
        for png in sorted((cxr_dev / label).glob("*.png"))[:8]:
            (data / label / png.name).symlink_to(png)
    out = tmp_path / "run"
    arguments = ["train", "--data", str(data), "--out", str(out), "--img-size", "32", "--epochs", "2",
                 "--batch-size", "8", "--workers", "0", "--seed", "3", "--db", sqlite_url]
    real = scoring.model.atomic_write
    writes: Counter[str] = Counter()
    failing_write = 2 if target == "last.pt" else 1

    @contextlib.contextmanager
    def disk_fills(path: Path):
        with real(path) as handle:
            writes[path.name] += 1
            yield FillingDisk(handle, 4096) if (path.name, writes[path.name]) == (target, failing_write) else handle

    for module in (scoring.model, model_training.train):
        monkeypatch.setattr(module, "atomic_write", disk_fills)
    assert train_cli.main(arguments) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "No space left on device" in errors[0], errors
    assert target != "last.pt" or str(out / "last.pt") in errors[0]
    assert "Traceback" not in capsys.readouterr().err
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    assert not (out / "model.pt").exists()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == (1 if target == "last.pt" else 2)  # the last state that was fully written

    for module in (scoring.model, model_training.train):
        monkeypatch.setattr(module, "atomic_write", real)
    caplog.clear()
    assert train_cli.main([*arguments, "--resume"]) == 0
    assert [row.split(",")[0] for row in (out / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert not (out / "last.pt").exists()
