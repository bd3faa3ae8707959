"""DataLoader workers live no longer than the process that started them (the scorer, or a training run)."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a scorer or training run killed with SIGKILL (cron's timeout, the OOM killer).
    PyTorch's worker watchdog reads the parent's pid only after the worker_init_fn, so a scorer killed while its
    workers start leaves them waiting for work forever (seen: two orphans of 565 MB each after the kill -9
    test). On Linux the kernel kills this process when its parent dies; a worker already orphaned leaves now."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # after prctl: a parent that dies from here on is covered by it
        os._exit(0)


def exits_with_this_process() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that ties each worker's life to the process creating the loader."""
    return functools.partial(_worker_exits_with_parent, os.getpid())


def _worker_exits_with_parent(parent_pid: int, _worker_id: int) -> None:
    exit_with_parent(parent_pid)
