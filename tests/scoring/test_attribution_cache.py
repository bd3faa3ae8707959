"""The attribution cache and the nightly precompute, end to end through cxr-score and cxr-db."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select, update

from db import cli as db_cli
from db.config import cxr_home
from db.engine import create_database_engine, read_session, write_session
from db.models import AttributionCacheEntry, Image, ModelVersion, Prediction
from scoring import cli as scoring_cli
from scoring.attribution import cache, is_cached, load_or_compute
from scoring.attribution.cache import AttributionUnavailable
from scoring.attribution.engine import CropMap, Placement


@pytest.fixture
def scored(tmp_path, cxr_dev, tiny_checkpoint, db_url, capsys):
    """Six real films scored by the tiny model with Grad-CAM precomputed; (engine, model version, summary)."""
    images = tmp_path / "incoming"
    images.mkdir()
    for path in sorted(cxr_dev.glob("*/*.png"))[::60][:6]:
        shutil.copy2(path, images / path.name)
    code = scoring_cli.main(["--db", db_url, "--model", str(tiny_checkpoint), "--settle-seconds", "0",
                             "--workers", "0", "--attributions", "gradcam", "--attributions-top", "2", "--json",
                             str(images)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return create_database_engine(db_url), summary["model_version_id"], summary


def _entries(engine) -> list[AttributionCacheEntry]:
    with read_session(engine) as session:
        return list(session.scalars(select(AttributionCacheEntry).order_by(AttributionCacheEntry.id)))


def _rerun(db_url: str, checkpoint, tmp_path, capsys) -> dict:
    """The next night's run over the same folder (nothing new to score), with Grad-CAM maps asked for."""
    code = scoring_cli.main(["--db", db_url, "--model", str(checkpoint), "--settle-seconds", "0", "--workers", "0",
                             "--attributions", "gradcam", "--attributions-top", "2", "--json",
                             str(tmp_path / "incoming")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == summary["exit_code"] == 0
    return summary


def _rewrite(entry: AttributionCacheEntry, change) -> None:
    """The map's file written again by the cache's own writer, well-formed, with ``change(crop, placement)``."""
    path = cxr_home() / entry.storage_path
    crop, placement = cache.read_map_file(path, entry.params_key)
    crop, placement = change(crop, placement)
    cache.write_map_file(path, CropMap(crop, placement, entry.method, entry.target_class, entry.params, 0.0),
                         entry.params_key)


# Damage to a stored map, each made the way it happens: a file deleted or cut short (a full disk, a restore, a
# hand), and well-formed files whose content is not the map their record describes.
DAMAGE = {
    "missing": lambda entry: (cxr_home() / entry.storage_path).unlink(),
    "truncated": lambda entry: (cxr_home() / entry.storage_path).write_bytes(
        (cxr_home() / entry.storage_path).read_bytes()[:40]),
    "values_times_1e6": lambda entry: _rewrite(entry, lambda crop, p: (crop * np.float32(1e6), p)),
    # consistent with the model's input size, but twice the image's sides: resized to 4 times its pixels
    "placement_twice_the_image": lambda entry: _rewrite(
        entry, lambda crop, p: (crop, Placement.of(2 * p.rows, 2 * p.cols, entry.params["input_size"]))),
}


def _image_size(engine, image_id: int) -> tuple[int, int]:
    with read_session(engine) as session:
        return tuple(session.execute(select(Image.rows, Image.cols).where(Image.id == image_id)).one())


def _with_values(engine) -> list[AttributionCacheEntry]:
    """Entries whose map is not all zeros (a zero map times 1e6 is the same map)."""
    entries = [e for e in _entries(engine) if e.value_max > 0]
    assert len(entries) >= len(DAMAGE)
    return entries


def test_the_nightly_run_precomputes_maps_for_the_cases_opened_first(scored):
    engine, version, summary = scored
    with read_session(engine) as session:
        predictions = list(session.scalars(select(Prediction)))
    assert summary["scored"] == len(predictions) == 6
    by_entropy = sorted(predictions, key=lambda p: -p.entropy)
    expected = {p.image_id for p in by_entropy[:2]} | {p.image_id for p in predictions if p.predicted_class != "normal"}
    entries = _entries(engine)
    assert {e.image_id for e in entries} == expected
    assert all(e.method == "gradcam" and e.model_version_id == version for e in entries)
    target = {p.image_id: p.predicted_class for p in predictions}
    assert all(e.target_class == target[e.image_id] for e in entries)
    assert all((cxr_home() / e.storage_path).is_file() for e in entries)
    counts = summary["attributions"]
    assert counts["candidates"] == len(expected) and counts["gradcam"]["computed"] == len(expected)
    assert counts["gradcam"]["failed"] == 0 and summary["phase_seconds"]["attributions"] >= 0


def test_a_second_request_is_a_file_read(scored, monkeypatch):
    engine, version, _ = scored
    entry = _entries(engine)[0]
    first = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    assert is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
    monkeypatch.setattr(cache, "compute_crops", lambda *a, **k: pytest.fail("computed a cached map"))
    again = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    assert np.array_equal(first.values, again.values) and again.caption.endswith(f"model v{version}")
    assert again.outside_share == pytest.approx(entry.outside_share)
    assert (again.value_min, again.value_max) == pytest.approx((entry.value_min, entry.value_max))
    assert not is_cached(engine, entry.image_id, version, "integrated_gradients", entry.target_class)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "values_times_1e6",
                                    "placement_twice_the_image"])
