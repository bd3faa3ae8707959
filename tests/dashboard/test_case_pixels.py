"""A case shows only pixels that are its own (issue 19, item 1): real files scored by the real scorer, then
replaced, linked, moved or named so that two paths once shared one text; the case page and the attribution maps
read only bytes whose hash is the image's, try its other known places, and say plainly when no copy is left."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from db.config import database_url
from db.engine import get_engine, read_session
from db.hashing import file_sha256
from db.models import Image, ImageFile, ModelVersion
from db.paths import to_fs
from scoring import cli, imaging
from tests.dashboard.conftest import run_app, viewer_data


def _score(tiny_checkpoint, *paths) -> None:
    assert cli.main(["--db", database_url(), "--model", str(tiny_checkpoint), "--settle-seconds", "0",
                     *map(str, paths)]) in (0, 1)


def _image_id(path) -> int:
    with read_session(get_engine()) as session:
        return session.scalar(select(Image.id).where(Image.sha256 == file_sha256(path)))


@pytest.fixture
def admin() -> int:
    """An admin (admins see file names too: the case is then identifiable in the caption)."""
    from db import migrate
    from db.engine import write_session
    from db.reviewers import add_reviewer

    migrate.ensure_schema(get_engine())
    with write_session(get_engine()) as session:
        return add_reviewer(session, "chief", "a long admin passphrase", role="admin").id


def _shown_pixels(at) -> bool:
    return viewer_data(at) is not None


@pytest.fixture
def day(tmp_path, cxr_dev):
    """day/A.png (a normal film) and day/B.png (a covid film)."""
    folder = tmp_path / "day"
    folder.mkdir()
    shutil.copy(next((cxr_dev / "normal").glob("*.png")), folder / "A.png")
    shutil.copy(next((cxr_dev / "covid").glob("*.png")), folder / "B.png")
    return folder


def test_a_path_replaced_by_a_link_to_another_film_shows_no_pixels(day, tiny_checkpoint, admin):
    _score(tiny_checkpoint, day)
    case_a = _image_id(day / "A.png")
    (day / "A.png").unlink()
    (day / "A.png").symlink_to(day / "B.png")  # A now opens B
    _score(tiny_checkpoint, day)
    at = run_app(admin, page="views/case.py", query={"image": str(case_a)})
    assert not at.exception
    assert not _shown_pixels(at)  # B's pixels never appear beside A's prediction
    assert "cannot be shown: no copy of this image is left" in " ".join(e.value for e in at.error)


def test_a_new_study_saved_under_the_old_name_is_not_shown_as_the_old_case(day, tiny_checkpoint, cxr_dev, admin):
    _score(tiny_checkpoint, day)
    case_a = _image_id(day / "A.png")
    (day / "A.png").unlink()
    shutil.copy(next((cxr_dev / "pneumonia").glob("*.png")), day / "A.png")  # a new study, the same file name
    _score(tiny_checkpoint, day)
    assert not _shown_pixels(run_app(admin, page="views/case.py", query={"image": str(case_a)}))
    newer = run_app(admin, page="views/case.py", query={"image": str(_image_id(day / "A.png"))})
    assert _shown_pixels(newer)  # the new study is its own case, shown


def test_a_moved_folder_is_read_from_its_recorded_new_place(day, tiny_checkpoint, tmp_path, admin):
    original = imaging.read_xray(day / "A.png").pixels
    _score(tiny_checkpoint, day)
    case_a = _image_id(day / "A.png")
    moved = tmp_path / "archive" / "day"
    moved.parent.mkdir()
    shutil.move(day, moved)
    at = run_app(admin, page="views/case.py", query={"image": str(case_a)})
    assert not _shown_pixels(at) and "no copy of this image is left" in " ".join(e.value for e in at.error)

    _score(tiny_checkpoint, moved)  # the nightly run over the new place records it
    from dashboard import data

    data.viewing_image.clear()
    at = run_app(admin, page="views/case.py", query={"image": str(case_a)})
    assert _shown_pixels(at)
    np.testing.assert_array_equal(data.viewing_image(case_a).pixels, original)


def test_a_non_utf8_name_and_its_escaped_lookalike_stay_two_images(tmp_path, tiny_checkpoint, cxr_dev):
    folder = tmp_path / "share"
    folder.mkdir()
    films = sorted(cxr_dev.glob("*/*.png"))
    raw_name = os.path.join(os.fsencode(folder), b"A\xff.png")
    lookalike = folder / "A\\xff.png"  # the same text the old escape gave the byte 0xff
    shutil.copy(films[0], raw_name)
    shutil.copy(films[1], lookalike)
    _score(tiny_checkpoint, folder)
    with read_session(get_engine()) as session:
        stored = {path: image_id for path, image_id in session.execute(select(ImageFile.path, ImageFile.image_id))}
    assert len(stored) == 2 and {os.fsencode(to_fs(p)) for p in stored} == {raw_name, os.fsencode(lookalike)}
    from dashboard import data

    for path, image_id in stored.items():
        expected = imaging.read_xray(os.fsencode(to_fs(path))).pixels
        np.testing.assert_array_equal(data.viewing_image(image_id).pixels, expected)


def test_attribution_maps_are_computed_from_the_cases_own_pixels_only(day, tiny_checkpoint):
    from scoring.attribution import load_or_compute
    from scoring.attribution.cache import AttributionUnavailable

    _score(tiny_checkpoint, day)
    case_a = _image_id(day / "A.png")
    (day / "A.png").unlink()
    (day / "A.png").symlink_to(day / "B.png")
    with read_session(get_engine()) as session:
        version = session.scalar(select(ModelVersion.id))
    with pytest.raises(AttributionUnavailable, match="no copy of this image is left"):
        load_or_compute(get_engine(), case_a, version, "occlusion", "covid")
