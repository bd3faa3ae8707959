"""The nightly precompute: maps for the cases a reviewer opens first, after the run's predictions are committed.

The cases are the ``top`` most uncertain predictions of the model version plus every prediction whose top class
is not ``normal`` (:func:`db.attributions.precompute_candidates`), for the predicted class, skipping those already
cached. Grad-CAM runs batched; images are read one batch ahead in a background thread. Each batch's maps are
stored and recorded before the next starts, so a kill loses at most the batch in flight, and never a prediction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import Engine

from db import attributions
from db.engine import read_session
from scoring.attribution.cache import (
    AttributionUnavailable,
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
    cached: int = 0  # already had a map
    failed: int = 0  # the image could not be read again, or the method raised on it
    seconds: float = 0.0


@dataclass
class PrecomputeSummary:
    candidates: int = 0
    methods: dict[str, MethodCounts] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"candidates": self.candidates, "seconds": round(self.seconds, 3),
                **{name: {"computed": c.computed, "cached": c.cached, "failed": c.failed,
                          "seconds": round(c.seconds, 3)} for name, c in self.methods.items()}}


def precompute(engine: Engine, model_version_id: int, methods: Sequence[str],
               top: int = DEFAULT_TOP) -> PrecomputeSummary:
    started = time.perf_counter()
    summary = PrecomputeSummary()
    version = version_file(engine, model_version_id)
    prepared = model_for_version(version)
    with read_session(engine) as session:
        candidates = attributions.precompute_candidates(session, model_version_id, top)
    summary.candidates = len(candidates)
    for method in methods:
        method_started = time.perf_counter()
        counts = summary.methods.setdefault(method, MethodCounts())
        defining, _ = resolve_params(method, version.input_size, {})
        with read_session(engine) as session:
            done = attributions.cached_image_ids(session, model_version_id, method, params_key(method, defining))
        todo = [c for c in candidates if c.image_id not in done]
        counts.cached = len(candidates) - len(todo)
        _run_method(engine, prepared, model_version_id, method, todo, counts)
        counts.seconds = time.perf_counter() - method_started
        log.info("attributions %s: %d computed, %d already cached, %d failed, %.1f s", method, counts.computed,
                 counts.cached, counts.failed, counts.seconds)
    summary.seconds = time.perf_counter() - started
    return summary


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
