"""Thread limits that spawned env workers inherit: set before the workers start, restored afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS")


@contextmanager
def worker_thread_limits(threads: int) -> Iterator[None]:
    """Within the block, spawned processes start torch's, MKL's and the llvmpipe renderer's pools at ``threads``
    threads (they read these variables once, at start-up); the parent's own values come back on exit."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    for k in _THREAD_VARS:
        os.environ[k] = str(threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