def test_a_missing_or_corrupt_file_is_recomputed_never_shown_broken(scored, damage):
    engine, version, _ = scored
    entry = _with_values(engine)[0]
    good = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    path = cxr_home() / entry.storage_path
    if damage == "corrupt":
        path.write_bytes(b"not a map")
    else:
        DAMAGE[damage](entry)
    assert not is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
    again = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    # the nightly map was computed in a batch, this one alone: equal up to float32 summation order
    np.testing.assert_allclose(good.values, again.values, rtol=1e-4, atol=1e-7)
    assert is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
    assert len(_entries(engine)) == len({(e.image_id, e.method) for e in _entries(engine)})


def test_the_nightly_run_recomputes_stored_maps_that_are_not_sound(scored, db_url, tiny_checkpoint, tmp_path,
                                                                    capsys, caplog):
    """A record alone is not a map: each damage above, on a different map, is found by the next run, which
    computes those maps again (the run used to count them as cached and leave them broken)."""
    engine, version, _ = scored
    damaged = dict(zip(DAMAGE, _with_values(engine), strict=False))
    for name, entry in damaged.items():
        DAMAGE[name](entry)
    summary = _rerun(db_url, tiny_checkpoint, tmp_path, capsys)
    for entry in damaged.values():
        assert is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
        crop, placement = cache.read_map_file(cxr_home() / entry.storage_path, entry.params_key)
        assert 0 <= crop.min() and crop.max() <= 2 * entry.value_max  # about what the record says again
        assert (placement.rows, placement.cols) == _image_size(engine, entry.image_id)
    counts = summary["attributions"]["gradcam"]
    assert (counts["broken"], counts["computed"], counts["failed"]) == (len(DAMAGE), len(DAMAGE), 0)
    assert counts["cached"] == summary["attributions"]["candidates"] - len(DAMAGE)
    assert f"{len(DAMAGE)} stored maps are not sound" in caplog.text
    for reason in ("missing_or_corrupt 2", "values_unlike_record 1", "placement_outside_image 1"):
        assert reason in caplog.text
    assert str(cxr_home()) not in caplog.text
    again = _rerun(db_url, tiny_checkpoint, tmp_path, capsys)["attributions"]["gradcam"]
    assert (again["broken"], again["computed"], again["cached"]) == (0, 0, summary["attributions"]["candidates"])


LOAD_MAP = """
import sys
from sqlalchemy import create_engine
from scoring.attribution import load_or_compute
engine = create_engine(sys.argv[1])
made = load_or_compute(engine, int(sys.argv[2]), int(sys.argv[3]), "gradcam", sys.argv[4])
print(made.values.shape)
"""


def test_a_placement_of_40000_by_40000_is_recomputed_not_allocated(scored, db_url):
    """The issue's file: a well-formed map whose placement says 40000 x 40000, so that loading it resized it to 6.4
    GB. Loaded in a process that may not allocate 2 GiB: the map is computed again, in the image's own size."""
    engine, version, _ = scored
    entry = _entries(engine)[0]
    _rewrite(entry, lambda crop, p: (crop, Placement(40000, 40000, p.top, p.left, p.new_rows, p.new_cols)))

    def two_gib():
        resource.setrlimit(resource.RLIMIT_DATA, (2 * 2**30, 2 * 2**30))

    loaded = subprocess.run([sys.executable, "-c", LOAD_MAP, db_url, str(entry.image_id), str(version),
                             entry.target_class], capture_output=True, text=True, timeout=240, preexec_fn=two_gib)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == str(_image_size(engine, entry.image_id))
    assert is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)  # the map made again


