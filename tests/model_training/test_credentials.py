"""A database password never reaches a file: not the training outputs (config.json, history, the model card and
its pictures, the checkpoint, last.pt of a killed run), not the scorer's run record, not the log."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sqlalchemy import make_url, select

from db.engine import create_database_engine, read_session
from db.models import ModelVersion, ScoringRun
from model_training import train
from scoring import cli as scoring_cli
from tests.model_training.conftest import kill_at_epoch, tiny_config

SECRET = "S3cret-Passw0rd-nobody-may-see"


@pytest.fixture
def url_with_password(db_url) -> str:
    """A PostgreSQL database whose URL carries a password. The test cluster trusts local connections, so it
    accepts any password; a server that checks them (CXR_TEST_POSTGRES_URL) skips this test."""
    url = make_url(db_url).set(password=SECRET).render_as_string(hide_password=False)
    engine = create_database_engine(url)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # any refusal means the server checks passwords
        pytest.skip(f"the test server refuses a made-up password: {type(exc).__name__}")
    finally:
        engine.dispose()
    return url


def assert_no_secret_in_files(folder) -> int:
    files = [path for path in folder.rglob("*") if path.is_file()]
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
        if path.suffix == ".pt":  # and not in any string a checkpoint carries, wherever the zip puts it
            payload = torch.load(path, map_location="cpu", weights_only=True)
            assert SECRET not in json.dumps({k: v for k, v in payload.items() if k in ("training", "config")},
                                            default=str), path
    return len(files)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_training_and_scoring_never_write_the_database_password(tmp_path, small_set, url_with_password,
                                                               monkeypatch, caplog):
    out = tmp_path / "run"
    real_epoch = kill_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_config(small_set, out, url_with_password))
    assert (out / "last.pt").is_file() and assert_no_secret_in_files(out) >= 3  # config, history, last.pt
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    result = train.train(tiny_config(small_set, out, url_with_password), resume=True)
    assert assert_no_secret_in_files(out) >= 8  # checkpoint, config, history, card (md, json), pictures

    recorded = json.loads((out / "config.json").read_text())["db"]
    assert make_url(recorded).database == make_url(url_with_password).database  # still says which database
    assert "***" in recorded

    images = tmp_path / "images"
    images.mkdir()
    for row in small_set.read_text().splitlines()[1:4]:
        shutil.copy2(row.split(",")[0], images)
    log_file = tmp_path / "score.log"
    assert scoring_cli.main(["--db", url_with_password, "--model", str(result.checkpoint), "--settle-seconds", "0",
                             "--workers", "0", "--log-file", str(log_file), str(images)]) == 0
    assert_no_secret_in_files(tmp_path)
    engine = create_database_engine(url_with_password)
    with read_session(engine) as session:
        runs = [run.arguments for run in session.scalars(select(ScoringRun))]
        versions = [(v.path, v.name, v.metrics) for v in session.scalars(select(ModelVersion))]
    engine.dispose()
    assert len(runs) == 1 and SECRET not in json.dumps(runs) and SECRET not in json.dumps(versions)
    assert SECRET not in caplog.text
