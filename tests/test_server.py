"""Server self-shutdown on real server processes: S1 (polling client), S2, S5, S12, and a safe exit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from jupyter_idle_ext.pytest_plugin import (
    EXIT_SLACK,
    TOKEN,
    ServerProcess,
    execute_over_zmq,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

SHORT = (
    "--IdleExtension.cull_idle_timeout=4",
    "--IdleExtension.server_idle_timeout=8",
    "--IdleExtension.shutdown_warning=3",
)


def run_cell(server: ServerProcess, kernel_id: str, code: str, timeout: float = 60) -> float:
    """Execute over ZMQ, as `jupyter console` would; returns the monotonic time it finished."""
    wait_until(lambda: server.connection_file(kernel_id).exists(), 30)
    reply = execute_over_zmq(server.connection_file(kernel_id), code, timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return time.monotonic()


def poll_like_jupyterlab(server: ServerProcess, stop: threading.Event) -> None:
    """What an open tab does when nobody is there: poll the REST API every second."""
    while not stop.is_set() and server.running:
        for path in ("/api/contents", "/api/sessions", "/api/kernels", "/api/status", "/api/me"):
            try:
                server.request("GET", path, timeout=2)
            except OSError:
                return
        stop.wait(1)


def test_never_used_server_shuts_down_after_start(start_server: Any) -> None:
    """S5: nobody ever opens it; it stops server_idle_timeout after start and exits 0."""
    server = start_server(*SHORT)
    assert server.wait_exit(30) == 0
    exited = time.monotonic()
    assert exited - server.started >= 8, exited - server.started
    assert exited - server.ready_at < 8 + 8, exited - server.ready_at
    log = server.log()
    assert "The server will shut down at" in log
    assert "Shutting down the server: idle 8 s >= server_idle_timeout 8 s" in log
    assert log.index("The server will shut down") < log.index("Shutting down the server")


def test_a_slow_start_is_not_idle_time(start_server: Any) -> None:
    """S5 with a start slowed by an extension that takes 6 s to load: the first user still gets
    the whole server_idle_timeout from when the server answers, not 2 s of it."""
    server = start_server(
        *SHORT,
        env={"PYTHONPATH": os.path.dirname(__file__), "SLOW_START_SECONDS": "6"},
        extensions={"slow_start_extension": True},
    )
    assert server.wait_exit(40) == 0
    exited = time.monotonic()
    log = server.log()
    assert "slow_start_extension: loaded" in log
    assert exited - server.ready_at >= 8 - 1, (exited - server.ready_at, log[-3000:])
    assert exited - server.ready_at < 8 + EXIT_SLACK, (exited - server.ready_at, log[-3000:])
    assert "Shutting down the server: idle 8 s >= server_idle_timeout 8 s" in log


def test_polling_client_does_not_keep_the_server(start_server: Any) -> None:
    """S1 without a browser: REST polling after the last execution keeps nothing alive."""
    server = start_server(*SHORT)
    kernel_id = server.start_kernel()
    stop = threading.Event()
    poller = threading.Thread(target=poll_like_jupyterlab, args=(server, stop), daemon=True)
    poller.start()
    try:
        ran = run_cell(server, kernel_id, "print('hello')")
        assert server.wait_exit(30) == 0
        after = time.monotonic() - ran
    finally:
        stop.set()
    assert 7 <= after < 8 + EXIT_SLACK, after
    log = server.log()
    assert "Culling idle kernel 'python3'" in log
    assert log.index("Culling idle kernel") < log.index("Shutting down the server")


def test_busy_kernel_keeps_the_server_until_the_cell_ends(start_server: Any) -> None:
    """S2: a silent cell longer than every timeout; the clocks start when it ends."""
    server = start_server(*SHORT)
    kernel_id = server.start_kernel()
    ended = run_cell(server, kernel_id, "import time; time.sleep(12)")
    assert server.running, "shut down while a cell was running"
    assert kernel_id in server.kernel_ids(), "busy kernel culled"
    assert server.wait_exit(30) == 0
    after = time.monotonic() - ended
    assert 7 <= after < 8 + EXIT_SLACK, after


def test_max_server_age_stops_an_active_server(start_server: Any) -> None:
    """S12: stopped at max_server_age although active, after its warning."""
    server = start_server(
        "--IdleExtension.max_server_age=12",
        "--IdleExtension.shutdown_warning=4",
        "--IdleExtension.server_idle_timeout=3600",
    )
    kernel_id = server.start_kernel()
    code = "import time\nfor i in range(60):\n    print(i, flush=True)\n    time.sleep(0.5)\n"
    client = threading.Thread(
        target=lambda: _ignore_errors(run_cell, server, kernel_id, code), daemon=True
    )
    client.start()
    assert server.wait_exit(40) == 0
    exited = time.monotonic()
    assert exited - server.started >= 12, exited - server.started
    log = server.log()
    assert exited - server.ready_at < 12 + 8, (exited - server.ready_at, log[-2000:])
    warned = log.index("The server will shut down at")
    assert "max_server_age" in log[warned : warned + 200]
    assert "Shutting down the server: age 12 s >= max_server_age 12 s" in log


def _ignore_errors(func: Any, *args: Any) -> None:
    # the server goes away under the client: that is the point of the test
    with contextlib.suppress(Exception):
        func(*args)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_shutdown_with_open_websockets_exits_zero_and_leaves_files(
    start_server: Any, tmp_path: Path
) -> None:
    """The shutdown stops kernels and terminals, never touches files, exits 0 with sockets open."""
    server = start_server(*SHORT)
    root = server.root
    (root / "notes.txt").write_text("precious\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.csv").write_text("a,b\n1,2\n")
    notebook = {
        "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "unsaved.ipynb").write_text(json.dumps(notebook))
    before = tree_digest(root)
    kernel_id = server.start_kernel()
    status, terminal = server.request("POST", "/api/terminals")
    assert status == 200, terminal

    async def hold_sockets() -> int:
        headers = {"Authorization": f"token {TOKEN}"}
        ws_url = server.url.replace("http", "ws")
        sockets = [
            await websocket_connect(
                _request(f"{ws_url}/api/kernels/{kernel_id}/channels", headers)
            ),
            await websocket_connect(
                _request(f"{ws_url}/terminals/websocket/{terminal['name']}", headers)
            ),
        ]
        # keep them open and answering pings until the server goes away
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, server.wait_exit, 40)
        for ws in sockets:
            ws.close()
        return code

    assert asyncio.run(hold_sockets()) == 0
    log = server.log()
    assert "Shutting down the server" in log
    assert tree_digest(root) == before


def _request(url: str, headers: dict[str, str]) -> Any:
    from tornado.httpclient import HTTPRequest

    return HTTPRequest(url, headers=headers)


def test_idle_server_stops_although_kernels_still_exist(start_server: Any) -> None:
    """Kernels that are never culled (cull_idle_timeout=0) do not keep an idle server."""
    server = start_server(
        "--IdleExtension.cull_idle_timeout=0",
        "--IdleExtension.server_idle_timeout=8",
        "--IdleExtension.shutdown_warning=0",
    )
    kernel_id = server.start_kernel()
    ran = run_cell(server, kernel_id, "x = 1")
    assert server.wait_exit(30) == 0
    assert 7 <= time.monotonic() - ran < 8 + EXIT_SLACK
    log = server.log()
    assert "Culling" not in log
    assert "The server will shut down" not in log, "shutdown_warning=0 must not warn"


def test_server_idle_timeout_zero_keeps_the_server(start_server: Any) -> None:
    """The disabled path: kernels are still culled, the server stays up."""
    server = start_server(
        "--IdleExtension.cull_idle_timeout=3",
        "--IdleExtension.server_idle_timeout=0",
    )
    kernel_id = server.start_kernel()
    run_cell(server, kernel_id, "x = 1")
    wait_until(lambda: kernel_id not in server.kernel_ids(), 20)
    time.sleep(6)
    assert server.running
    assert "Shutting down" not in server.log()


def test_activity_or_keepalive_cancels_a_warning_at_once(start_server: Any) -> None:
    server = start_server(
        "--IdleExtension.cull_idle_timeout=0",
        "--IdleExtension.server_idle_timeout=10",
        "--IdleExtension.shutdown_warning=7",
    )
    kernel_id = server.start_kernel()
    server.wait_log("The server will shut down at", 20)
    ran = run_cell(server, kernel_id, "x = 1")
    server.wait_log("Shutdown cancelled", 3)
    assert time.monotonic() - ran < 2.5
    # warned again once idle, and a keep-alive cancels it too
    wait_until(lambda: server.log().count("The server will shut down at") == 2, 20)
    code, _ = server.request("POST", "/api/idle/keepalive", {"seconds": 60})
    assert code == 200
    wait_until(lambda: server.log().count("Shutdown cancelled") == 2, 3)
    assert server.running
