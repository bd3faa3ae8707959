"""Model versions: registration by checkpoint hash, lookup by reference, listing and promotion."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import model_versions
from db.engine import read_session, write_session
from db.errors import CannotRun
from db.models import Image, ModelVersion, Prediction
from scoring.model import checkpoint_sha256, load_checkpoint


def add(session, sha_char: str, name: str | None = None) -> ModelVersion:
    return model_versions.register(session, sha256=sha_char * 64, path=f"/models/{sha_char}.pt",
                                   architecture="resnet18", classes=["covid", "normal"], input_size=64,
                                   preprocessing_hash="p" * 64, temperature=1.2, name=name)


def test_registering_the_same_hash_twice_gives_the_same_version(engine):
    with write_session(engine) as session:
        first = add(session, "a", "first")
        again = add(session, "a", "another name")
        assert again.id == first.id and again.name == "first"
        assert model_versions.find_by_sha(session, "a" * 64).id == first.id
        assert model_versions.find_by_sha(session, "b" * 64) is None
        assert not first.is_active and first.metrics == {}
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1


def test_register_checkpoint_takes_what_the_checkpoint_carries(engine, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    sha = checkpoint_sha256(tiny_checkpoint)
    with write_session(engine) as session:
        version = model_versions.register_checkpoint(session, tiny_checkpoint, checkpoint, sha)
    assert (version.sha256, version.name, version.is_synthetic) == (sha, "tiny-test", True)
    assert (version.architecture, version.input_size, version.temperature) == ("resnet18", 32, pytest.approx(1.3))
    assert version.classes == checkpoint.classes and version.path == str(tiny_checkpoint.resolve())
    assert version.preprocessing_hash == checkpoint.preprocessing.hash


def test_a_version_is_labelled_by_id_and_name_or_hash(engine):
    with write_session(engine) as session:
        named, unnamed = add(session, "a", "alpha"), add(session, "b")
        assert model_versions.label(named) == f"{named.id}:alpha"
        assert model_versions.label(unnamed) == f"{unnamed.id}:{'b' * 12}"


def test_the_default_version_is_the_active_one_else_the_newest_that_scored(engine):
    with write_session(engine) as session:
        assert model_versions.default_version_id(session) is None
        older, newer = add(session, "a"), add(session, "b")
        image = Image(sha256="i" * 64, path="/x/i.png", size_bytes=1, mtime=0.0, format="png")
        session.add(image)
        session.flush()
        for version in (older, newer):
            session.add(Prediction(image_id=image.id, model_version_id=version.id, probabilities={},
                                   predicted_class="covid", confidence=0.5, entropy=0.5))
        session.flush()
        assert model_versions.default_version_id(session) == newer.id
        model_versions.promote(session, str(older.id))
        assert model_versions.default_version_id(session) == older.id


def test_find_by_id_name_or_sha_prefix(engine):
    with write_session(engine) as session:
        a, b = add(session, "a", "alpha"), add(session, "b", "beta")
    with read_session(engine) as session:
        assert model_versions.find_by_ref(session, str(b.id)).id == b.id
        assert model_versions.find_by_ref(session, "alpha").id == a.id
        assert model_versions.find_by_ref(session, "B" * 8).id == b.id  # sha prefixes are case-insensitive
        with pytest.raises(model_versions.UnknownModelVersion, match="no model version 'bbbb'"):
            model_versions.find_by_ref(session, "bbbb")  # too short to be a prefix
        with pytest.raises(CannotRun, match="cxr-train list"):
            model_versions.find_by_ref(session, "gamma")


def test_a_reference_matching_two_versions_is_refused(engine):
    with write_session(engine) as session:
        first = add(session, "a", "alpha")
        second = add(session, "b", str(first.id))  # a name that is the other version's id
    with read_session(engine) as session, pytest.raises(model_versions.UnknownModelVersion, match="give the id"):
        model_versions.find_by_ref(session, str(first.id))
    assert second.id != first.id


def test_promote_returns_the_previous_version_and_keeps_one_active(engine):
    with write_session(engine) as session:
        a, b = add(session, "a", "alpha"), add(session, "b", "beta")
        assert model_versions.active_version(session) is None
    with write_session(engine) as session:
        version, previous = model_versions.promote(session, "alpha")
        assert (version.id, version.is_active, previous) == (a.id, True, None)
    with write_session(engine) as session:
        version, previous = model_versions.promote(session, "beta")
    assert (version.id, version.is_active, previous.id, previous.is_active) == (b.id, True, a.id, False)
    with write_session(engine) as session:
        version, previous = model_versions.promote(session, str(a.id))  # rollback
        assert (version.id, previous.id) == (a.id, b.id)
    with read_session(engine) as session:
        assert model_versions.active_version(session).id == a.id
        assert [(v.id, v.is_active) for v in model_versions.list_versions(session)] == [(a.id, True), (b.id, False)]


def test_promoting_an_unknown_version_changes_nothing(engine):
    with write_session(engine) as session:
        add(session, "a", "alpha")
        model_versions.promote(session, "alpha")
    with pytest.raises(model_versions.UnknownModelVersion), write_session(engine) as session:
        model_versions.promote(session, "nope")
    with read_session(engine) as session:
        assert model_versions.active_version(session).name == "alpha"
