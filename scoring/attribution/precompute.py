"""The nightly precompute: maps for the cases a reviewer opens first, after the run's predictions are committed.

The cases are the ``top`` most uncertain predictions of the model version plus every prediction whose top class
is not ``normal`` (:func:`db.attributions.precompute_candidates`), for the predicted class, skipping those whose
stored map is sound (:func:`scoring.attribution.cache.check_stored`: a record alone is not enough, its file must be
whole and match it); a broken one is computed again. Grad-CAM runs batched; images are read one batch ahead in a
background thread. Each batch's maps are stored and recorded before the next starts, so a kill loses at most the
batch in flight, and never a prediction. Before that, the files no record will read are removed
(:func:`db.attributions.remove_stray_files`: unfinished writes of a killed writer, orphaned maps).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import Engine

from db import attributions
from db.config import cxr_home
from db.engine import read_session
from scoring.attribution.cache import (
    AttributionUnavailable,
    check_stored,
    model_for_version,
    model_label,
    read_image,
    store,
    version_file,
)
from scoring.attribution.engine import compute_crops, finish, params_key, resolve_params

log = logging.getLogger("cxr.attribution")

BATCH_SIZE = {"gradcam": 16, "integrated_gradients": 1, "occlusion": 1}
DEFAULT_TOP = 50


@dataclass
class MethodCounts:
    computed: int = 0
    cached: int = 0  # already had a sound map
    failed: int = 0  # the image could not be read again, or the method raised on it
    broken: int = 0  # had a record whose file was missing or not sound: computed again (in computed or failed)
    seconds: float = 0.0


@dataclass
class PrecomputeSummary:
    candidates: int = 0
    methods: dict[str, MethodCounts] = field(default_factory=dict)
    stray_files: attributions.StrayFiles = field(default_factory=attributions.StrayFiles)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"candidates": self.candidates, "seconds": round(self.seconds, 3),
                "stray_files_removed": {"unfinished": self.stray_files.unfinished,
                                        "orphaned": self.stray_files.orphaned},
                **{name: {"computed": c.computed, "cached": c.cached, "failed": c.failed, "broken": c.broken,
                          "seconds": round(c.seconds, 3)} for name, c in self.methods.items()}}


def precompute(engine: Engine, model_version_id: int, methods: Sequence[str],
               top: int = DEFAULT_TOP) -> PrecomputeSummary:
    started = time.perf_counter()
    summary = PrecomputeSummary()
    version = version_file(engine, model_version_id)
    prepared = model_for_version(version)
    with read_session(engine) as session:
        summary.stray_files = attributions.remove_stray_files(session, cxr_home())
        candidates = attributions.precompute_candidates(session, model_version_id, top)
        sizes = attributions.image_sizes(session, [c.image_id for c in candidates])
    if summary.stray_files.unfinished or summary.stray_files.orphaned:
        log.info("attributions: removed %d unfinished map writes and %d map files no record points to (%.1f MB)",
                 summary.stray_files.unfinished, summary.stray_files.orphaned, summary.stray_files.bytes / 1e6)
    summary.candidates = len(candidates)
    for method in methods:
        method_started = time.perf_counter()
        counts = summary.methods.setdefault(method, MethodCounts())
        todo = _to_compute(engine, version, method, candidates, sizes, counts)
        _run_method(engine, prepared, model_version_id, method, todo, counts)
        counts.seconds = time.perf_counter() - method_started
        log.info("attributions %s: %d computed, %d already cached, %d failed, %d broken maps computed again, "
                 "%.1f s", method, counts.computed, counts.cached, counts.failed, counts.broken, counts.seconds)
    summary.seconds = time.perf_counter() - started
    return summary


def _to_compute(engine: Engine, version: attributions.VersionFile, method: str,
                candidates: list[attributions.Candidate], sizes: dict[int, tuple[int | None, int | None]],
                counts: MethodCounts) -> list[attributions.Candidate]:
    """The candidates without a sound map of the method for their predicted class; counts the cached and broken."""
    defining, _ = resolve_params(method, version.input_size, {})
    with read_session(engine) as session:
        stored = attributions.maps_of_method(session, version.model_version_id, method, params_key(method, defining))
    todo: list[attributions.Candidate] = []
    problems: Counter[str] = Counter()
    for candidate in candidates:
        row = stored.get((candidate.image_id, candidate.predicted_class))
        if row is not None:
            _, problem = check_stored(row, sizes.get(candidate.image_id, (None, None)), version.input_size, defining)
            if problem is None:
                continue
            problems[problem] += 1
        todo.append(candidate)
    counts.cached = len(candidates) - len(todo)
    counts.broken = sum(problems.values())
    if counts.broken:
        log.warning("attributions %s: %d stored maps are not sound (%s); computing them again", method,
                    counts.broken, ", ".join(f"{reason} {n}" for reason, n in problems.items()))
    return todo


def _read(engine: Engine, batch: list[attributions.Candidate]) -> list[np.ndarray | None]:
    pixels: list[np.ndarray | None] = []
    for candidate in batch:
        try:
            pixels.append(read_image(engine, candidate.image_id))
        except AttributionUnavailable as exc:
            log.warning("no attribution map for image %d: %s", candidate.image_id, exc)
            pixels.append(None)
    return pixels


def _run_method(engine: Engine, prepared, model_version_id: int, method: str,
                todo: list[attributions.Candidate], counts: MethodCounts) -> None:
    size = BATCH_SIZE[method]
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-attribution-reader") as reader:
        upcoming = reader.submit(_read, engine, batches[0])
        for index, batch in enumerate(batches):
            pixels = upcoming.result()
            if index + 1 < len(batches):
                upcoming = reader.submit(_read, engine, batches[index + 1])
            _compute_batch(engine, prepared, model_version_id, method, batch, pixels, counts)


def _compute_batch(engine: Engine, prepared, model_version_id: int, method: str,
                   batch: list[attributions.Candidate], pixels: list[np.ndarray | None], counts: MethodCounts) -> None:
    readable = [(c, p) for c, p in zip(batch, pixels, strict=True) if p is not None]
    counts.failed += len(batch) - len(readable)
    if not readable:
        return
    started = time.perf_counter()
    try:
        crops = compute_crops(prepared, [p for _, p in readable], method, [c.predicted_class for c, _ in readable])
    except (RuntimeError, ValueError) as exc:
        log.warning("%s failed on a batch of %d images (%s)", method, len(readable), type(exc).__name__)
        counts.failed += len(readable)
        return
    seconds = (time.perf_counter() - started) / len(readable)
    for (candidate, _), crop in zip(readable, crops, strict=True):
        crop = replace(crop, seconds=seconds)
        store(engine, candidate.image_id, model_version_id, crop, finish(crop, model_label(model_version_id)))
        counts.computed += 1
