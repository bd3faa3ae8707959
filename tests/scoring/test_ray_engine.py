"""``cxr-score --engine ray`` on a local Ray started here (``ray.init(num_cpus=2)``), on SQLite and PostgreSQL: the
same results as the local engine on the same files (identical probabilities on the CPU, challengers included), a
Ray worker killed mid-run costs nothing and duplicates nothing, and the run lock still refuses a second run."""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from benchmarks.bench_score import replicate
from db import config, model_versions
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, Prediction, ScoringFailure
from scoring import cli, ray_engine
from scoring.decoding import input_preprocessings
from scoring.imaging import TEST_DELAY_ENV
from scoring.lock import RunLock
from scoring.model import Checkpoint, Preprocessing, build_model, checkpoint_sha256, load_checkpoint, save_checkpoint
from tests.conftest import active_model_database, missing_tool

pytestmark = pytest.mark.slow

BATCH = "4"
CLUSTER_KEY = "5e" * 32  # every node's and the driver's (CXR_HOME differs from test to test)


@pytest.fixture(autouse=True)
def cluster_key(monkeypatch):
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", CLUSTER_KEY)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray of two CPUs whose reads each take 50 ms longer (a window to kill a decoding worker in); its
    nodes hold the tests' pseudonym key, also for a driver of its own (a job without this runtime_env)."""
    try:
        import ray
    except ImportError:
        missing_tool('ray (pip install -e ".[ray]"; requirements-dev.txt installs it)')
    with pytest.MonkeyPatch.context() as patch:  # what the raylet, and so every worker it starts, inherits
        patch.setenv("CXR_HOME", str(tmp_path_factory.mktemp("ray-node-home")))
        patch.setenv("CXR_PSEUDONYM_KEY", CLUSTER_KEY)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {TEST_DELAY_ENV: "0.05"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inbox(tmp_path_factory, cxr_dev, pydicom_data) -> Path:
    """14 PNGs of cxr-dev, RG1's CR chest film, RG3's extremity (out of scope) and a PNG cut short (a failure)."""
    folder = tmp_path_factory.mktemp("ray-inbox")
    for png in sorted(cxr_dev.glob("*/*.png"))[:14]:
        shutil.copy(png, folder / f"{png.parent.name}-{png.name}")
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        shutil.copy(pydicom_data(name), folder / name)
    first = sorted(folder.glob("*.png"))[0]
    (folder / "cut.png").write_bytes(first.read_bytes()[:2000])
    return folder


@pytest.fixture(scope="module")
def challenger_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("challenger") / "challenger.pt"
    return save_checkpoint(path, Checkpoint("resnet18", ["covid", "normal", "pneumonia"], Preprocessing(32),
                                            build_model("resnet18", 3).state_dict(), training={"name": "challenger"}))


def prepared(url: str, active: Path, challenger: Path) -> str:
    """A database with ``active`` promoted and ``challenger`` scored in its shadow."""
    active_model_database(url, active)
    engine = create_database_engine(url)
    try:
        with write_session(engine) as session:
            version = model_versions.register_checkpoint(session, challenger, load_checkpoint(challenger),
                                                         checkpoint_sha256(challenger))
            model_versions.set_challenger(session, str(version.id), True)
    finally:
        engine.dispose()
    return url


def score(url: str, folder: Path, capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["--db", url, "--json", "--settle-seconds", "0", "--batch-size", BATCH, *args, str(folder)])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def stored(url: str) -> dict[str, object]:
    """What a run left, keyed by content and model checksum, so that two databases compare."""
    engine = create_database_engine(url)
    try:
        with read_session(engine) as session:
            predictions = sorted(session.execute(
                select(Image.sha256, Prediction.model_version_id, Prediction.probabilities, Prediction.predicted_class)
                .join(Prediction, Prediction.image_id == Image.id)).all())
            versions = {v.id: v.sha256 for v in model_versions.list_versions(session)}
            return {
                "predictions": [(sha, versions[v], probs, cls) for sha, v, probs, cls in predictions],
                "out_of_scope": sorted(session.scalars(select(Image.sha256).where(Image.in_scope.is_(False)))),
                "failures": sorted((Path(p).name, reason) for p, reason in session.execute(
                    select(ScoringFailure.path, ScoringFailure.reason))),
                "duplicates": session.scalar(select(func.count()).select_from(
                    select(Prediction.image_id, Prediction.model_version_id).group_by(
                        Prediction.image_id, Prediction.model_version_id).having(func.count() > 1).subquery())),
            }
    finally:
        engine.dispose()


def summary_counts(summary: dict) -> dict:
    keys = ("scanned", "scored", "skipped", "out_of_scope", "failed", "exit_code")
    shadow = [(c["scored"], c["failed"]) for c in summary["challengers"]]
    return {key: summary[key] for key in keys} | {"challengers": shadow}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory, inbox, tiny_checkpoint, challenger_checkpoint):
    """The local engine's run on the inbox: its summary and what it stored."""
    url = f"sqlite:///{tmp_path_factory.mktemp('local') / 'cxr.db'}"
    prepared(url, tiny_checkpoint, challenger_checkpoint)
    code = cli.main(["--db", url, "--settle-seconds", "0", "--batch-size", BATCH, "--json", str(inbox)])
    return code, url


