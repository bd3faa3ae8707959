"""Faults the nightly job meets in the wild: each gives one clear line, the documented exit code, and no
half-written batch (every run's counters equal the rows it committed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from db import migrate
from db.engine import create_database_engine

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


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A size-limited file system at ``folder`` (needs mount rights: root with CAP_SYS_ADMIN, as in CI)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


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


def test_a_missing_or_corrupt_checkpoint(tmp_path, tiny_checkpoint, corpus_factory, sqlite_url):
    corpus = corpus_factory(5)
    for name, checkpoint in corrupt_checkpoints(tiny_checkpoint, tmp_path / "models").items():
        code, summary, errors = score(sqlite_url, checkpoint, corpus)
        assert code == 2, name
        assert len(errors) == 1 and str(checkpoint) in errors[0], (name, errors)
        assert summary["run_id"] is None, name  # refused before a run began


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
