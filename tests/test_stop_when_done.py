"""S17, "stop when done": during a long run the user asks to stop the server once it is over; it
stops shutdown_warning seconds after the run ends instead of server_idle_timeout later (the hour
of an idle GPU after an overnight run). Real servers and a real 40 s cell; the endpoint's
refusals in-process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_idle_ext.pytest_plugin import (
    EXIT_SLACK,
    TOKEN,
    ServerProcess,
    execute_over_zmq,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

WARNING = 5


def run_cell_in_background(server: ServerProcess, kernel_id: str, code: str) -> dict[str, float]:
    """Run a cell over ZMQ in a thread; the returned dict gets "ended" when it is done."""
    wait_until(lambda: server.connection_file(kernel_id).exists(), 30)
    times: dict[str, float] = {}

    def run() -> None:
        reply = execute_over_zmq(server.connection_file(kernel_id), code, timeout=120)
        assert reply["content"]["status"] == "ok"
        times["ended"] = time.monotonic()

    threading.Thread(target=run, daemon=True).start()
    return times


def cli(server: ServerProcess, *args: str) -> str:
    """`jupyter idle stop-when-done`, as the user at the server runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_idle_ext.cli",
            "stop-when-done",
            f"--url={server.url}",
            f"--token={TOKEN}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def test_the_server_stops_shortly_after_the_run_ends(start_server: Any) -> None:
    server = start_server(
        "--IdleExtension.server_idle_timeout=600",
        f"--IdleExtension.shutdown_warning={WARNING}",
        "--IdleExtension.cull_idle_timeout=600",
    )
    kernel_id = server.start_kernel()
    cell = run_cell_in_background(server, kernel_id, "import time; time.sleep(40)")

    def busy() -> bool:
        kernels = server.request("GET", "/api/idle")[1]["kernels"]
        return any(k["execution_state"] == "busy" for k in kernels)

    wait_until(busy, 20)
    said = cli(server)
    assert f"stops {WARNING:g} s after nothing works any more" in said, said
    _, doc = server.request("GET", "/api/idle")
    assert doc["stop_when_done"]["since"].endswith("Z")
    assert "busy" in doc["stop_when_done"]["waiting_for"], doc["stop_when_done"]
    assert doc["server"]["shutdown_at"] is None, "nothing is planned while the cell runs"
    while "ended" not in cell:
        assert server.running, "stopped before the run was done"
        time.sleep(0.5)
    assert server.wait_exit(WARNING + 20) == 0
    after = time.monotonic() - cell["ended"]
    # the warning's length after the run ended: not at once, not server_idle_timeout later
    assert WARNING - 1 <= after <= WARNING + EXIT_SLACK, (after, server.log()[-3000:])
    log = server.log()
    assert "Stop when done: the server shuts down 5 s after nothing works any more." in log
    assert "The server will shut down at" in log and "stop_when_done" in log
    assert "Shutting down the server: stop when done: nothing worked for 5 s" in log


def test_cancelled_it_waits_for_the_usual_timeout(start_server: Any) -> None:
    server = start_server(
        "--IdleExtension.server_idle_timeout=16",
        "--IdleExtension.shutdown_warning=3",
        "--IdleExtension.cull_idle_timeout=600",
    )
    kernel_id = server.start_kernel()
    # the cell runs until the test lets it end, so the cancel comes while it runs however slow
    # the CLI is on a loaded machine (after the cell, stop when done would stop the server 3 s
    # later)
    flag = server.root / "let-the-cell-end"
    code = f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.1)\n"
    cell = run_cell_in_background(server, kernel_id, code)
    cli(server)
    assert "cancelled" in cli(server, "--cancel")
    assert "ended" not in cell, "the cell ended before the cancel: the test proves nothing"
    assert "was not asked for" in cli(server, "--cancel")
    flag.touch()
    wait_until(lambda: "ended" in cell, 30)
    time.sleep(3 + 4)
    assert server.running, "stopped when done although that was cancelled"
    _, doc = server.request("GET", "/api/idle")
    assert doc["stop_when_done"] is None and doc["server"]["rule"] == "server_idle_timeout"
    assert server.wait_exit(30) == 0
    assert 16 - 1 <= time.monotonic() - cell["ended"] <= 16 + EXIT_SLACK
    log = server.log()
    assert "Stop when done cancelled" in log
    actions = [e["action"] for e in doc["recent"]]
    assert actions[:2] == ["stop_when_done_cancelled", "stop_when_done_requested"], actions


async def test_stop_when_done_refuses_bodies_and_strangers(
    idle_app: Any, jp_fetch: Any, http_server_client: Any
) -> None:
    for body, code in (('{"seconds": 5}', 400), ("x" * 5000, 413), ("not json", 400)):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("api", "idle", "stop-when-done", method="POST", body=body)
        assert e.value.code == code, (body[:20], e.value)
    assert idle_app.tracker.stop_when_done is None
    for method, body in (("POST", "{}"), ("DELETE", None)):
        with pytest.raises(HTTPClientError) as e:
            await http_server_client.fetch(
                "/a%40b/api/idle/stop-when-done", method=method, body=body
            )
        assert e.value.code == 403
    r = await jp_fetch("api", "idle", "stop-when-done", method="POST", body="{}")
    assert json.loads(r.body)["stop_when_done"]["delay"] == 60  # shutdown_warning is 0 here
    r = await jp_fetch("api", "idle", "stop-when-done", method="DELETE")
    assert json.loads(r.body) == {"cancelled": True}


@pytest.mark.parametrize(
    "idle_config", [{"server_idle_timeout": 600.0, "shutdown_warning": 60.0}], indirect=True
)
async def test_saves_while_it_waits_move_the_time_without_warning_again(
    idle_app: Any, jp_fetch: Any, caplog: Any
) -> None:
    """Stopping when done, the server is in its warning from the moment nothing works; each
    save pushes the time a little later. One warning, then the moves logged: no new warning
    event (the page would pop a new notification each time)."""
    caplog.set_level("INFO", logger=idle_app.log.name)
    await jp_fetch("api", "idle", "stop-when-done", method="POST", body="{}")

    async def warned() -> int:
        r = await jp_fetch("api", "idle", method="GET")
        recent = json.loads(r.body)["recent"]
        return sum(e["action"] == "shutdown_warned" for e in recent)

    await wait_for(warned, 5)
    for i in range(3):
        await asyncio.sleep(1.5)  # each save moves the time by more than a second
        body = json.dumps({"type": "file", "format": "text", "content": str(i)})
        await jp_fetch("api", "contents", "notes.md", method="PUT", body=body)
    await wait_for(lambda: caplog.text.count("The shutdown moved to") >= 3, 5)
    assert await warned() == 1
    assert caplog.text.count("The server will shut down at") == 1, caplog.text
    r = await jp_fetch("api", "idle", method="GET")
    doc = json.loads(r.body)
    assert doc["server"]["rule"] == "stop_when_done" and doc["server"]["action"] == "warn"