def test_the_ray_engine_stores_what_the_local_engine_does(local_ray, local_results, db_url, inbox, tiny_checkpoint,
                                                          challenger_checkpoint, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))  # where the attribution maps go
    local_code, local_url = local_results
    capsys.readouterr()
    prepared(db_url, tiny_checkpoint, challenger_checkpoint)
    code, summary = score(db_url, inbox, capsys, "--engine", "ray", "--attributions", "gradcam",
                          "--attributions-top", "3")
    assert code == local_code == 1  # the cut PNG
    assert summary["attributions"]["gradcam"]["computed"] >= 3  # maps after a Ray run, by the driver, as locally
    assert summary["scored"] == 15 and summary["out_of_scope"] == 1 and summary["failed"] == 1
    assert [c["scored"] for c in summary["challengers"]] == [15]
    ray_run, local_run = stored(db_url), stored(local_url)
    assert ray_run == local_run  # the same probabilities to the last stored digit, for both versions
    assert len(ray_run["predictions"]) == 30 and ray_run["failures"] == [("cut.png", "truncated")]

    code, again = score(db_url, inbox, capsys, "--engine", "ray")
    assert (code, again["scored"], again["skipped"], again["out_of_scope"]) == (0, 0, 15, 1)  # nothing sent to Ray


