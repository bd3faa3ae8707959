"""The attribution cache's records: upsert by key, the outside-the-lungs filter, precompute candidates, pruning."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db import attributions, migrate
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, ModelVersion, Prediction
from db.worklist import WorklistFilter, worklist_page


def _setup(db_url):
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        version = ModelVersion(sha256="a" * 64, path="/m.pt", architecture="resnet18", classes=["covid", "normal"],
                               input_size=224, preprocessing_hash="p" * 64)
        session.add(version)
        images = [Image(sha256=f"{i:064d}", path=f"/x/{i}.png", size_bytes=1, mtime=0.0, format="png")
                  for i in range(5)]
        session.add_all(images)
        session.flush()
        for image, (cls, entropy) in zip(images, [("normal", 0.9), ("normal", 0.1), ("covid", 0.2),
                                                   ("normal", 0.5), ("normal", 0.05)], strict=True):
            session.add(Prediction(image_id=image.id, model_version_id=version.id, probabilities={},
                                   predicted_class=cls, confidence=0.5, entropy=entropy))
        return engine, version.id, [image.id for image in images]


def _record(session, image_id, version_id, share, key="k" * 64, method="gradcam"):
    attributions.record_map(session, image_id=image_id, model_version_id=version_id, method=method,
                            target_class="covid", params_key=key, params={"layer": "layer4"},
                            storage_path=f"attributions/{image_id}.npz", value_min=0.0, value_max=1.0,
                            outside_share=share, seconds=0.1)


def test_a_map_is_recorded_once_per_key_and_replaced_when_recomputed(db_url):
    engine, version, images = _setup(db_url)
    with write_session(engine) as session:
        _record(session, images[0], version, 0.2)
        _record(session, images[0], version, 0.7)  # the same key: recomputed
        _record(session, images[0], version, 0.1, key="q" * 64)  # other parameters: another map
    with read_session(engine) as session:
        found = attributions.find_map(session, images[0], version, "gradcam", "covid", "k" * 64)
        assert found is not None and found.outside_share == 0.7 and found.params == {"layer": "layer4"}
        assert attributions.find_map(session, images[0], version, "gradcam", "normal", "k" * 64) is None
        assert attributions.cached_image_ids(session, version, "gradcam", "q" * 64) == {images[0]}


def test_the_outside_the_lungs_filter_is_an_exists_on_the_threshold(db_url):
    engine, version, images = _setup(db_url)
    with write_session(engine) as session:
        _record(session, images[0], version, attributions.OUTSIDE_LUNGS_THRESHOLD)
        _record(session, images[1], version, attributions.OUTSIDE_LUNGS_THRESHOLD - 0.01)
        _record(session, images[2], version, None)
    with read_session(engine) as session:
        flagged = set(session.scalars(select(Prediction.image_id).where(
            attributions.looks_outside_lungs(Prediction.image_id, Prediction.model_version_id))))
        assert flagged == {images[0]}
        everything = set(session.scalars(select(Prediction.image_id).where(
            attributions.looks_outside_lungs(Prediction.image_id, Prediction.model_version_id, threshold=0.0))))
        assert everything == {images[0], images[1]}


def test_the_worklist_shows_only_cases_whose_map_looks_outside_the_lungs(db_url):
    engine, version, images = _setup(db_url)
    with write_session(engine) as session:
        _record(session, images[1], version, 0.8)
        _record(session, images[3], version, 0.2)
        _record(session, images[3], version, 0.6, key="q" * 64, method="occlusion")  # any method's map counts
    with read_session(engine) as session:
        everything = worklist_page(session, WorklistFilter(version))
        flagged = worklist_page(session, WorklistFilter(version, outside_lungs=True))
        assert everything.total == len(images)
        assert flagged.total == 2 and {row.image_id for row in flagged.rows} == {images[1], images[3]}
        with_classes = worklist_page(session, WorklistFilter(version, classes=("covid",), outside_lungs=True))
        assert with_classes.total == 0  # images[1] and [3] are predicted normal


def test_candidates_are_the_most_uncertain_then_every_case_not_normal(db_url):
    engine, version, images = _setup(db_url)
    with read_session(engine) as session:
        chosen = attributions.precompute_candidates(session, version, 2)
        assert [c.image_id for c in chosen] == [images[0], images[3], images[2]]
        assert [c.image_id for c in attributions.precompute_candidates(session, version, 0)] == [images[2]]


def test_prunable_maps_are_old_and_of_inactive_versions(db_url):
    engine, version, images = _setup(db_url)
    with write_session(engine) as session:
        _record(session, images[0], version, 0.1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with write_session(engine) as session:
        assert [m.image_id for m in attributions.prunable_maps(session, later)] == [images[0]]
        assert attributions.prunable_maps(session, later - dt.timedelta(days=2)) == []
        session.get(ModelVersion, version).is_active = True
        session.flush()
        assert attributions.prunable_maps(session, later) == []
        session.get(ModelVersion, version).is_active = False
        session.flush()
        assert attributions.delete_maps(session, [m.id for m in attributions.prunable_maps(session, later)]) == 1
