"""The scorer's models: a checkpoint's model on a device returning calibrated probabilities, and the thread
policy that keeps a small model from fighting the decode workers for the cores.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from scoring.model import Checkpoint, autocast, autocast_dtype

log = logging.getLogger("cxr.score")


class Scorer:
    """The checkpoint's model on a device, returning calibrated probabilities for a batch.

    channels_last everywhere (oneDNN and cuDNN convolutions are faster that way); the precision is the one
    training uses too (:func:`scoring.model.autocast_dtype`).
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device, precision: str = "auto"):
        self.checkpoint, self.device = checkpoint, device
        self.model = checkpoint.build().to(device, memory_format=torch.channels_last)
        self.autocast_dtype = autocast_dtype(device, precision)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=self.device.type == "cuda", memory_format=torch.channels_last)
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(batch)
        return self.checkpoint.probabilities(logits.float()).cpu()  # its temperature and offsets



class ModelThreads:
    """Gives a small model one CPU thread when decoding sets the pace.

    Why: the model's intra-op threads (OpenMP) wait at every barrier for a thread the decode workers have pushed
    off its core, and spin meanwhile on the cores those workers need. Each wait costs about a scheduler time
    slice, so it ruins a model whose operations last microseconds and hardly touches one whose operations last
    milliseconds. Measured on this 2-core machine: a 32 px ResNet-18 (a batch of 32 in about 30 ms on one thread,
    half of what cxr-dev's decoding takes per image) scored 25-35 % faster on one thread, and a batch the model
    runs in 15 ms alone took it 150-800 ms beside the workers; ResNet-18 at 224 px on the full-size archive (a batch
    in 0.9 s on one thread, at about the same ratio to decoding) was 13 % slower on one thread. So: the model is timed
    alone on one thread before the workers start (dummy images), and a model whose batch takes under
    :data:`SMALL_BATCH_S` there runs on one thread when, over the first batches, it needs less than
    :data:`KEEP_UP` of the time the workers take to decode the same images (their own seconds per image). Decided
    once per pass and undone when the pass ends; never on a GPU, with decoding in the scoring process (no
    workers), or when the user chose the threads (``--threads``).
    """

    WARM_UP = 1  # the first batch's decoders are still importing their codecs
    WINDOW = 2
    KEEP_UP = 0.8
    SMALL_BATCH_S = 0.1
    BATCH = 32  # probe images: the per-call cost of smaller batches would hide a small model's real speed

    def __init__(self, enabled: bool, workers: int = 1):
        self.enabled, self.workers = enabled, max(1, workers)
        self.model_seconds_per_image: float | None = None  # on one thread
        self._seen = self._images = 0
        self._decoding = 0.0
        self._threads_before = torch.get_num_threads()

    def __enter__(self) -> ModelThreads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        torch.set_num_threads(self._threads_before)

    def measure(self, *scorers: Scorer) -> None:
        """Times the models alone on one thread, on dummy images (call it before the loader starts its workers);
        several (the active version and its challengers, which run one after the other on every batch) count
        as one model taking their sum. Models that are not small are left their threads without further ado."""
        if not self.enabled or self._threads_before == 1:
            return
        torch.set_num_threads(1)
        small, per_image = True, 0.0
        try:
            for scorer in scorers:
                sample = scorer.checkpoint.preprocessing(np.zeros((64, 64), dtype=np.float32))
                # one image costs several times its share of a batch (per-call costs): a loose first check, so
                # that the batch is timed only for a model that may be small (at most 4 x SMALL_BATCH_S)
                small = self._seconds_per_image(scorer, sample, 1) * self.BATCH < 4 * self.SMALL_BATCH_S
                if not small:
                    break
                per_image += self._seconds_per_image(scorer, sample, self.BATCH)
            small = small and per_image * self.BATCH < self.SMALL_BATCH_S
        finally:
            torch.set_num_threads(self._threads_before)
        if small:
            self.model_seconds_per_image = per_image
        else:
            self.enabled = False

    @staticmethod
    def _seconds_per_image(scorer: Scorer, sample: torch.Tensor, images: int) -> float:
        batch = sample.expand(images, *sample.shape).contiguous()
        started = time.perf_counter()
        scorer.probabilities(batch)
        return (time.perf_counter() - started) / images

    def observe(self, decode_seconds: float, images: int) -> None:
        if not self.enabled or self.model_seconds_per_image is None:
            return
        self._seen += 1
        if self._seen <= self.WARM_UP:
            return
        self._decoding += decode_seconds
        self._images += images
        if self._seen < self.WARM_UP + self.WINDOW or not self._images:
            return
        self.enabled = False
        threads = torch.get_num_threads()
        decoding = self._decoding / self._images / self.workers  # seconds per image with the workers in parallel
        log.debug("model %.2f ms per image on one thread, decoding %.2f ms per image across %d workers",
                  1000 * self.model_seconds_per_image, 1000 * decoding, self.workers)
        if threads > 1 and self.model_seconds_per_image < self.KEEP_UP * decoding:
            torch.set_num_threads(1)
            log.info("decoding sets the pace (%.1f ms per image across %d workers; the model alone %.1f ms per image "
                     "on one thread): the model runs on 1 thread instead of %d so the decoders keep their cores",
                     1000 * decoding, self.workers, 1000 * self.model_seconds_per_image, threads)

