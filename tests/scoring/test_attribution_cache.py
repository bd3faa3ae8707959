"""The attribution cache and the nightly precompute, end to end through cxr-score and cxr-db."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading

import numpy as np
import pytest
from sqlalchemy import select, update

from db import cli as db_cli
from db.config import cxr_home
from db.engine import create_database_engine, read_session, write_session
from db.models import AttributionCacheEntry, ModelVersion, Prediction
from scoring import cli as scoring_cli
from scoring.attribution import cache, is_cached, load_or_compute
from scoring.attribution.cache import AttributionUnavailable


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


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_a_missing_or_corrupt_file_is_recomputed_never_shown_broken(scored, damage):
    engine, version, _ = scored
    entry = _entries(engine)[0]
    good = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    path = cxr_home() / entry.storage_path
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(b"not a map")
    else:
        path.write_bytes(path.read_bytes()[:40])
    assert not is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
    again = load_or_compute(engine, entry.image_id, version, "gradcam", entry.target_class)
    # the nightly map was computed in a batch, this one alone: equal up to float32 summation order
    np.testing.assert_allclose(good.values, again.values, rtol=1e-4, atol=1e-7)
    assert is_cached(engine, entry.image_id, version, "gradcam", entry.target_class)
    assert len(_entries(engine)) == len({(e.image_id, e.method) for e in _entries(engine)})


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
    with pytest.raises(AttributionUnavailable, match="still holds its content"):
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
