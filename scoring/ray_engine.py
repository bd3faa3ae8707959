"""The Ray engine of ``cxr-score`` (``--engine ray [--ray-address ADDRESS]``): decoding and the models on a Ray
cluster, everything else as with the local engine.

The driver (the ``cxr-score`` process) keeps what makes a run a run: the run lock, the triage against the
database (the single source of truth of what is new), the run's row and counts, and every write, batch by batch,
through :meth:`scoring.pipeline.ScoringPass.store_scored`; so on SQLite only the driver writes, and the unique
constraints keep each image scored once whatever a retry repeats. Ray Data (Apache-2.0) maps the local engine's
batches (the same files together, so the same tensors and, on a CPU, the same probabilities) through decode tasks
(:class:`scoring.decoding.DecodeDataset`: the isolated reader, the shared preprocessing, errors as data) and then an
actor pool that runs the active version and its challengers (:class:`scoring.pipeline.BatchScorer`): one actor per
GPU of the cluster, or one CPU actor. A task or actor whose worker process dies is run again by Ray; a run that is
killed keeps every committed batch, and the next run finishes the rest.

Without ``--ray-address`` a local Ray is started on this machine; with one, the run joins that cluster (every node
needs this package installed, the files at the same paths, and the driver's pseudonym key: checked before the
run, and again by each decode task). Ray is an optional extra:
``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from db.config import pseudonym_key_fingerprint
from db.errors import CannotRun
from scoring.decoding import DecodeDataset, collate_decoded, decode_side, input_preprocessings
from scoring.pipeline import BatchScorer, Job, ScoredBatch, ScoringPass
from scoring.scorer import Scorer

log = logging.getLogger("cxr.score")

def ray_module():
    try:
        import ray
    except ImportError:
        raise CannotRun('the Ray engine needs Ray: pip install -e ".[ray]" (or --engine local)') from None
    return ray


class RayRunner:
    """Decodes and scores a run's jobs on Ray; the driver stores the scored batches as they arrive."""

    def __init__(self, address: str | None = None):
        self.address = address

    def __call__(self, scoring: ScoringPass, jobs: list[Job]) -> None:
        if jobs:
            connect(self.address)
            check_node_keys()
            scoring.store_scored(jobs, scored_batches(jobs, scoring))


def connect(address: str | None) -> None:
    """Join the cluster at ``address``, or start a local Ray; a Ray already started in this process is used."""
    ray = ray_module()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("; a cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token and its token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN) here" if address and address != "auto" else "")
        raise CannotRun(f"cannot start or join Ray{f' at {address}' if address else ''}: {exc}{hint}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # cxr-score logs its own progress
    context.print_on_execution_start = False


def model_actors() -> tuple[int, dict[str, Any], float]:
    """How many model actors, each one's resources, and the CPUs of a decode task: one actor per GPU of the
    cluster, else one CPU actor with a quarter of the cluster's CPUs (the rest decode); on a cluster of one CPU,
    half of it each, or the actor would leave none to decode with."""
    ray = ray_module()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    decode_cpus = 1.0 if cpus >= 2 else cpus / 2
    if gpus:
        return gpus, {"num_gpus": 1}, decode_cpus
    return 1, {"num_cpus": max(1, int(cpus) // 4) if cpus >= 2 else cpus / 2}, decode_cpus


def scored_batches(jobs: list[Job], scoring: ScoringPass) -> Iterator[ScoredBatch]:
    """The jobs' batches, decoded by Ray tasks and scored by the model actors, in whatever order they finish."""
    ray = ray_module()
    options, checkpoint = scoring.options, scoring.scorer.checkpoint
    challengers = scoring.batch_scorer.challenger_checkpoints()
    size = options.batch_size
    batches = [pickle.dumps((start, [job.stat.path for job in jobs[start:start + size]],
                             [sorted(job.scored_by) for job in jobs[start:start + size]]))
               for start in range(0, len(jobs), size)]
    actors, resources, decode_cpus = model_actors()
    on_gpu = "num_gpus" in resources
    log.info("Ray: %d batches of up to %d files; %d model actor(s) on %s", len(batches), size, actors,
             "GPUs" if on_gpu else "CPUs")
    # A run survives a dead worker: Ray Data runs a decode task again (max_retries -1) and restarts a model actor,
    # retrying its batch (max_restarts and max_task_retries -1), by default. The decode tasks may use every CPU of
    # the cluster: a task pool of another size than the actor pool also keeps Ray Data from fusing the decoding
    # into the model actors (which would decode there, between model batches, instead of in parallel tasks).
    decoders = max(2, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"batch": payload} for payload in batches], override_num_blocks=len(batches))
    dataset = dataset.map_batches(
        decode_batches, batch_size=1, num_cpus=decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=decoders if decoders != actors else decoders + 1),
        fn_kwargs={"preprocessings": input_preprocessings(checkpoint, challengers),
                   "read_timeout": options.read_timeout, "key_fingerprint": pseudonym_key_fingerprint(),
                   "min_side": decode_side(checkpoint, challengers) if options.reduced_decode else None})
    # The models go to the object store once; the actors get a reference to them inside a list, which Ray passes
    # as it is (a restarted actor fetches them again while this driver holds the reference).
    models = ray.put((checkpoint, [(version_id, scorer.checkpoint)
                                   for version_id, scorer in scoring.batch_scorer.challengers]))
    dataset = dataset.map_batches(
        ModelActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"models": [models], "device": "cuda" if on_gpu else "cpu",
                               "precision": options.precision},
        **resources)
    for row in dataset.iter_rows():
        yield pickle.loads(row["scored"])


