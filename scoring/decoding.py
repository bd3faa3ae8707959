"""Decoding for the scorer, in its DataLoader workers: each file read (through the isolated reader), its scope
checked and its pixels preprocessed once per distinct preprocessing of the run's models; errors come back as data.
A batch crosses to the scoring process as one shared tensor per preprocessing plus plain values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset, get_worker_info

from db import results
from scoring import imaging
from scoring.model import Checkpoint, Preprocessing
from scoring.workers import exit_with_parent

PREPROCESS_FAILED = "preprocess_failed"

# What a worker sends for one file, plain values only so that unpickling a batch in the scoring process is
# cheap: (index into the jobs, (reason, message) or None, the images table's values or None, (in_scope, why)
# or None, whether its StudyDate was refused as not a valid DICOM date).
DecodedItem = tuple[int, tuple[str, str] | None, dict[str, Any] | None, tuple[bool, str] | None, bool]


class DecodedBatch(NamedTuple):
    """A batch as it crosses from a worker: one contiguous tensor of the in-scope images (in item order) per
    preprocessing, and plain metadata."""

    pixels: torch.Tensor | None  # the active version's preprocessing
    items: tuple[DecodedItem, ...]
    decode_seconds: float = 0.0  # what producing the batch took its worker (ModelThreads compares the model to it)
    other_pixels: tuple[torch.Tensor, ...] = ()  # the same images, for each further preprocessing (challengers')


# Seconds this process spent in DecodeDataset.__getitem__ since the last collate: a DataLoader worker fetches one
# batch's items and then collates them, one batch at a time, so the sum belongs to the batch being collated.
_decoding = threading.local()


class DecodeDataset(Dataset):
    """Reads, checks scope and preprocesses one file (once per preprocessing: the active version's first); errors
    come back as data, never as exceptions."""

    def __init__(self, paths: Sequence[str], preprocess: Sequence[Callable[..., torch.Tensor]], read_timeout: float,
                 min_side: int | None = None):
        self.paths = list(paths)
        self.preprocess = tuple(preprocess)
        self.read_timeout = read_timeout
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...] | None, DecodedItem]:
        started = time.perf_counter()
        try:
            return self._decode(index)
        finally:
            _decoding.seconds = getattr(_decoding, "seconds", 0.0) + time.perf_counter() - started

    def _decode(self, index: int) -> tuple[tuple[torch.Tensor, ...] | None, DecodedItem]:
        try:
            image = imaging.read_xray(self.paths[index], timeout=self.read_timeout, min_side=self.min_side)
        except imaging.XRayReadError as exc:
            return None, (index, (exc.reason, str(exc)), None, None, False)
        scope = imaging.in_scope(image.meta)
        values = results.image_values(image.meta)  # here, in the worker, not in the scoring process
        bad_date = results.refused_study_date(image.meta)
        if not scope[0]:
            return None, (index, None, values, scope, bad_date)
        try:
            # preprocess refuses an image for its shape alone (not 2-D, empty), whatever its parameters: one
            # preprocessing failing means they all do
            tensors = tuple(preprocess(image.pixels, image.stored_shape) for preprocess in self.preprocess)
        except (ValueError, RuntimeError) as exc:
            return None, (index, (PREPROCESS_FAILED, f"{self.paths[index]}: {exc}"), None, None, False)
        return tensors, (index, None, values, scope, bad_date)


def collate_decoded(samples: list[tuple[tuple[torch.Tensor, ...] | None, DecodedItem]]) -> DecodedBatch:
    tensors = [sample for sample, _ in samples if sample is not None]
    seconds, _decoding.seconds = getattr(_decoding, "seconds", 0.0), 0.0
    stacked = [_stack([sample[k] for sample in tensors]) for k in range(len(tensors[0]))] if tensors else [None]
    return DecodedBatch(stacked[0], tuple(item for _, item in samples), seconds, tuple(stacked[1:]))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor; in a worker it is stacked straight into shared memory (as torch's default_collate does), so
    sending it to the scoring process is one storage and no further copy."""
    out = None
    if get_worker_info() is not None:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def input_preprocessings(checkpoint: Checkpoint, challengers: Sequence[Checkpoint] = ()) -> tuple[Preprocessing, ...]:
    """The distinct preprocessings of the run's models, the active version's first: a batch carries one tensor
    for each (usually one: the versions of a project share input size and preprocessing)."""
    return tuple(dict.fromkeys([checkpoint.preprocessing, *(c.preprocessing for c in challengers)]))


def decode_side(checkpoint: Checkpoint, challengers: Sequence[Checkpoint] = ()) -> int:
    """The reduced decode's ``min_side``: twice the active version's input side, as when it scores alone, so its
    predictions do not depend on the challengers; raised to a challenger's input side where that is larger,
    so that no model is fed an image enlarged from a smaller decode."""
    return max([2 * checkpoint.input_size, *(c.input_size for c in challengers)])


def codec_threads(workers: int) -> int:
    """Threads for each decoder that can use them (OpenJPEG): the cores the decode workers leave unused.
    With as many workers as cores (run.default_workers on a CPU) this is 1."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def start_worker_reader(threads: int, scorer_pid: int, _worker_id: int) -> None:
    """Each worker starts its isolated decoder at once, so the first batch doesn't wait for it.

    Every OpenJPEG build here (Pillow's, pylibjpeg-openjpeg's, GDCM's) reads OPJ_NUM_THREADS when it creates a
    decoder; the isolated decoder inherits it. A value the user set is kept."""
    exit_with_parent(scorer_pid)
    os.environ.setdefault("OPJ_NUM_THREADS", str(threads))
    imaging.start_reader_process()

