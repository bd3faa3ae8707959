"""A DataLoader worker never outlives the scorer or training run that started it: scoring.workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from scoring.workers import exit_with_parent
from tests.conftest import process_alive, wait_for_exit

FORK = multiprocessing.get_context("fork")


def _carry_on_after_the_check(parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    os._exit(3)  # reached only by a worker whose parent is the one named


@pytest.mark.parametrize(("named_parent", "exit_code"), [("real", 3), ("gone", 0)])
def test_a_worker_whose_scorer_is_already_gone_leaves_at_once(named_parent, exit_code):
    parent = os.getpid() if named_parent == "real" else 999_999_999  # no such process
    child = FORK.Process(target=_carry_on_after_the_check, args=(parent,))
    child.start()
    child.join(30)
    assert child.exitcode == exit_code


def _scorer_with_a_worker(pid_file: Path) -> None:
    scorer = os.getpid()
    if os.fork() == 0:  # the worker
        exit_with_parent(scorer)
        pid_file.write_text(str(os.getpid()))
        time.sleep(120)
        os._exit(0)
    time.sleep(120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_dies_with_a_scorer_killed_by_sigkill(tmp_path):
    pid_file = tmp_path / "worker.pid"
    scorer = FORK.Process(target=_scorer_with_a_worker, args=(pid_file,))
    scorer.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert process_alive(worker)
    os.kill(scorer.pid, signal.SIGKILL)
    scorer.join(30)
    wait_for_exit(worker, 10, "the worker of a killed scorer")
