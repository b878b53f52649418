"""Scheduling help for the threads on a control path (Linux; no torch, no privileges needed except for SCHED_FIFO).

On a busy machine a thread that sleeps (the control tick, a wait for a reply) can wake up to a scheduler tick late
(4 ms at HZ=250) while the running task finishes its slice. On EEVDF kernels (6.6+) a task with a *shorter* slice may
preempt at once, and any user may shorten a thread's slice (``sched_setattr`` with ``sched_runtime``). ZeroMQ moves
every message through its own I/O threads ("ZMQbg/..."), so they need the same treatment as the thread that waits
for the message, or a reply sits in a starved I/O thread (measured here: SCHED_FIFO on the control thread alone left
a period jitter p99 of 12-15 ms, because the arm and the inference worker, also real-time, starved every I/O thread).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import Any

SHORT_SLICE_S = 1e-4  # the shortest slice EEVDF grants
_log = logging.getLogger(__name__)
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def set_slice(tid: int = 0, slice_s: float = SHORT_SLICE_S) -> bool:
    """Give thread ``tid`` (0: the caller) a scheduler slice of ``slice_s`` (0: the kernel's default) and a 1 µs timer
    slack (caller only). False where unsupported: another OS, a policy other than SCHED_OTHER, no such syscall."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    number = _SYS_SCHED_SETATTR.get(os.uname().machine)
    if libc is None or number is None:
        return False
    try:
        if tid == 0:
            pr_set_timerslack = 29
            libc.prctl(pr_set_timerslack, ctypes.c_ulong(1000), 0, 0, 0)
        if os.sched_getscheduler(tid) != os.SCHED_OTHER:
            return False
        # struct sched_attr (v0, 48 bytes): u32 size, u32 policy, u64 flags, s32 nice, u32 priority,
        # u64 runtime (for SCHED_OTHER: the slice; 0 = the default), u64 deadline, u64 period
        attr = (ctypes.c_uint32 * 12)()
        attr[0], attr[1] = 48, os.SCHED_OTHER
        attr[4] = os.getpriority(os.PRIO_PROCESS, tid) & 0xFFFFFFFF
        ns = int(slice_s * 1e9)
        attr[6], attr[7] = ns & 0xFFFFFFFF, ns >> 32
        return libc.syscall(number, tid, ctypes.byref(attr), 0) == 0
    except (OSError, AttributeError, ValueError):
        return False


def set_fifo(tid: int, priority: int, who: str) -> bool:
    """Run thread ``tid`` (0: the caller) under SCHED_FIFO at ``priority`` (> 0); False and a warning when refused."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (OSError, AttributeError) as e:
        _log.warning("%s: could not switch to SCHED_FIFO priority %d (%s); continuing without", who, priority, e)
        return False


def zmq_io_threads() -> list[int]:
    """Thread ids of this process's ZeroMQ background threads (named "ZMQbg/...")."""
    tasks = Path("/proc/self/task")
    ids = []
    if tasks.is_dir():
        for task in tasks.iterdir():
            try:
                if (task / "comm").read_text().startswith("ZMQbg"):
                    ids.append(int(task.name))
            except (OSError, ValueError):
                continue
    return ids


def favour_io_threads(realtime_priority: int = 0) -> None:
    """Give this process's ZeroMQ I/O threads the short slice, or SCHED_FIFO at ``realtime_priority`` (> 0)."""
    for tid in zmq_io_threads():
        if not (realtime_priority > 0 and set_fifo(tid, realtime_priority, "ZeroMQ I/O thread")):
            set_slice(tid)
