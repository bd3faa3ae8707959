"""The attribution cache's records: which maps exist (files under ``$CXR_HOME/attributions``), what they were made
with, and the share of their positive attribution outside the central chest region.

Functions take a Session and never commit. The worklist's "model looks outside the lungs" filter is
:func:`looks_outside_lungs`: an EXISTS on this table for the image and model version. :func:`remove_stray_files`
deletes the files under the cache folder that no record will ever read.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, select
from sqlalchemy.orm import Session

from db.models import AttributionCacheEntry, Image, ImageFile, ModelVersion, Prediction, utcnow
from db.results import _insert

# More than half of the positive attribution outside the central chest region, which covers about 60 % of the
# film (a uniform map scores about 0.40). Measured with Grad-CAM of a ResNet-18 trained on cxr-dev (128 px): 11.5 %
# of covid films (actualmed 37 %, figure1 24 %, hannover 7 %: adult films with borders and burned-in text) but
# 2.5 % of normal and 1.5 % of pneumonia films are at or above it; on cxr-adult (journal figures with arrows and
# letters) 38 % of covid and 24 % of pneumonia films. It does not catch the paediatric shortcut: a child's chest
# fills the centre of the film, so those maps stay inside the region (median 0.27).
OUTSIDE_LUNGS_THRESHOLD = 0.5

CACHE_FOLDER = "attributions"  # under $CXR_HOME (scoring.attribution.cache writes the maps there)
# A map's file is written (to a temporary name, then renamed) before its record is committed, so a young file
# without a record, or a young temporary file, may be a write in progress in another process: left alone.
STRAY_MIN_AGE_S = 3600.0
_UNFINISHED = re.compile(r"\..+\.npz\..+\.tmp")  # scoring.model.atomic_write's temporary name for a map


@dataclass(frozen=True)
class CachedMap:
    id: int
    image_id: int
    model_version_id: int
    method: str
    target_class: str
    params_key: str
    params: dict[str, Any]
    storage_path: str  # relative to $CXR_HOME
    value_min: float
    value_max: float
    outside_share: float | None
    seconds: float
    created_at: dt.datetime


@dataclass(frozen=True)
class ImageSource:
    """Where an image's bytes can be read: its first path, then every other path it was seen at."""

    image_id: int
    sha256: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    """A scored case the nightly precompute may make maps for."""

    image_id: int
    predicted_class: str
    entropy: float


def _cached(entry: AttributionCacheEntry) -> CachedMap:
    return CachedMap(entry.id, entry.image_id, entry.model_version_id, entry.method, entry.target_class,
                     entry.params_key, dict(entry.params or {}), entry.storage_path, entry.value_min, entry.value_max,
                     entry.outside_share, entry.seconds, entry.created_at)


def find_map(session: Session, image_id: int, model_version_id: int, method: str, target_class: str,
             params_key: str) -> CachedMap | None:
    entry = session.scalar(select(AttributionCacheEntry).where(
        AttributionCacheEntry.image_id == image_id, AttributionCacheEntry.model_version_id == model_version_id,
        AttributionCacheEntry.method == method, AttributionCacheEntry.target_class == target_class,
        AttributionCacheEntry.params_key == params_key))
    return None if entry is None else _cached(entry)


def record_map(session: Session, *, image_id: int, model_version_id: int, method: str, target_class: str,
               params_key: str, params: dict[str, Any], storage_path: str, value_min: float, value_max: float,
               outside_share: float | None, seconds: float) -> None:
    """Insert the map's record, or replace the record of the same key (a recomputed map)."""
    values = dict(image_id=image_id, model_version_id=model_version_id, method=method, target_class=target_class,
                  params_key=params_key, params=params, storage_path=storage_path, value_min=value_min,
                  value_max=value_max, outside_share=outside_share, seconds=seconds, created_at=utcnow())
    statement = _insert(session, AttributionCacheEntry).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=["image_id", "model_version_id", "method", "target_class", "params_key"],
        set_={name: statement.excluded[name] for name in
              ("params", "storage_path", "value_min", "value_max", "outside_share", "seconds", "created_at")}))


def maps_of_method(session: Session, model_version_id: int, method: str,
                   params_key: str) -> dict[tuple[int, str], CachedMap]:
    """The model version's maps of this method and parameters, by (image id, target class)."""
    entries = session.scalars(select(AttributionCacheEntry).where(
        AttributionCacheEntry.model_version_id == model_version_id, AttributionCacheEntry.method == method,
        AttributionCacheEntry.params_key == params_key))
    return {(entry.image_id, entry.target_class): _cached(entry) for entry in entries}


def image_sizes(session: Session, image_ids: Iterable[int]) -> dict[int, tuple[int | None, int | None]]:
    """(rows, cols) of each image as stored (None where unknown): no map of an image may be larger."""
    sizes: dict[int, tuple[int | None, int | None]] = {}
    ids = list(set(image_ids))
    for start in range(0, len(ids), 500):
        rows = session.execute(select(Image.id, Image.rows, Image.cols).where(Image.id.in_(ids[start:start + 500])))
        sizes.update({image_id: (n_rows, n_cols) for image_id, n_rows, n_cols in rows})
    return sizes