def ray_processes(title: str) -> list[int]:
    """PIDs of this machine's Ray worker processes whose title starts with ``ray::<title>``."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            text = Path(cmdline).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text.startswith(f"ray::{title}"):
            found.append(int(cmdline.split("/")[2]))
    return found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the cluster's database
def test_a_killed_ray_worker_loses_nothing_and_duplicates_nothing(local_ray, local_results, db_url, inbox,
                                                                   tiny_checkpoint, challenger_checkpoint, capsys):
    prepared(db_url, tiny_checkpoint, challenger_checkpoint)
    killed: list[str] = []
    done = threading.Event()

    def kill_a_decoder_then_the_model_actor() -> None:
        for title in ("MapBatches(decode_batches)", "MapWorker(MapBatches(ModelActor))"):
            while not done.is_set():
                pids = ray_processes(title)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(title)
                    break
                time.sleep(0.01)

    killer = threading.Thread(target=kill_a_decoder_then_the_model_actor)
    killer.start()
    try:
        code, summary = score(db_url, inbox, capsys, "--engine", "ray")
    finally:
        done.set()
        killer.join()
    assert "MapBatches(decode_batches)" in killed, "no decoding worker was seen to kill"
    assert code == 1 and summary["scored"] == 15 and summary["failed"] == 1
    result = stored(db_url)
    assert result == stored(local_results[1])
    assert result["duplicates"] == 0


def predictions_count(url: str) -> int:
    engine = create_database_engine(url)
    try:
        with read_session(engine) as session:
            return session.scalar(select(func.count()).select_from(Prediction))
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_driver_killed_mid_run_resumes_without_loss_or_duplicates(local_ray, db_url, cxr_dev, tiny_checkpoint,
                                                                    tmp_path, capsys):
    """``cxr-score --engine ray`` in a process of its own, joining this test's Ray, SIGKILLed once its first batch is
    committed; the next run scores the rest, each image once."""
    sources = sorted(cxr_dev.glob("*/*.png"))
    replicate(sources, 64, tmp_path / "many")  # unique bytes each: 64 images, 16 batches of 4
    active_model_database(db_url, tiny_checkpoint)
    driver = subprocess.Popen([sys.executable, "-m", "scoring", "--db", db_url, "--settle-seconds", "0",
                               "--batch-size", BATCH, "--engine", "ray", "--ray-address", "auto",
                               str(tmp_path / "many")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (committed := predictions_count(db_url)) == 0 and driver.poll() is None:
        assert time.monotonic() < deadline, "no batch was committed"
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    assert 0 < committed < 64, f"{committed} predictions when the driver was killed: not mid-run"

    code, summary = score(db_url, tmp_path / "many", capsys, "--engine", "ray")
    assert code == 0 and summary["scored"] + summary["skipped"] == 64
    result = stored(db_url)
    assert len(result["predictions"]) == 64 and result["duplicates"] == 0


def test_two_runs_at_once_are_refused(local_ray, sqlite_url, inbox, tiny_checkpoint, capsys):
    active_model_database(sqlite_url, tiny_checkpoint)
    engine = create_database_engine(sqlite_url)
    try:
        with RunLock(engine):
            code = cli.main(["--db", sqlite_url, "--settle-seconds", "0", "--engine", "ray", str(inbox)])
    finally:
        engine.dispose()
    assert code == 75


def test_without_ray_the_ray_engine_cannot_run(sqlite_url, inbox, tiny_checkpoint, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` finds where the extra is not installed
    code = cli.main(["--db", sqlite_url, "--model", str(tiny_checkpoint), "--engine", "ray", str(inbox)])
    assert code == 2
    assert 'pip install -e ".[ray]"' in caplog.text


def test_a_ray_address_needs_the_ray_engine(sqlite_url, inbox, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--db", sqlite_url, "--ray-address", "ray://head:10001", str(inbox)])
    assert stopped.value.code == 2 and "--ray-address applies to --engine ray" in capsys.readouterr().err


def test_a_node_with_another_pseudonym_key_stops_the_run_before_anything_is_stored(local_ray, sqlite_url, inbox,
                                                                                    tiny_checkpoint, monkeypatch,
                                                                                    caplog):
    active_model_database(sqlite_url, tiny_checkpoint)
    # the driver's fingerprint as a node with another key sees it (the nodes compute theirs in their own process)
    monkeypatch.setattr(ray_engine, "pseudonym_key_fingerprint", lambda: "0" * 16)
    code = cli.main(["--db", sqlite_url, "--settle-seconds", "0", "--engine", "ray", str(inbox)])
    assert code == 2
    assert "is not the driver's (0000000000000000)" in caplog.text and "CXR_PSEUDONYM_KEY" in caplog.text
    assert config.pseudonym_key_fingerprint() in caplog.text  # the node's own, named
    engine = create_database_engine(sqlite_url)
    try:
        with read_session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == 0
    finally:
        engine.dispose()


def test_a_decode_task_on_a_node_with_another_key_decodes_nothing(inbox, tiny_checkpoint):
    rows = {"batch": [pickle.dumps((0, [str(inbox / "RG1_UNCR.dcm")], [[]]))]}
    preprocessings = input_preprocessings(load_checkpoint(tiny_checkpoint), [])
    with pytest.raises(ray_engine.PseudonymKeyMismatch, match="is not the driver's"):
        ray_engine.decode_batches(rows, preprocessings, 30.0, "0" * 16, None)
    decoded = ray_engine.decode_batches(rows, preprocessings, 30.0, config.pseudonym_key_fingerprint(), None)
    assert decoded["decoded"].size == 1
