"""S14: apps behind jupyter-server-proxy, with a stand-in app (standin_app.py) that pushes a
heartbeat like RStudio's or code-server's.

The person's input counts (client -> app websocket messages, requests that change something);
what the app sends, pings and the known clients' own keep-alives never do; the idle shutdown stops
the app's process. These need jupyter-server-proxy: they run in the venv that has it
(``-m apps``, see scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_idle_ext.pytest_plugin import (
    EXIT_SLACK,
    TOKEN,
    ServerProcess,
    require,
    wait_until,
)

pytestmark = [pytest.mark.apps, pytest.mark.timeout(120)]

STANDIN = Path(__file__).resolve().parent / "standin_app.py"
# the stand-in app, served under its own name and under the names of apps whose clients send
# keep-alives of their own (the built-in patterns apply to those names)
APPS = ("standin", "rstudio", "vscode")
# VS Code's remote protocol: a 13-byte header (type, id, ack, data length), then the data
VSCODE_KEEPALIVE = bytes([9]) + bytes(12)
VSCODE_ACK = bytes([3, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0])
VSCODE_REGULAR = bytes([1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]) + b"hi"


def require_proxy() -> None:
    require(
        importlib.util.find_spec("jupyter_server_proxy") is not None,
        "jupyter-server-proxy is not installed in this venv (bash scripts/test.sh sets up "
        ".venv-apps)",
    )


def server_processes(pid_dir: Path | None = None) -> dict[str, Any]:
    env = {"STANDIN_PID_DIR": str(pid_dir)} if pid_dir else {}
    return {
        name: {
            "command": [sys.executable, str(STANDIN), "--port={port}", f"--name={name}"],
            "environment": env,
            "timeout": 30,
        }
        for name in APPS
    }


@pytest.fixture
def proxied(tmp_path: Path) -> dict[str, Any]:
    require_proxy()
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": True}},
        "ServerProxy": {"servers": server_processes(tmp_path)},
    }


# -- in-process: what counts ------------------------------------------------------------------


def app_record(app: Any, name: str) -> Any:
    return app.tracker.records.get(("app", name))


async def websocket(jp_serverapp: Any, jp_http_port: int, path: str) -> Any:
    """A websocket to a proxied app, once the proxy is through to the app (its first heartbeat
    came): the proxy reads no client message before that, the app may still be starting."""
    url = f"ws://127.0.0.1:{jp_http_port}{jp_serverapp.base_url}{path}"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"}))
    first = await asyncio.wait_for(ws.read_message(), 30)
    assert first.startswith("heartbeat"), first
    return ws


async def roundtrip(ws: Any, message: str | bytes) -> None:
    """Send ``message`` to the stand-in app and wait for its echo: the proxy has then handled it
    (and counted it or not), whatever the load."""
    binary = isinstance(message, bytes)
    await ws.write_message(message, binary=binary)
    echo = message if binary else f"got {message}"
    while (reply := await asyncio.wait_for(ws.read_message(), 30)) != echo:
        assert reply is not None, "the websocket closed"


@pytest.fixture
def extra_server_config(proxied: dict[str, Any]) -> dict[str, Any]:
    return {**proxied, "IdentityProvider": {"token": TOKEN}}


async def test_what_counts_through_the_proxy(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, jp_http_port: int
) -> None:
    tracker = idle_app.tracker

    async def counted(name: str, act: Any) -> bool:
        # act() returns once the proxy has handled what it sent (a response, an echo), so the
        # answer is known then: no waiting, and a "not counted" cannot pass for a message the
        # proxy has not seen yet
        record = app_record(idle_app, name)
        before = record.last_activity if record else None
        await act()
        after = app_record(idle_app, name)
        return after is not None and after.last_activity != before

    # requests: only those that change something count, and not the known long-poll
    assert not await counted("standin", lambda: jp_fetch("standin", "page", method="GET"))
    assert await counted("standin", lambda: jp_fetch("standin", "input", method="POST", body="{}"))
    assert not await counted(
        "rstudio", lambda: jp_fetch("rstudio", "events", "get_events", method="POST", body="{}")
    )
    assert await counted(
        "rstudio", lambda: jp_fetch("rstudio", "rpc", "console_input", method="POST", body="{}")
    )

    # websockets: the app's heartbeat never counts, the client's messages do
    standin = await websocket(jp_serverapp, jp_http_port, "standin/ws")
    before = tracker.last_activity
    for _ in range(3):
        assert (await standin.read_message()).startswith("heartbeat")
    standin.ping(b"are you there")
    await asyncio.sleep(0.3)
    assert tracker.last_activity == before, "the app's heartbeat or a ping counted"

    assert await counted("standin", lambda: roundtrip(standin, "print('hi')"))

    # the known clients' own keep-alives do not count, their users' input does
    vscode = await websocket(jp_serverapp, jp_http_port, "vscode/ws")
    assert not await counted("vscode", lambda: roundtrip(vscode, VSCODE_KEEPALIVE))
    assert not await counted("vscode", lambda: roundtrip(vscode, VSCODE_ACK + VSCODE_KEEPALIVE))
    assert await counted("vscode", lambda: roundtrip(vscode, VSCODE_REGULAR))
    rstudio = await websocket(jp_serverapp, jp_http_port, "rstudio/ws")
    assert not await counted("rstudio", lambda: roundtrip(rstudio, "b"))
    assert await counted("rstudio", lambda: roundtrip(rstudio, "als -la\r"))

    doc = json.loads((await jp_fetch("api", "idle", method="GET")).body)
    reasons = {s["name"]: s["reason"] for s in doc["sources"] if s["kind"] == "app"}
    assert set(reasons) == {"standin", "rstudio", "vscode"}, reasons
    assert reasons["rstudio"].startswith("rstudio: input ") and reasons["rstudio"].endswith("ago")
    for ws in (standin, vscode, rstudio):
        ws.close()


@pytest.mark.parametrize(
    "idle_config",
    [{"proxy_keepalive_patterns": {"standin": {"requests": ["/input$"], "messages": ["^ping$"]}}}],
    indirect=True,
)
async def test_patterns_of_an_app_of_ones_own(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, jp_http_port: int
) -> None:
    await jp_fetch("standin", "input", method="POST", body="{}")
    ws = await websocket(jp_serverapp, jp_http_port, "standin/ws")
    await roundtrip(ws, "ping")
    assert app_record(idle_app, "standin") is None
    await roundtrip(ws, "real input")
    assert app_record(idle_app, "standin") is not None
    ws.close()


# -- real servers: the shutdown ---------------------------------------------------------------


def start_proxied_server(tmp_path: Path, *args: str) -> tuple[ServerProcess, Path]:
    require_proxy()
    pids = tmp_path / "pids"
    pids.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerProxy": {"servers": server_processes(pids)}})
    )
    root = tmp_path / "root"
    root.mkdir()
    server = ServerProcess(
        root,
        args=args,
        env={"JUPYTER_CONFIG_DIR": str(config)},
        extensions={"jupyter_server_proxy": True},
    )
    return server.wait_ready(), pids


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Client:
    """A browser tab on a proxied app: it keeps the websocket open and reads what the app
    pushes; ``typing`` says whether the person sends input."""

    def __init__(self, server: ServerProcess, path: str, keepalive: str | bytes | None = None):
        self.server = server
        self.path = path
        self.keepalive = keepalive
        self.typing = True
        self.last_input = 0.0
        self.heartbeats = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self.thread.start()

    async def run(self) -> None:
        url = self.server.url.replace("http", "ws") + self.path
        # it pings every second (pings never count); with no timeout on the pongs, which tornado
        # otherwise sets to the interval: the server answers none until the proxy has started the
        # app, seconds under load, and a browser's tab does not give up on it for that
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"}),
            ping_interval=1,
            ping_timeout=0,
        )

        async def read() -> None:
            while (message := await ws.read_message()) is not None:
                if isinstance(message, str) and message.startswith("heartbeat"):
                    self.heartbeats += 1

        reader = asyncio.ensure_future(read())
        while not self.stop.is_set() and not reader.done():
            if self.typing:
                await ws.write_message("some input")
                self.last_input = time.monotonic()
            elif self.keepalive is not None:
                ws.write_message(self.keepalive, binary=isinstance(self.keepalive, bytes))
            await asyncio.sleep(1)
        ws.close()


def test_input_keeps_the_server_the_apps_heartbeat_does_not_and_the_app_is_stopped(
    tmp_path: Path,
) -> None:
    server, pids = start_proxied_server(
        tmp_path,
        "--IdleExtension.server_idle_timeout=10",
        "--IdleExtension.shutdown_warning=3",
    )
    client = Client(server, "/standin/ws")
    wait_until(lambda: (pids / "standin.pid").exists(), 30)
    pid = int((pids / "standin.pid").read_text())
    started_typing = time.monotonic()
    while time.monotonic() - started_typing < 16:
        assert server.running, f"shut down while the person typed:\n{server.log()[-3000:]}"
        time.sleep(0.5)
    status, doc = server.request("GET", "/api/idle")
    assert status == 200
    assert any(s["name"] == "standin" and s["kind"] == "app" for s in doc["sources"]), doc
    # the person stops; the tab stays open and the app keeps pushing its heartbeat
    client.typing = False
    heartbeats = client.heartbeats
    assert server.wait_exit(30) == 0
    after = time.monotonic() - client.last_input
    client.stop.set()
    assert 9 <= after < 10 + EXIT_SLACK, after
    assert client.heartbeats > heartbeats + 10, "the app stopped pushing: the control is void"
    log = server.log()
    assert "Counting as activity:" in log and "jupyter-server-proxy (rstudio, standin" in log
    assert "server_idle_timeout 10 s, last activity: standin: input" in log
    assert "Stopping proxied app standin" in log
    assert process_gone(pid), "the proxied app's process outlived the server"


def test_an_idle_app_with_its_clients_keepalives_lets_the_server_stop(tmp_path: Path) -> None:
    """Negative control: RStudio's and VS Code's clients left open, sending only their own
    keep-alives and long-polls, while the apps push heartbeats."""
    server, pids = start_proxied_server(
        tmp_path, "--IdleExtension.server_idle_timeout=10", "--IdleExtension.shutdown_warning=0"
    )
    rstudio = Client(server, "/rstudio/ws", keepalive="b")
    vscode = Client(server, "/vscode/ws", keepalive=VSCODE_ACK + VSCODE_KEEPALIVE)
    for client in (rstudio, vscode):
        client.typing = False
    stop = threading.Event()

    def long_poll() -> None:
        while not stop.is_set() and server.running:
            try:
                server.request("POST", "/rstudio/events/get_events", {}, timeout=5)
            except OSError:
                return

    threading.Thread(target=long_poll, daemon=True).start()
    wait_until(lambda: (pids / "rstudio.pid").exists() and (pids / "vscode.pid").exists(), 30)
    code = server.wait_exit(40)
    stop.set()
    exited = time.monotonic()
    assert code == 0
    assert exited - server.started >= 10, exited - server.started
    assert exited - server.ready_at < 10 + 8, exited - server.ready_at
    assert rstudio.heartbeats > 5 and vscode.heartbeats > 5
    for name in ("rstudio", "vscode"):
        assert process_gone(int((pids / f"{name}.pid").read_text())), name