@pytest.mark.parametrize("placement, image, fits", [
    (Placement.of(1024, 800, 32), (1024, 800), True),
    (Placement.of(800, 1024, 32), (1024, 800), True),  # an EXIF orientation turned the pixels
    (Placement.of(512, 400, 32), (1024, 800), True),  # a smaller read of the same image
    (Placement.of(2048, 1600, 32), (1024, 800), False),
    (Placement(40000, 40000, 0, 0, 32, 32), (1024, 800), False),
    (Placement(1024, 800, 0, 0, 32, 32), (1024, 800), False),  # not what the input size gives for 1024 x 800
    (Placement(0, 800, 0, 0, 1, 25), (1024, 800), False),
    (Placement.of(4000, 4000, 32), (None, None), True),  # size unknown: the reader's limit
    (Placement.of(40000, 40000, 32), (None, None), False),
])
def test_a_placement_must_fit_the_image(placement, image, fits):
    assert cache.placement_fits(placement, image, 32) is fits


KILLED_WRITER = """
import sys
from pathlib import Path
import numpy as np
from scoring.attribution.cache import write_map_file
from scoring.attribution.engine import CropMap, Placement
crop = np.random.default_rng(0).random((3000, 3000), dtype=np.float32)  # seconds to compress: killed midway
write_map_file(Path(sys.argv[1]), CropMap(crop, Placement(3000, 3000, 0, 0, 3000, 3000), "gradcam", "covid", {}, 0.0),
               "key")
"""


def _kill_a_map_write(target: Path) -> Path:
    """Starts the cache's own writer on a large map over ``target`` and kills it (SIGKILL) once its temporary file
    holds some of the map; returns the file the killed writer left."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not (left := [f for f in target.parent.glob(f".{target.name}.*.tmp") if f.stat().st_size > 0]):
            assert writer.poll() is None, writer.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.002)
    finally:
        writer.kill()
        writer.wait()
        writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL and len(left) == 1 and left[0].exists()
    return left[0]


def _age(*paths: Path, hours: float = 2) -> None:
    then = time.time() - hours * 3600
    for path in paths:
        os.utime(path, (then, then))


def test_a_map_write_killed_midway_leaves_a_temporary_file_the_next_run_removes(scored, db_url, tiny_checkpoint,
                                                                              tmp_path, capsys):
    engine, _, _ = scored
    entry = _entries(engine)[0]
    target = cxr_home() / entry.storage_path
    before = target.read_bytes()
    left = _kill_a_map_write(target)
    assert target.read_bytes() == before  # the old map stays whole
    _rerun(db_url, tiny_checkpoint, tmp_path, capsys)
    assert left.exists()  # a young temporary file may be another process's write in progress: left for an hour
    _age(left)  # the next night
    summary = _rerun(db_url, tiny_checkpoint, tmp_path, capsys)
    assert not left.exists() and target.read_bytes() == before
    assert summary["attributions"]["stray_files_removed"] == {"unfinished": 1, "orphaned": 0}


def _unfinished_write(beside: Path) -> Path:
    """A temporary file named as scoring.model.atomic_write names a map's (mkstemp beside it), half written."""
    fd, name = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=".tmp")
    os.write(fd, beside.read_bytes()[:100])
    os.close(fd)
    return Path(name)


