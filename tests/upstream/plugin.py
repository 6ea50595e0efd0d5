"""A pytest plugin for jupyter_server's own test suite: every ServerApp under test runs jupyter_idle_ext.

``tests/upstream/run.py`` loads it with ``-p plugin``. With ``IDLE_EXT_UPSTREAM=1`` each server
links and loads the extension as an installed one would be, and runs its start hook once the
server is started (pytest-jupyter's ``jp_serverapp`` calls ``start_app()``, which does not start
extensions); with ``IDLE_EXT_UPSTREAM=0`` nothing changes, for the comparison run. At the end it
writes each test's outcome and how many servers started the extension, so a run where the
injection silently did nothing cannot pass for a compatible one.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from jupyter_server.serverapp import ServerApp

ENABLED = os.environ.get("IDLE_EXT_UPSTREAM") == "1"
# one file per pytest-xdist worker (or for the whole run without it)
REPORT = os.environ.get("IDLE_EXT_UPSTREAM_REPORT", "")
if REPORT:
    REPORT += "." + os.environ.get("PYTEST_XDIST_WORKER", "main") + ".json"
NAME = "jupyter_idle_ext"

started: list[str] = []
outcomes: dict[str, str] = {}


def _idle_app(serverapp: Any) -> Any:
    manager = getattr(serverapp, "extension_manager", None)
    point = manager.extension_points.get(NAME) if manager is not None else None
    return None if point is None else point.app


if ENABLED:
    _init_server_extensions = ServerApp.init_server_extensions
    _start_app = ServerApp.start_app

    def init_server_extensions(self: Any) -> None:
        if NAME not in self.jpserver_extensions:
            self.jpserver_extensions = {**self.jpserver_extensions, NAME: True}
        _init_server_extensions(self)

    def start_app(self: Any) -> None:
        _start_app(self)
        app = _idle_app(self)
        if app is None:
            return  # a test that disabled it
        start = app._start_jupyter_server_extension(self)
        loop = asyncio.get_event_loop()
        if loop.is_running():
            task = loop.create_task(start)
            task.add_done_callback(lambda t: t.cancelled() or t.result())
        else:
            loop.run_until_complete(start)
        started.append(self.__class__.__name__)

    ServerApp.init_server_extensions = init_server_extensions  # type: ignore[method-assign]
    ServerApp.start_app = start_app  # type: ignore[method-assign]


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        outcomes[report.nodeid] = "failed"
    elif report.skipped and report.when in ("setup", "call"):
        outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(
                {"enabled": ENABLED, "servers_started": len(started), "outcomes": outcomes}, f
            )
