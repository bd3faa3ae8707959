"""The attribution cache: maps stored under ``$CXR_HOME/attributions`` and recorded in ``attribution_cache``.

A map is stored at the model's resolution, cropped to the image (a compressed ``.npz``, written to a temporary
file, fsynced and renamed into place), and brought to the original geometry on loading, so a cached map is a
small file read and a resize. A stored map is used only when it is sound (:func:`check_stored`): a file that is
missing, unreadable or does not hold the key its record names, a placement that does not fit the image, or values
other than the range its record states are recomputed, never shown broken. Concurrent requests for the same map
compute it once per process; across processes the rename and the upsert keep the file and the record whole.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from db import attributions
from db.config import cxr_home, private_tmp
from db.engine import read_session, write_session
from db.hashing import file_sha256
from db.paths import to_fs
from scoring import imaging
from scoring.attribution.engine import (
    AttributionError,
    AttributionMap,
    CropMap,
    Placement,
    PreparedModel,
    compute_crops,
    finish,
    params_key,
    prepared_model,
    resolve_params,
)
from scoring.imaging.verified import NoVerifiedCopy, read_verified
from scoring.model import CheckpointError, atomic_write

log = logging.getLogger("cxr.attribution")

CACHE_FOLDER = attributions.CACHE_FOLDER

# Why a stored map is not used (log reason codes): it is computed again.
MISSING_OR_CORRUPT = "missing_or_corrupt"
PLACEMENT_OUTSIDE_IMAGE = "placement_outside_image"  # its resize would allocate more than the image
VALUES_UNLIKE_RECORD = "values_unlike_record"  # not the value range recorded when it was computed
_MAX_MEMBER_BYTES = 16 * 2**20  # a crop is at most the model input (4 MiB at 1024 px): larger is not a map
_RANGE_TOLERANCE = 1e-4  # of the recorded range's magnitude: the resize is deterministic, allow for other builds


class AttributionUnavailable(AttributionError):
    """The map cannot be made: no such image or model version, or the image's file is gone or changed."""


def cache_root() -> Path:
    return cxr_home() / CACHE_FOLDER


def storage_path(model_version_id: int, image_id: int, method: str, target_class: str, key: str) -> str:
    """Relative to $CXR_HOME; the class name is hashed into the name so any class name makes a safe file name."""
    digest = hashlib.sha256(f"{target_class}\0{key}".encode()).hexdigest()[:20]
    return f"{CACHE_FOLDER}/v{model_version_id}/{image_id % 1000:03d}/{image_id}-{method}-{digest}.npz"


def write_map_file(path: Path, crop: CropMap, key: str) -> None:
    """Atomically: a killed writer leaves the old file or none, never half of one."""
    p = crop.placement
    with atomic_write(path) as handle:
        np.savez_compressed(handle, crop=crop.crop.astype(np.float32, copy=False), key=np.array(key),
                            placement=np.array([p.rows, p.cols, p.top, p.left, p.new_rows, p.new_cols]))


def read_map_file(path: Path, key: str) -> tuple[np.ndarray, Placement] | None:
    """The stored crop and placement; None when the file is missing, corrupt or holds another map."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if any(member.file_size > _MAX_MEMBER_BYTES for member in stored.zip.infolist()):
                return None
            if str(stored["key"]) != key:
                return None
            crop, placement = stored["crop"], Placement(*(int(v) for v in stored["placement"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError, AttributeError):
        return None
    if crop.dtype != np.float32 or crop.shape != (placement.new_rows, placement.new_cols) \
            or not np.isfinite(crop).all():
        return None
    return crop, placement


def placement_fits(placement: Placement, image_size: tuple[int | None, int | None], input_size: int) -> bool:
    """Whether a stored placement is the one the model's input size gives for a size that fits the image (its
    stored rows and columns, either way round: an EXIF orientation turns the pixels; where they are unknown,
    the reader's limit): so loading the map never allocates more than the image itself."""
    if min(placement.rows, placement.cols) < 1 or Placement.of(placement.rows, placement.cols, input_size) != placement:
        return False
    if None in image_size:
        return placement.rows * placement.cols <= imaging.MAX_PIXELS
    sides, image_sides = sorted((placement.rows, placement.cols)), sorted(image_size)
    return sides[0] <= image_sides[0] and sides[1] <= image_sides[1]


def check_stored(row: attributions.CachedMap, image_size: tuple[int | None, int | None], input_size: int,
                 params: dict[str, Any]) -> tuple[AttributionMap | None, str | None]:
    """The stored map of a record (made with ``params``) in the image's geometry, or None and why it is not
    sound."""
    stored = read_map_file(cxr_home() / row.storage_path, row.params_key)
    if stored is None:
        return None, MISSING_OR_CORRUPT
    crop, placement = stored
    if not placement_fits(placement, image_size, input_size):
        return None, PLACEMENT_OUTSIDE_IMAGE
    made = finish(CropMap(crop, placement, row.method, row.target_class, params, row.seconds),
                  model_label(row.model_version_id))
    scale = _RANGE_TOLERANCE * max(abs(row.value_min), abs(row.value_max), 1e-12)
    if abs(made.value_min - row.value_min) > scale or abs(made.value_max - row.value_max) > scale:
        return None, VALUES_UNLIKE_RECORD
    return made, None


