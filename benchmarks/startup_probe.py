"""Time jupyter_idle_ext's own start-up code inside a real server, then stop the server.

Run by benchmark 7 as ``python benchmarks/startup_probe.py [jupyter server arguments]``: it
imports jupyter_server first (shared by every server, so not the extension's cost), times the
import of jupyter_idle_ext, wraps the three hooks jupyter_server calls on an extension (link,
load, start) with timers, starts the server with the extension enabled, prints one JSON line of
seconds per phase once the extension has started, and stops the server. The package is not
modified; only its hooks are wrapped in this process.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import jupyter_server.serverapp  # noqa: F401 -- loaded before the clock starts

started = time.perf_counter()
import jupyter_idle_ext.app as idle_app  # noqa: E402

spent: dict[str, float] = {"import": time.perf_counter() - started}
Extension: Any = idle_app.IdleExtension


def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

    return wrapper


Extension._link_jupyter_server_extension = timed("link", Extension._link_jupyter_server_extension)
Extension._load_jupyter_server_extension = classmethod(
    timed("load", Extension._load_jupyter_server_extension.__func__)
)
original_start = Extension._start_jupyter_server_extension


async def start(self: Any, serverapp: Any) -> None:
    began = time.perf_counter()
    await original_start(self, serverapp)
    spent["start"] = time.perf_counter() - began
    print(json.dumps(spent), flush=True)
    serverapp.io_loop.call_later(0.1, serverapp.stop)


Extension._start_jupyter_server_extension = start

if __name__ == "__main__":
    from jupyter_server.serverapp import ServerApp

    ServerApp.launch_instance(argv=sys.argv[1:])