@pytest.mark.parametrize("where", ["run", "prune"])
def test_stray_files_are_removed_by_the_run_and_by_prune_and_nothing_else(scored, db_url, tiny_checkpoint, tmp_path,
                                                                        capsys, caplog, where):
    engine, version, _ = scored
    kept, dropped = _entries(engine)[:2]
    kept_file, dropped_file = cxr_home() / kept.storage_path, cxr_home() / dropped.storage_path
    with write_session(engine) as session:  # as migration 0003 dropped every record and left the files
        session.execute(delete(AttributionCacheEntry).where(AttributionCacheEntry.id == dropped.id))
    before_0003 = cxr_home() / "attributions" / "v1" / "000" / "1000-gradcam.npz"  # a name no record has
    before_0003.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(kept_file, before_0003)
    unfinished, young_unfinished = _unfinished_write(kept_file), _unfinished_write(kept_file)
    young_orphan = kept_file.parent / "2000-gradcam-young.npz"  # its record may be committing right now
    shutil.copy(kept_file, young_orphan)
    not_ours = cxr_home() / "attributions" / "NOTES.txt"
    not_ours.write_text("an admin's note")
    _age(kept_file, dropped_file, before_0003, unfinished, not_ours)
    if where == "run":
        stray = _rerun(db_url, tiny_checkpoint, tmp_path, capsys)["attributions"].get("stray_files_removed")
        # its image is still a case opened first: the run made its map again, with a record this time
        assert is_cached(engine, dropped.image_id, version, "gradcam", dropped.target_class)
    else:
        assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30", "--dry-run"]) == 0
        assert "would delete 1 unfinished attribution map writes and 2 map files no record points to" in caplog.text
        assert unfinished.exists() and before_0003.exists() and dropped_file.exists()
        assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30"]) == 0
        assert "deleted 1 unfinished attribution map writes and 2 map files no record points to" in caplog.text
        assert not dropped_file.exists()
    assert not unfinished.exists() and not before_0003.exists()
    assert young_unfinished.exists() and young_orphan.exists() and not_ours.exists() and kept_file.exists()
    assert where == "prune" or stray == {"unfinished": 1, "orphaned": 2}
    assert str(cxr_home()) not in caplog.text


def test_concurrent_requests_compute_one_map_once(scored):
    engine, version, _ = scored
    with read_session(engine) as session:
        image_id = session.scalars(select(Prediction.image_id)).first()
    results: list = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        results.append(load_or_compute(engine, image_id, version, "integrated_gradients", "covid", steps=6))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(np.array_equal(results[0].values, r.values) for r in results)
    rows = [e for e in _entries(engine) if e.method == "integrated_gradients"]
    assert len(rows) == 1 and rows[0].params == {"steps": 6, "baseline": 0.0, "input_size": 32}


def test_an_image_whose_files_are_gone_is_reported_not_drawn(scored, tmp_path):
    engine, version, _ = scored
    with read_session(engine) as session:
        image_id = session.scalars(select(Prediction.image_id)).first()
    shutil.rmtree(tmp_path / "incoming")
    with pytest.raises(AttributionUnavailable, match="no copy of this image is left"):
        load_or_compute(engine, image_id, version, "occlusion", "covid")


def test_prune_deletes_old_maps_of_inactive_versions_only(scored, db_url):
    engine, version, _ = scored
    entries = _entries(engine)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    with write_session(engine) as session:
        session.execute(update(AttributionCacheEntry).where(AttributionCacheEntry.id == entries[0].id)
                        .values(created_at=old))
    assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30"]) == 0
    assert [e.id for e in _entries(engine)] == [e.id for e in entries[1:]]  # only the old one (version inactive)
    assert not (cxr_home() / entries[0].storage_path).exists()
    with write_session(engine) as session:
        session.execute(update(AttributionCacheEntry).values(created_at=old))
        session.execute(update(ModelVersion).where(ModelVersion.id == version).values(is_active=True))
    assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30"]) == 0
    assert len(_entries(engine)) == len(entries) - 1  # the active version's maps stay, however old
    with write_session(engine) as session:
        session.execute(update(ModelVersion).values(is_active=False))
    assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30", "--dry-run"]) == 0
    assert len(_entries(engine)) == len(entries) - 1
    assert db_cli.main(["--db", db_url, "prune-attributions", "--older-than", "30"]) == 0
    assert _entries(engine) == []
    assert not any((cxr_home() / e.storage_path).exists() for e in entries)


def test_a_kill_during_the_precompute_loses_no_prediction(tmp_path, cxr_dev, tiny_checkpoint, sqlite_url,
                                                         monkeypatch):
    from scoring.attribution import precompute as precompute_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(precompute_module, "precompute", killed)
    images = tmp_path / "incoming"
    images.mkdir()
    for path in sorted(cxr_dev.glob("*/*.png"))[:4]:
        shutil.copy2(path, images / path.name)
    code = scoring_cli.main(["--db", sqlite_url, "--model", str(tiny_checkpoint), "--settle-seconds", "0",
                             "--workers", "0", "--attributions", "gradcam", str(images)])
    assert code != 0
    with read_session(create_database_engine(sqlite_url)) as session:
        assert len(list(session.scalars(select(Prediction)))) == 4


def test_unknown_methods_are_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit):
        scoring_cli.main(["--attributions", "gradcam,lime", "x"])
    assert "lime" in capsys.readouterr().err