def cached_image_ids(session: Session, model_version_id: int, method: str, params_key: str) -> set[int]:
    """Images that already have a map of this method and parameters for this model version (any target)."""
    return set(session.scalars(select(AttributionCacheEntry.image_id).where(
        AttributionCacheEntry.model_version_id == model_version_id, AttributionCacheEntry.method == method,
        AttributionCacheEntry.params_key == params_key)))


def image_source(session: Session, image_id: int) -> ImageSource | None:
    image = session.get(Image, image_id)
    if image is None:
        return None
    others = session.scalars(select(ImageFile.path).where(ImageFile.image_id == image_id, ImageFile.path != image.path)
                             .order_by(ImageFile.last_seen_at.desc()))
    return ImageSource(image.id, image.sha256, (image.path, *others))


def precompute_candidates(session: Session, model_version_id: int, top_uncertain: int,
                          routine_class: str = "normal") -> list[Candidate]:
    """The cases a reviewer opens first: the ``top_uncertain`` most uncertain predictions of the model version
    (highest normalised entropy), then every prediction whose top class is not ``routine_class``."""
    columns = (Prediction.image_id, Prediction.predicted_class, Prediction.entropy)
    base = select(*columns).where(Prediction.model_version_id == model_version_id)
    uncertain = session.execute(base.order_by(Prediction.entropy.desc(), Prediction.image_id).limit(top_uncertain)
                                ) if top_uncertain > 0 else []
    flagged = session.execute(base.where(Prediction.predicted_class != routine_class)
                              .order_by(Prediction.entropy.desc(), Prediction.image_id))
    chosen: dict[int, Candidate] = {}
    for image_id, predicted_class, entropy in [*uncertain, *flagged]:
        chosen.setdefault(image_id, Candidate(image_id, predicted_class, entropy))
    return list(chosen.values())


@dataclass(frozen=True)
class VersionFile:
    model_version_id: int
    path: str
    sha256: str
    input_size: int


def model_version_file(session: Session, model_version_id: int) -> VersionFile | None:
    """Where a model version's checkpoint is and what it is; None if there is no such version."""
    version = session.get(ModelVersion, model_version_id)
    return None if version is None else VersionFile(version.id, version.path, version.sha256, version.input_size)


def prunable_maps(session: Session, older_than: dt.datetime) -> list[CachedMap]:
    """Maps of model versions that are not active, created before ``older_than``."""
    entries = session.scalars(select(AttributionCacheEntry).join(ModelVersion).where(
        ModelVersion.is_active.is_(False), AttributionCacheEntry.created_at < older_than)
        .order_by(AttributionCacheEntry.id))
    return [_cached(entry) for entry in entries]


def delete_maps(session: Session, ids: Iterable[int]) -> int:
    ids = list(ids)
    deleted = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        deleted += session.execute(delete(AttributionCacheEntry).where(AttributionCacheEntry.id.in_(chunk))).rowcount
    return deleted


def looks_outside_lungs(image_id: Any, model_version_id: Any,
                        threshold: float = OUTSIDE_LUNGS_THRESHOLD) -> ColumnElement[bool]:
    """EXISTS a map of the image by the model version with ``outside_share >= threshold`` (for a worklist WHERE:
    pass the query's image id and model version id columns)."""
    return exists().where(and_(AttributionCacheEntry.image_id == image_id,
                               AttributionCacheEntry.model_version_id == model_version_id,
                               AttributionCacheEntry.outside_share >= threshold))


@dataclass
class StrayFiles:
    unfinished: int = 0  # temporary files of map writes that were killed before their rename
    orphaned: int = 0  # .npz files no record points to (records dropped by migration 0003 or deleted by hand)
    bytes: int = 0

    def describe(self, dry_run: bool = False) -> str:
        return (f"{'would delete' if dry_run else 'deleted'} {self.unfinished} unfinished attribution map writes and "
                f"{self.orphaned} map files no record points to ({self.bytes / 1e6:.1f} MB)")


def remove_stray_files(session: Session, home: Path, *, min_age_s: float = STRAY_MIN_AGE_S,
                       dry_run: bool = False) -> StrayFiles:
    """Delete (or with ``dry_run`` only count) the files under ``home``'s cache folder that no record will read:
    unfinished writes and orphaned maps, older than ``min_age_s``. Anything else there is left alone."""
    referenced = set(session.scalars(select(AttributionCacheEntry.storage_path)))
    stray = StrayFiles()
    oldest_ns = time.time_ns() - int(min_age_s * 1e9)
    for folder, _, names in os.walk(home / CACHE_FOLDER):
        for name in names:
            path = Path(folder, name)
            unfinished = _UNFINISHED.fullmatch(name) is not None
            if not unfinished and not (name.endswith(".npz") and path.relative_to(home).as_posix() not in referenced):
                continue
            try:
                st = path.lstat()
                if st.st_mtime_ns > oldest_ns:
                    continue
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            stray.bytes += st.st_size
            stray.unfinished += unfinished
            stray.orphaned += not unfinished
    return stray