class PseudonymKeyMismatch(Exception):
    """A node's pseudonym key is not the driver's: its films' patients would get other pseudonyms."""


def check_node_keys() -> None:
    """Every node of the cluster holds the driver's pseudonym key, or the run does not start: pseudonyms are
    computed where a film is decoded, and a node with another key would give its patients other ones."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    expected = pseudonym_key_fingerprint()
    probe = ray.remote(num_cpus=0)(node_key_fingerprint)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                       .remote() for node in ray.nodes() if node["Alive"]])
    wrong = [f"{host} ({fingerprint})" for host, fingerprint in answers if fingerprint != expected]
    if wrong:
        raise CannotRun(key_mismatch(", ".join(wrong), expected))


def node_key_fingerprint() -> tuple[str, str]:
    """A Ray task: this node's name and its pseudonym key's fingerprint (or what is wrong with its key)."""
    try:
        return socket.gethostname(), pseudonym_key_fingerprint()
    except ValueError as exc:
        return socket.gethostname(), str(exc)


def check_pseudonym_key(driver_fingerprint: str) -> None:
    """Also in each decode task, for a node that joined the cluster after the run started (see
    :func:`check_node_keys`)."""
    host, fingerprint = node_key_fingerprint()
    if fingerprint != driver_fingerprint:
        raise PseudonymKeyMismatch(key_mismatch(f"{host} ({fingerprint})", driver_fingerprint))


def key_mismatch(nodes: str, driver_fingerprint: str) -> str:
    return (f"the pseudonym key of Ray node(s) {nodes} is not the driver's ({driver_fingerprint}): the same patient "
            "would get another pseudonym there. Give every node the driver's key (CXR_PSEUDONYM_KEY, or a copy of "
            "its $CXR_HOME/pseudonym.key)")


def decode_batches(rows: dict[str, np.ndarray], preprocessings: Sequence[Any], read_timeout: float,
                   key_fingerprint: str, min_side: int | None) -> dict[str, np.ndarray]:
    """A Ray task: decode each batch of files as a local DataLoader worker does, indices into the run's jobs."""
    check_pseudonym_key(key_fingerprint)
    decoded = []
    for payload in rows["batch"]:
        start, paths, scored_by = pickle.loads(payload)
        files = DecodeDataset(paths, preprocessings, read_timeout, min_side)
        batch = collate_decoded([files[i] for i in range(len(paths))])
        batch = batch._replace(items=tuple((index + start, *rest) for index, *rest in batch.items))
        decoded.append(pickle.dumps((batch, scored_by)))
    return {"decoded": np.array(decoded, dtype=object)}


class ModelActor:
    """A Ray actor holding the run's models (the active version's and its challengers') on one device."""

    def __init__(self, models: list[Any], device: str, precision: str):
        import ray

        checkpoint, challengers = ray.get(models[0])
        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))
        target = torch.device(device)
        self.batch_scorer = BatchScorer(Scorer(checkpoint, target, precision),
                                        [(version_id, Scorer(c, target, precision)) for version_id, c in challengers])

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = []
        for payload in rows["decoded"]:
            batch, scored_by = pickle.loads(payload)
            result = self.batch_scorer.score(batch, [frozenset(done) for done in scored_by])
            scored.append(pickle.dumps(result))  # Scorer gives CPU tensors
        return {"scored": np.array(scored, dtype=object)}