_verified: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256 of a checkpoint file already hashed
_key_locks: dict[tuple, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def version_file(engine: Engine, model_version_id: int) -> attributions.VersionFile:
    with read_session(engine) as session:
        found = attributions.model_version_file(session, model_version_id)
    if found is None:
        raise AttributionUnavailable(f"no model version {model_version_id}")
    return found


def model_for_version(version: attributions.VersionFile) -> PreparedModel:
    """The shared model of a registered version, refused if its checkpoint file changed since registration."""
    try:
        stat = os.stat(version.path)
    except OSError as exc:
        raise AttributionUnavailable(f"model version {version.model_version_id}: checkpoint {version.path} "
                                     f"unreadable ({exc})") from None
    identity = (os.path.realpath(version.path), stat.st_size, stat.st_mtime_ns)
    if _verified.get(identity) != version.sha256:
        if file_sha256(version.path) != version.sha256:
            raise AttributionUnavailable(f"model version {version.model_version_id}: checkpoint {version.path} "
                                         "has changed since it was registered")
        _verified[identity] = version.sha256
    try:
        return prepared_model(version.path)
    except CheckpointError as exc:
        raise AttributionUnavailable(str(exc)) from None


def model_label(model_version_id: int) -> str:
    return f"v{model_version_id}"


def read_image(engine: Engine, image_id: int) -> np.ndarray:
    """The image's pixels, read from a verified copy of the first recorded path that still holds its content."""
    with read_session(engine) as session:
        source = attributions.image_source(session, image_id)
    if source is None:
        raise AttributionUnavailable(f"no image {image_id}")
    try:
        return read_verified([to_fs(path) for path in source.paths], source.sha256,
                             lambda copy: imaging.read_xray(copy).pixels, workdir=private_tmp())
    except NoVerifiedCopy as exc:
        raise AttributionUnavailable(f"image {image_id}: {exc}") from None
    except imaging.XRayReadError as exc:
        raise AttributionUnavailable(f"image {image_id}: {exc}") from None


def _key_lock(key: tuple) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def _request(engine: Engine, model_version_id: int, method: str,
             params: dict[str, Any]) -> tuple[attributions.VersionFile, dict[str, Any], str]:
    version = version_file(engine, model_version_id)
    defining, _ = resolve_params(method, version.input_size, params)
    return version, defining, params_key(method, defining)


def _from_cache(engine: Engine, image_id: int, version: attributions.VersionFile, method: str, target_class: str,
                defining: dict[str, Any], key: str) -> AttributionMap | None:
    with read_session(engine) as session:
        row = attributions.find_map(session, image_id, version.model_version_id, method, target_class, key)
        size = attributions.image_sizes(session, [image_id]).get(image_id, (None, None))
    if row is None:
        return None
    made, problem = check_stored(row, size, version.input_size, defining)
    if problem is not None:
        log.warning("attribution map %d (%s) is not sound (%s); computing it again", row.id, method, problem)
    return made


def store(engine: Engine, image_id: int, model_version_id: int, crop: CropMap, made: AttributionMap) -> None:
    """Write the map's file, then its record (a record never points at a file that is not there)."""
    key = params_key(crop.method, crop.params)
    relative = storage_path(model_version_id, image_id, crop.method, crop.target_class, key)
    write_map_file(cxr_home() / relative, crop, key)
    with write_session(engine) as session:
        attributions.record_map(
            session, image_id=image_id, model_version_id=model_version_id, method=crop.method,
            target_class=crop.target_class, params_key=key, params=crop.params, storage_path=relative,
            value_min=made.value_min, value_max=made.value_max,
            outside_share=None if math.isnan(made.outside_share) else made.outside_share,
            seconds=round(crop.seconds, 4))


def load_or_compute(engine: Engine, image_id: int, model_version_id: int, method: str, target_class: str,
                    **params: Any) -> AttributionMap:
    """The cache's front door: the stored map when there is a sound one; otherwise the image is read from its
    recorded file, the map computed, stored atomically, recorded, and returned. Thread-safe."""
    version, defining, key = _request(engine, model_version_id, method, params)
    cached = _from_cache(engine, image_id, version, method, target_class, defining, key)
    if cached is not None:
        return cached
    with _key_lock((str(engine.url), image_id, model_version_id, method, target_class, key)):
        cached = _from_cache(engine, image_id, version, method, target_class, defining, key)
        if cached is not None:
            return cached
        prepared = model_for_version(version)
        pixels = read_image(engine, image_id)
        started = time.perf_counter()
        crop = compute_crops(prepared, [pixels], method, [target_class], **params)[0]
        crop = replace(crop, seconds=time.perf_counter() - started)
        made = finish(crop, model_label(model_version_id))
        store(engine, image_id, model_version_id, crop, made)
        return made


def is_cached(engine: Engine, image_id: int, model_version_id: int, method: str, target_class: str,
              **params: Any) -> bool:
    """Whether a sound stored map exists for this key (its record, and a file that :func:`check_stored` passes)."""
    version, defining, key = _request(engine, model_version_id, method, params)
    with read_session(engine) as session:
        row = attributions.find_map(session, image_id, model_version_id, method, target_class, key)
        size = attributions.image_sizes(session, [image_id]).get(image_id, (None, None))
    return row is not None and check_stored(row, size, version.input_size, defining)[0] is not None
