"""Count the CPU time jupyter_idle_ext spends per kernel message inside a real server.

Run by benchmark 2 as ``python benchmarks/message_probe.py [jupyter server arguments]``: it wraps,
in this process only, the trait observers the extension puts on each kernel (``last_activity``,
which jupyter_server sets on every IOPub message, and ``execution_state``) with the thread's CPU
clock, and answers ``GET /bench/message-probe`` with the totals so far::

    {"calls": 20004, "cpu_ns": 15400000, "overhead_ns": 180, "iopub": 20000}

``cpu_ns`` has the clock's own cost (``overhead_ns`` per call, measured at start) taken out;
``iopub`` counts the ``last_activity`` changes, one per IOPub message the server received.
The whole-process figures of benchmark 2 cannot resolve a few percent; this can.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

from tornado import web

import jupyter_idle_ext.app as idle_app
import jupyter_idle_ext.sources.kernels as activity

totals = {"calls": 0, "cpu_ns": 0, "iopub": 0}


def _clock_overhead() -> int:
    clock = time.thread_time_ns
    best = []
    for _ in range(20):
        began = clock()
        for _ in range(1000):
            clock()
        best.append((clock() - began) // 1001)
    return int(min(best))


OVERHEAD = _clock_overhead()


def timed(observer: Callable[[Any], None], iopub: bool) -> Callable[[Any], None]:
    clock = time.thread_time_ns

    def wrapper(change: Any) -> None:
        began = clock()
        try:
            observer(change)
        finally:
            totals["cpu_ns"] += max(0, clock() - began - OVERHEAD)
            totals["calls"] += 1
            if iopub:
                totals["iopub"] += 1

    return wrapper


original_attach = activity.KernelWatcher._attach


def attach(self: Any, kernel_id: str) -> None:
    original_attach(self, kernel_id)
    kernel, on_activity, on_state, on_restart = self._attached[kernel_id]
    kernel.unobserve(on_activity, names=["last_activity"])
    kernel.unobserve(on_state, names=["execution_state"])
    wrapped_activity, wrapped_state = timed(on_activity, True), timed(on_state, False)
    kernel.observe(wrapped_activity, names=["last_activity"])
    kernel.observe(wrapped_state, names=["execution_state"])
    self._attached[kernel_id] = (kernel, wrapped_activity, wrapped_state, on_restart)


activity.KernelWatcher._attach = attach  # type: ignore[method-assign]


class ProbeHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish(json.dumps({**totals, "overhead_ns": OVERHEAD}))


Extension: Any = idle_app.IdleExtension
original_start = Extension._start_jupyter_server_extension


async def start(self: Any, serverapp: Any) -> None:
    await original_start(self, serverapp)
    serverapp.web_app.add_handlers(".*$", [("/bench/message-probe", ProbeHandler)])


Extension._start_jupyter_server_extension = start

if __name__ == "__main__":
    from jupyter_server.serverapp import ServerApp

    ServerApp.launch_instance(argv=sys.argv[1:])
