"""Retraining learns a reviewer's label only from the film that was reviewed (issue 19, item 1): a reviewed
image is read from the first of its known places that still holds its content, or left out."""

from __future__ import annotations

import hashlib

from sqlalchemy import update

from db import migrate, synthetic
from db.engine import get_engine, read_session, write_session
from db.models import Image, ImageFile
from db.reviews import add_review
from model_training import data


def _film(path, content: bytes) -> str:
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def test_a_reviewed_film_replaced_or_moved_is_found_or_left_out(tmp_path, caplog):
    engine = get_engine()
    migrate.upgrade(engine)
    (tmp_path / "day").mkdir()
    (tmp_path / "moved").mkdir()
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=3, reviews=0, reviewers=1)
        kept, replaced, moved = fill.image_ids
        for image_id, name in ((kept, "kept.png"), (replaced, "replaced.png"), (moved, "moved.png")):
            sha = _film(tmp_path / "day" / name, f"film {name}".encode())
            session.execute(update(Image).where(Image.id == image_id).values(path=str(tmp_path / "day" / name),
                                                                             sha256=sha))
            add_review(session, image_id=image_id, reviewer_id=fill.reviewer_ids[0], label="covid")
        # moved.png was scored again at its new place; replaced.png now holds another study
        (tmp_path / "day" / "moved.png").rename(tmp_path / "moved" / "moved.png")
        session.add(ImageFile(path=str(tmp_path / "moved" / "moved.png"), size_bytes=1, mtime_ns=0, image_id=moved))
        _film(tmp_path / "day" / "replaced.png", b"another patient's film")
    with read_session(engine) as session:
        items = data.reviewed_cases(session)
    assert {item.path for item in items} == {str(tmp_path / "day" / "kept.png"), str(tmp_path / "moved" / "moved.png")}
    assert "1 reviewed cases left out: no copy of their image is left" in caplog.text
