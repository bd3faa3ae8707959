"""A synthetic review workload: images, predictions of one synthetic model version, reviewers and reviews,
inserted in bulk. For the dashboard's benchmark and tests; everything it writes is marked synthetic (the model
version's ``is_synthetic``, and every path lies under ``/synthetic/``). The session is not committed.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.models import Image, ModelVersion, Prediction, Review, Reviewer, ScoringRun, utcnow
from db.passwords import hash_password

CLASSES = ("covid", "normal", "pneumonia")
LABELS = (*CLASSES, "other", "ungradable")
CHUNK = 5_000


@dataclass(frozen=True)
class SyntheticFill:
    model_version_id: int
    image_ids: list[int]
    reviewer_ids: list[int]


def fill(session: Session, *, images: int, reviews: int, reviewers: int = 3, seed: int = 0,
         days: int = 30, password: str | None = None, active: bool = True,
         now: dt.datetime | None = None) -> SyntheticFill:
    """``images`` scored images and ``reviews`` reviews of the first of them, by a new synthetic model version
    (the active one when ``active``) and ``reviewers`` new accounts (the first an admin)."""
    rng = np.random.default_rng(seed)
    now = now or utcnow()
    version = ModelVersion(sha256=f"{seed:064x}", path="/synthetic/model.pt", name=f"synthetic-{seed}",
                           architecture="resnet18", classes=list(CLASSES), input_size=64,
                           preprocessing_hash="0" * 64, is_active=active, is_synthetic=True)
    run = ScoringRun(host="synthetic", status="finished", scanned=images, scored=images, finished_at=now)
    session.add_all([version, run])
    first = session.query(Reviewer).count()
    accounts = [Reviewer(username=f"synthetic{first + n}", role="admin" if n == 0 else "reviewer",
                         password_hash=hash_password(password) if password else "!synthetic")
                for n in range(reviewers)]
    session.add_all(accounts)
    session.flush()
    scored_at = [now - dt.timedelta(seconds=float(s)) for s in rng.uniform(0, days * 86400, images)]
    probabilities = rng.dirichlet((0.6, 0.6, 0.6), images)
    prefix = f"{seed:016x}{int(now.timestamp() * 1e6):016x}"
    _insert(session, Image, [_image(prefix, i, rng, scored_at[i]) for i in range(images)])
    image_ids = list(session.scalars(select(Image.id).where(Image.sha256.startswith(prefix)).order_by(Image.sha256)))
    _insert(session, Prediction, [_prediction(image_id, version.id, run.id, probabilities[i], scored_at[i])
                                  for i, image_id in enumerate(image_ids)])
    _insert(session, Review, _reviews(session, version.id, image_ids, [a.id for a in accounts], reviews, rng, now))
    return SyntheticFill(version.id, image_ids, [a.id for a in accounts])


def _image(prefix: str, i: int, rng: np.random.Generator, seen: dt.datetime) -> dict:
    dicom = i % 3 != 0
    return dict(sha256=f"{prefix}{i:032x}", path=f"/synthetic/site{i % 4}/img{i:06d}."
                + ("dcm" if dicom else "png"), size_bytes=1000, mtime=0.0, format="dicom" if dicom else "png",
                rows=512, cols=512, modality=("CR", "DX")[i % 2] if dicom else None,
                view_position=("PA", "AP")[int(rng.integers(2))] if dicom else None,
                body_part="CHEST" if dicom else None,
                study_date=(seen - dt.timedelta(days=int(rng.integers(0, 3)))).date() if dicom else None,
                in_scope=True, scope_reason="ok", first_seen_at=seen)


def _prediction(image_id: int, version_id: int, run_id: int, p: np.ndarray, scored_at: dt.datetime) -> dict:
    p = np.clip(p, 1e-6, 1.0)
    p = p / p.sum()
    entropy = float(-(p * np.log(p)).sum() / math.log(len(p)))
    best = int(p.argmax())
    return dict(image_id=image_id, model_version_id=version_id, run_id=run_id,
                probabilities={c: round(float(v), 6) for c, v in zip(CLASSES, p, strict=True)},
                predicted_class=CLASSES[best], confidence=float(p[best]), entropy=entropy, scored_at=scored_at)


def _reviews(session: Session, version_id: int, image_ids: list[int], reviewer_ids: list[int], n: int,
             rng: np.random.Generator, now: dt.datetime) -> list[dict]:
    predictions = {image_id: (prediction_id, predicted) for image_id, prediction_id, predicted in session.execute(
        select(Prediction.image_id, Prediction.id, Prediction.predicted_class)
        .where(Prediction.model_version_id == version_id))}
    rows = []
    for k, image_id in enumerate(image_ids[:max(0, n)]):
        prediction_id, model_says = predictions[image_id]
        label = model_says if rng.random() < 0.8 else LABELS[int(rng.integers(len(LABELS)))]
        rows.append(dict(image_id=image_id, prediction_id=prediction_id, label=label,
                         reviewer_id=reviewer_ids[k % len(reviewer_ids)], agrees_with_model=label == model_says,
                         flagged_for_retraining=label != model_says, comment=None,
                         created_at=now - dt.timedelta(minutes=float(rng.uniform(0, 20 * 24 * 60))),
                         mode="standard", overlay_shown=False, seconds_spent=float(rng.uniform(5, 90))))
    return rows


def _insert(session: Session, model, rows: list[dict]) -> None:
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        if chunk:
            session.execute(insert(model), chunk)
