"""The test harness of jupyter_idle_ext, as a pytest plugin: fixtures and the real parts the tests
drive. A test suite loads it with ``pytest_plugins = ["jupyter_idle_ext.pytest_plugin"]``, as this
project's tests/conftest.py does (an extension that registers a source through
``jupyter_idle_ext.sources.api`` can test against it the same way). Nothing here is imported by
the server itself.

- In-process: ``idle_app`` (the running extension in pytest-jupyter's ``jp_serverapp``, options
  from ``idle_config``), ``start_kernel``, ``ready_client``, ``run``, ``wait_for``.
- Real server processes: ``start_server`` and ``ServerProcess`` (its log, exit code and clock),
  ``execute_over_zmq``, ``wait_until``, ``free_port``.
- Real browsers: Debian's Chromium driven by Playwright (``browsers``, ``lab_server``,
  ``open_page``). Never ``playwright install``, which downloads a browser.
- A real Jupyter Enterprise Gateway or Kernel Gateway (``Gateway``, ``KernelSocket``).
- A real JupyterHub (``Hub``, ``hub_factory``).

On CI (``$CI`` true) a part that is missing fails the test (``require``); elsewhere it skips it.
The parts installed next to the project (configurable-http-proxy, Enterprise Gateway's venv) are
found under the project's root (``repo_root``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest
from tornado.httpclient import HTTPClientError

TOKEN = "test-token-3f2a"

# what a real server's exit may take after it decided to stop, on a loaded 2-core CI machine:
# stopping its kernels and the process's own end (measured up to 6.3 s there; 0.4 s when idle).
# Bounds that wait for an exit add it; the lower bounds and the log's reason pin the rule itself.
EXIT_SLACK = 8.0

_ROOT: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _ROOT
    _ROOT = Path(config.rootpath)


def repo_root() -> Path:
    """The project's checkout: pytest's rootdir, else (a benchmark) the checkout this module is
    in when installed editable, else the working directory."""
    if _ROOT is not None:
        return _ROOT
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


# -- the harness: waiting, ports, what CI must have -----------------------------------------------


def on_ci() -> bool:
    """The one reading of $CI: on CI a missing dependency fails a test instead of skipping it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def require(available: bool, problem: str) -> None:
    """Fail the test on CI and skip it elsewhere, when something it needs is missing."""
    import pytest

    if available:
        return
    if on_ci():
        pytest.fail(f"needed on CI: {problem}")
    pytest.skip(problem)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_ports_given: set[int] = set()
_random = random.SystemRandom()


def free_port() -> int:
    """A port nothing listens on now, below the kernel's ephemeral range. Kernels, the Hub's
    spawner and every other bind to port 0 take their ports from that range: a port taken from it
    here and bound later by a Hub's proxy could meanwhile go to a kernel of another test worker
    (a CI run's Hub probe once met a kernel's ZMQ socket on its proxy's port)."""
    low = _ephemeral_low()
    candidates = range(max(1024, low - 12000), low)
    tries = 200 if len(candidates) >= 1000 else 0  # else: the old way, from the range itself
    for port in (_random.choice(candidates) for _ in range(tries)):
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logged_at(log: str, text: str, monotonic: bool = True) -> float | None:
    """When a server first logged a line holding ``text``: on this process's monotonic clock, or
    (``monotonic=False``) as a wall-clock timestamp, which a server log's times are (local time,
    to the millisecond)."""
    match = re.search(rf"^\[\w (\S+ \S+) [^\]]*\].*{re.escape(text)}", log, re.M)
    if match is None:
        return None
    wall = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return wall - (time.time() - time.monotonic()) if monotonic else wall


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> tuple[int, Any]:
    """An HTTP request with a JSON body; its status and JSON answer (text when not JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def kernel_listing(ask: Callable[[], tuple[int, Any]]) -> list[dict[str, Any]]:
    """A ``GET api/kernels`` answer (``ask`` gives its status and JSON). jupyter_server answers a
    listing that comes as a kernel starts with a 500 (the kernel is listed a moment before its
    ``last_activity`` is set, cf. enterprise_gateway#1395): that answer is asked again."""
    for _ in range(10):
        status, models = ask()
        if status != 500:
            break
        time.sleep(0.2)
    assert status == 200, (status, models)
    return list(models)


def end_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc`` if it still runs; kill it when it has not ended 15 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kernel_message(
    msg_type: str, content: dict[str, Any], *, user: str, session: str, channel: str = "shell"
) -> dict[str, Any]:
    """A message to a kernel as a page sends it over the kernel websocket (JSON)."""
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": user,
        "session": session,
        "date": datetime.now(timezone.utc).isoformat(),
        "version": "5.3",
    }
    return {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


def execute_request(
    code: str, *, user: str, session: str, store_history: bool = True
) -> dict[str, Any]:
    """A cell's execute_request (``kernel_message``)."""
    content = {
        "code": code,
        "silent": False,
        "store_history": store_history,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    return kernel_message("execute_request", content, user=user, session=session)


class ServerProcess:
    """A ``jupyter server`` subprocess on a loopback port, with or without jupyter_idle_ext."""

    def __init__(
        self,
        root: Path,
        *,
        extension: bool = True,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        extensions: dict[str, bool] | None = None,
        launcher: Path | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / f"server-{self.port}.log"
        enabled = {"jupyter_idle_ext": extension, **(extensions or {})}
        # a script run instead of ``python -m jupyter_server`` (fault injection)
        start = [str(launcher)] if launcher else ["-m", "jupyter_server"]
        self.cmd = [
            sys.executable,
            *start,
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.jpserver_extensions={enabled!r}",
            *args,
        ]
        self.runtime_dir = root.parent / f"runtime-{self.port}"
        full_env = dict(os.environ)
        full_env["JUPYTER_RUNTIME_DIR"] = str(self.runtime_dir)
        full_env.update(env or {})
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 -- closed in stop()
        self.started = time.monotonic()
        # when it first answered: time-bound checks count their slack from here, so a start-up
        # slowed by a loaded machine does not eat it (the server's own clocks start before this)
        self.ready_at = self.started
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=root,
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    # -- life cycle --------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                return self.request("GET", "/api/status", track=False)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout)
        self.ready_at = time.monotonic()
        return self

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server still running after {timeout} s:\n{self.log()[-3000:]}"
            ) from None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        end_process(self.proc)
        self._log_file.close()

    def log(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float) -> str:
        try:
            return str(wait_until(lambda: text in self.log() and self.log(), timeout))
        except AssertionError:
            raise AssertionError(
                f"{text!r} not in the log within {timeout} s:\n{self.log()[-4000:]}"
            ) from None

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        track: bool = True,
        token: str | None = TOKEN,
        timeout: float = 10,
    ) -> tuple[int, Any]:
        """A REST request; ``track=False`` adds ``?no_track_activity`` like a status probe."""
        url = self.url + path
        if not track:
            url += ("&" if "?" in url else "?") + "no_track_activity=1"
        return http_json(method, url, body, token, timeout)

    def start_kernel(self, name: str = "python3") -> str:
        status, model = self.request("POST", "/api/kernels", {"name": name})
        assert status == 201, (status, model)
        return str(model["id"])

    def kernel_models(self) -> list[dict[str, Any]]:
        """The kernel models, asked without activity."""
        return kernel_listing(lambda: self.request("GET", "/api/kernels", track=False))

    def kernel_ids(self) -> list[str]:
        return [m["id"] for m in kernel_listing(lambda: self.request("GET", "/api/kernels"))]

    def connection_file(self, kernel_id: str) -> Path:
        """The kernel's connection file, for clients that talk ZMQ to it directly."""
        return self.runtime_dir / f"kernel-{kernel_id}.json"


def execute_over_zmq(connection_file: Path, code: str, timeout: float = 60) -> dict[str, Any]:
    """Run code on a kernel as `jupyter console` would: straight over ZMQ, not through the server."""
    from jupyter_client.blocking.client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    # no heartbeat: a client of its own takes one late heartbeat (a loaded machine) for a dead
    # kernel and gives up; without it, readiness is the kernel_info reply alone
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=30)
        reply: dict[str, Any] = client.execute_interactive(
            code, timeout=timeout, output_hook=lambda m: None
        )
        return reply
    finally:
        client.stop_channels()


# -- an in-process server (pytest-jupyter) --------------------------------------------------------

# Timeouts short enough for a fast suite, long enough for a kernel to start on a busy CI machine.
# In-process servers never shut down (that would end pytest): server rules are tested on real
# server processes (start_server).
IN_PROCESS = {
    "cull_idle_timeout": 3.0,
    "cull_interval": 300.0,
    "server_idle_timeout": 0.0,
    "max_server_age": 0.0,
}


@pytest.fixture
def idle_config(request: Any) -> dict[str, Any]:
    """The IdleExtension options of the in-process server; a test changes some with
    ``@pytest.mark.parametrize("idle_config", [{...}], indirect=True)``."""
    return {**IN_PROCESS, **getattr(request, "param", {})}


@pytest.fixture
def extra_server_config(request: Any) -> dict[str, Any]:
    """More configuration of the in-process server (sections other than IdleExtension), set
    with ``@pytest.mark.parametrize("extra_server_config", [{...}], indirect=True)``."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(
    idle_config: dict[str, Any], extra_server_config: dict[str, Any]
) -> dict[str, Any]:
    """pytest-jupyter's server configuration: jupyter_idle_ext (with ``idle_config``) and
    jupyter_server_terminals enabled, plus ``extra_server_config``."""
    extra = dict(extra_server_config)
    server = dict(extra.pop("ServerApp", {}))
    extensions = server.pop("jpserver_extensions", {})
    return {
        "ServerApp": {
            "jpserver_extensions": {
                "jupyter_idle_ext": True,
                "jupyter_server_terminals": True,
                **extensions,
            },
            **server,
        },
        "IdleExtension": idle_config,
        **extra,
    }


@pytest.fixture
def idle_app(jp_serverapp: Any, jp_asyncio_loop: Any) -> Any:
    """The running extension, its background check started as a real server would."""
    app = jp_serverapp.extension_manager.extension_points["jupyter_idle_ext"].app
    # caplog sees our logger through the root logger (pytest before 9 attaches nowhere else)
    app.log.propagate = True
    jp_asyncio_loop.run_until_complete(app._start_jupyter_server_extension(jp_serverapp))
    yield app
    jp_asyncio_loop.run_until_complete(app.stop_extension())


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll (sync or async) ``predicate`` until truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# -- kernels of the in-process server -------------------------------------------------------------


async def start_kernel(jp_fetch: Any, name: str = "python3") -> str:
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
    kernel_id = json.loads(r.body)["id"]
    return str(kernel_id)


async def exists(jp_fetch: Any, *path: str) -> bool:
    """Does ``GET path`` of the in-process server find it (a kernel, a terminal)?"""
    try:
        await jp_fetch(*path, method="GET")
        return True
    except HTTPClientError as e:
        assert e.code == 404
        return False


async def kernel_exists(jp_fetch: Any, kernel_id: str) -> bool:
    return await exists(jp_fetch, "api", "kernels", kernel_id)


async def ready_client(app: Any, kernel_id: str) -> Any:
    """A client talking ZMQ to the kernel directly, as `jupyter console` or VS Code do."""
    kernel = app.serverapp.kernel_manager.get_kernel(kernel_id)
    client = kernel.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return client


async def run(client: Any, code: str, timeout: float = 60) -> None:
    reply = await client.execute_interactive(code, timeout=timeout, output_hook=lambda m: None)
    assert reply["content"]["status"] == "ok", reply["content"]


async def kernel_gone(jp_fetch: Any, kernel_id: str) -> bool:
    return not await kernel_exists(jp_fetch, kernel_id)


class CulledAt(logging.Handler):
    """Notes the monotonic time at which the culler logs that it culls a kernel: the decision,
    apart from how long the kernel then takes to shut down on a loaded machine."""

    def __init__(self, kernel_id: str) -> None:
        super().__init__()
        self.kernel_id = kernel_id
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.at is None and message.startswith("Culling") and self.kernel_id in message:
            self.at = time.monotonic()


@contextlib.contextmanager
def culled_at(app: Any, kernel_id: str) -> Iterator[CulledAt]:
    handler = CulledAt(kernel_id)
    app.log.addHandler(handler)
    try:
        yield handler
    finally:
        app.log.removeHandler(handler)


@pytest.fixture
def start_server(tmp_path: Any) -> Any:
    """Start real ``jupyter server`` processes (``ServerProcess``); all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, extension: bool = True, **kwargs: Any) -> ServerProcess:
        root = tmp_path / f"root{len(started)}"
        root.mkdir()
        server = ServerProcess(root, extension=extension, args=args, **kwargs)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


# -- real browsers --------------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(problem: str) -> NoReturn:
    if on_ci():
        pytest.fail(f"the browser test must run on CI: {problem}")
    pytest.skip(problem)


def playwright_and_chromium() -> tuple[Any, str]:
    """Playwright's sync API and Debian's chromium; on CI a missing one fails the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright; never `playwright install`)")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("no `chromium` on PATH (apt-get install -y chromium)")
    return sync_playwright, chromium


def launch(playwright: Any, chromium: str) -> Any:
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)


@contextlib.contextmanager
def browsers() -> Iterator[Callable[[], Any]]:
    """``new_browser()`` launches a headless Chromium (each one a browser of its own); all are
    closed at the end of the block. On CI a missing Playwright or Chromium fails the test."""
    sync_playwright, chromium = playwright_and_chromium()
    with sync_playwright() as p:
        yield lambda: launch(p, chromium)


def lab_server(
    base: Path,
    *,
    extension: bool = True,
    args: tuple[str, ...] = (),
    settings: dict[str, dict[str, Any]] | None = None,
    files: dict[str, str] | None = None,
    notebook: bool = False,
) -> ServerProcess:
    """A JupyterLab server (not yet ready) with workspaces and settings of its own.

    ``settings`` maps a plugin id ("@jupyterlab/docmanager-extension:plugin") to its settings;
    ``notebook`` serves Notebook 7 too.
    """
    root = base / "root"
    root.mkdir(parents=True)
    for name, content in (files or {}).items():
        (root / name).write_text(content)
    settings_dir = base / "settings"
    for plugin, values in (settings or {}).items():
        package, name = plugin.split(":")
        target = settings_dir / package / f"{name}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    # JupyterLab keeps workspaces and settings in ~/.jupyter; keep each server's to itself
    env = {
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
    }
    extensions = {"jupyterlab": True, **({"notebook": True} if notebook else {})}
    return ServerProcess(root, extension=extension, args=args, env=env, extensions=extensions)


INDICATOR = "#jupyter-idle-ext-indicator"


def open_page(browser: Any, server: ServerProcess, path: str, indicator: bool = True) -> Any:
    """A page of ``server`` at ``path`` (the token in its URL) in a context of its own, once the
    extension's indicator shows (unless ``indicator`` is False)."""
    page = browser.new_context(viewport={"width": 1200, "height": 700}).new_page()
    page.goto(f"{server.url}/{path}?token={TOKEN}", timeout=120_000)
    if indicator:
        page.locator(INDICATOR).wait_for(timeout=60_000)
    return page


# -- a real Enterprise Gateway or Kernel Gateway --------------------------------------------------


def gateway_venv() -> Path:
    """Where scripts/test.sh installs Enterprise Gateway."""
    return repo_root() / ".venv-gateway"


class Gateway:
    """``jupyter enterprisegateway`` (``kind="enterprise"``) or ``jupyter kernelgateway``
    (``kind="kernel"``) on a loopback port; ``kernels()`` reads its own list."""

    def __init__(self, workdir: Path, kind: str = "enterprise") -> None:
        self.port = free_port()
        if kind == "enterprise":
            program = gateway_venv() / "bin" / "jupyter-enterprisegateway"
            require(program.exists(), f"Enterprise Gateway is not installed in {gateway_venv()}")
            args = [
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--port_retries=0",
                "--EnterpriseGatewayApp.list_kernels=True",
                # its default refuses root, which CI runs as
                "--EnterpriseGatewayApp.unauthorized_users={'nobody'}",
            ]
        else:
            program = Path(sys.executable).parent / "jupyter-kernelgateway"
            require(program.exists(), "Kernel Gateway is not installed (the test extra)")
            args = [
                "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.port}",
                "--KernelGatewayApp.port_retries=0",
                "--JupyterWebsocketPersonality.list_kernels=True",
            ]
        self.kind = kind
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gateway-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 -- closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
        self.proc = subprocess.Popen(
            [str(program), *args],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._ready, 60)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited ({self.proc.returncode}):\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/kernelspecs", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kernels(self) -> list[str]:
        """The gateway's kernel ids."""
        listing = kernel_listing(lambda: http_json("GET", f"{self.url}/api/kernels", timeout=10))
        return [k["id"] for k in listing]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        end_process(self.proc)
        self._log.close()


class KernelSocket:
    """A tab's websocket to a kernel through the server (the plain JSON protocol the server
    speaks for a gateway's kernels)."""

    def __init__(self, server_url: str, kernel_id: str) -> None:
        self.session = uuid.uuid4().hex
        url = server_url.replace("http", "ws", 1)
        import websocket

        self.ws = websocket.create_connection(
            f"{url}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {TOKEN}"],
            timeout=30,
        )

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        message = kernel_message(
            msg_type, content, user="test", session=self.session, channel=channel
        )
        self.ws.send(json.dumps(message))
        return str(message["header"]["msg_id"])

    def wait_reply(
        self, msg_id: str, msg_type: str, timeout: float = 60, state: str | None = None
    ) -> dict[str, Any]:
        """The first message of ``msg_type`` (a status: in ``state``) that ``msg_id`` caused;
        TimeoutError if none comes within ``timeout``.

        Frames are read one at a time, the deadline checked after each: websocket-client answers
        the server's pings inside ``recv()``, and each ping would start its timeout again."""
        import websocket

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {msg_type} to {msg_id} within {timeout} s")
            self.ws.settimeout(left)
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                continue
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError(f"the kernel's websocket closed waiting for {msg_type}")
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue  # a ping (websocket-client has answered it) or a pong
            msg = json.loads(frame.data)
            if (
                msg["msg_type"] == msg_type
                and msg["parent_header"].get("msg_id") == msg_id
                and (state is None or msg["content"].get("execution_state") == state)
            ):
                return dict(msg)

    def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        return self.wait_reply(msg_id, "execute_reply", timeout)

    def kernel_info(self) -> dict[str, Any]:
        return self.wait_reply(self.send("kernel_info_request", {}), "kernel_info_reply")

    def close(self) -> None:
        self.ws.close()


# -- a real JupyterHub ----------------------------------------------------------------------------
# A real JupyterHub for tests: the Hub, configurable-http-proxy, single-user servers and services.
#
# ``Hub`` writes a ``jupyterhub_config.py`` into a temporary directory and runs
# ``python -m jupyterhub`` there: loopback ports, a sqlite database, the dummy authenticator,
# ``SimpleLocalProcessSpawner`` starting ``jupyterhub-singleuser`` (with or without
# jupyter_idle_ext), a test-driver service whose token the harness uses for the Hub REST API, and
# optionally jupyterhub-idle-culler as a Hub-managed service. A test drives it as a deployment
# would be driven: the Hub REST API with a service token, the single-user servers through the
# proxy with a user's token (REST and kernel websockets, as a browser would), and reads the Hub's
# log, which holds the output of the proxy, services and every single-user server (local
# processes inherit the Hub's stdout/stderr).
#
# Nothing is mocked. A module uses it through a fixture::
#
#     @pytest.fixture
#     def start_hub(tmp_path):
#         with hub_factory(tmp_path) as start:
#             yield start
#
#     def test_something(start_hub):
#         hub = start_hub(environment={"JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": "20"})
#         hub.create_user("alice")
#         hub.start_server("alice")
#         hub.execute("alice", "1 + 1")

#: the token of a service with the role `jupyter idle hub-status` needs (README, Deploying)
STATUS_TOKEN = "hub-idle-status-token-41d7"
STATUS_SERVICE = "idle-status"

#: the test driver's service token (the Hub REST API with admin-like scopes)
DRIVER_TOKEN = "hub-test-driver-token-8c1e"
DRIVER_SERVICE = "test-driver"
CULLER_SERVICE = "idle-culler"

#: what the test driver may do: users (create, read, tokens), servers (start, stop, read state)
DRIVER_SCOPES = ["admin:users", "admin:servers", "admin:groups", "tokens", "read:hub"]

#: jupyterhub-idle-culler 2.0's README: the scopes it needs (no --cull-users here)
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]

#: JupyterHub 6's default for the server token ($JUPYTERHUB_API_TOKEN): the ``server`` role
DEFAULT_SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server"]

#: the server token scopes that also let a server stop itself through the Hub at once
#: (``DELETE /hub/api/users/{name}/server``) and read its own model
SELF_STOP_SERVER_TOKEN_SCOPES = [
    *DEFAULT_SERVER_TOKEN_SCOPES,
    "delete:servers!server",
    "read:servers!server",
]


#: where scripts/test.sh installs configurable-http-proxy@5, then where the brief asked for it
def chp_candidates() -> tuple[Path, ...]:
    root = repo_root()
    return (
        root / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy",
        root / ".ci-node" / "node_modules" / ".bin" / "configurable-http-proxy",
    )


def find_chp() -> str | None:
    """The configurable-http-proxy binary: the project's local npm install, else ``$PATH``."""
    for candidate in chp_candidates():
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("configurable-http-proxy")


def require_chp() -> str:
    """configurable-http-proxy, or fail the test under CI=true and skip it elsewhere."""
    import pytest

    chp = find_chp()
    if chp:
        return chp
    reason = (
        "configurable-http-proxy not found (npm install --prefix .venv/node "
        "configurable-http-proxy@5, or run scripts/test.sh)"
    )
    if on_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def parse_time(value: str | None) -> datetime | None:
    """A Hub timestamp (ISO 8601, ``Z``) as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Execution:
    """A cell run on a kernel through the proxy; ``Hub.execute(..., wait=False)`` returns it at once."""

    user: str
    kernel_id: str
    code: str
    reply: dict[str, Any] | None = None
    stdout: str = ""
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def wait(self, timeout: float = 120) -> Execution:
        """Wait for the execute_reply; fail on a transport error or a reply that is not ``ok``."""
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"no execute_reply within {timeout} s for {self.code!r}")
        if self.error is not None:
            raise AssertionError(f"executing {self.code!r} failed: {self.error!r}") from self.error
        assert self.reply is not None
        assert self.reply.get("status") == "ok", self.reply
        return self


class Hub:
    """One JupyterHub process and everything it spawns, in ``root`` (a fresh directory).

    Options:
      extension: enable jupyter_idle_ext in the single-user servers (``jpserver_extensions``).
      args: extra command-line arguments for ``jupyterhub-singleuser``.
      environment: extra environment of the single-user servers (``Spawner.environment``), e.g.
        ``{"JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": "20"}``.
      hub_activity_interval: ``$JUPYTERHUB_ACTIVITY_INTERVAL`` for the servers (None: unset,
        jupyterhub-singleuser's default of 300 s).
      server_token_scopes: ``Spawner.server_token_scopes`` (None: JupyterHub's default, the
        ``server`` role: ``users:activity!user``, ``access:servers!server``).
      last_activity_interval: ``JupyterHub.last_activity_interval``, how often the Hub copies the
        proxy's per-route activity (0 turns that off; JupyterHub's default is 300).
      poll_interval: ``Spawner.poll_interval``, how soon the Hub notices a server that exited.
      culler: None, or the jupyterhub-idle-culler service's options, e.g.
        ``{"timeout": 10, "cull_every": 2}`` (any key becomes ``--key=value``).
      log_level: the Hub's log level; DEBUG shows per-server activity updates.
      extra_config: Python appended to ``jupyterhub_config.py``.
      chp: the configurable-http-proxy binary (default: ``find_chp()``).
    """

    def __init__(
        self,
        root: Path,
        *,
        extension: bool = True,
        args: tuple[str, ...] | list[str] = (),
        environment: dict[str, str] | None = None,
        hub_activity_interval: int | None = None,
        server_token_scopes: list[str] | None = None,
        last_activity_interval: int = 300,
        poll_interval: int = 2,
        culler: dict[str, Any] | None = None,
        log_level: str = "DEBUG",
        extra_config: str = "",
        chp: str | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.chp = chp or find_chp()
        if not self.chp:
            raise RuntimeError("configurable-http-proxy not found")
        self.hub_port = free_port()
        self.proxy_port = free_port()
        self.proxy_api_port = free_port()
        while len({self.hub_port, self.proxy_port, self.proxy_api_port}) < 3:
            self.proxy_api_port = free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"  # public: the proxy
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"  # the Hub itself
        self.api_url = f"{self.hub_url}/hub/api"
        self.config_path = root / "jupyterhub_config.py"
        self.log_path = root / "jupyterhub.log"
        self.homes = root / "home"
        self.extension = extension
        environment = dict(environment or {})
        if hub_activity_interval is not None:
            environment["JUPYTERHUB_ACTIVITY_INTERVAL"] = str(hub_activity_interval)
        self.environment = environment
        self.culler = culler
        self.server_token_scopes = server_token_scopes
        self._user_tokens: dict[str, str] = {}
        self.orphans: list[int] = []
        self._started: dict[int, Any] = {}  # pid -> psutil.Process
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.config_path.write_text(
            self._config(
                args=list(args),
                last_activity_interval=last_activity_interval,
                poll_interval=poll_interval,
                log_level=log_level,
                extra_config=extra_config,
            )
        )

    # -- configuration -----------------------------------------------------------------------

    def _config(
        self,
        *,
        args: list[str],
        last_activity_interval: int,
        poll_interval: int,
        log_level: str,
        extra_config: str,
    ) -> str:
        spawner_args = [
            "--allow-root",
            f"--ServerApp.jpserver_extensions={{'jupyter_idle_ext': {self.extension}}}",
            *args,
        ]
        from jupyter_idle_ext.cli import HUB_SCOPES

        services: list[dict[str, Any]] = [
            {"name": DRIVER_SERVICE, "api_token": DRIVER_TOKEN},
            {"name": STATUS_SERVICE, "api_token": STATUS_TOKEN},
        ]
        roles: list[dict[str, Any]] = [
            {"name": "test-driver", "scopes": DRIVER_SCOPES, "services": [DRIVER_SERVICE]},
            {"name": "idle-status", "scopes": HUB_SCOPES, "services": [STATUS_SERVICE]},
        ]
        if self.culler is not None:
            culler_args = [f"--{k.replace('_', '-')}={v}" for k, v in self.culler.items()]
            services.append(
                {
                    "name": CULLER_SERVICE,
                    "command": [sys.executable, "-m", "jupyterhub_idle_culler", *culler_args],
                }
            )
            roles.append(
                {"name": "idle-culler", "scopes": CULLER_SCOPES, "services": [CULLER_SERVICE]}
            )
        lines = [
            "# written by jupyter_idle_ext.pytest_plugin (Hub)",
            f"c.JupyterHub.bind_url = {self.url + '/'!r}",
            f"c.JupyterHub.hub_bind_url = {self.hub_url!r}",
            f"c.ConfigurableHTTPProxy.api_url = {f'http://127.0.0.1:{self.proxy_api_port}'!r}",
            f"c.ConfigurableHTTPProxy.command = {[self.chp]!r}",
            "c.ConfigurableHTTPProxy.should_start = True",
            f"c.ConfigurableHTTPProxy.pid_file = {str(self.root / 'proxy.pid')!r}",
            f"c.JupyterHub.db_url = {'sqlite:///' + str(self.root / 'jupyterhub.sqlite')!r}",
            f"c.JupyterHub.cookie_secret_file = {str(self.root / 'cookie_secret')!r}",
            "c.JupyterHub.cleanup_servers = True",
            "c.JupyterHub.cleanup_proxy = True",
            "c.JupyterHub.allow_named_servers = True",
            # POST .../server answers 202 at once, so a test can start servers side by side
            'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}',
            f"c.JupyterHub.last_activity_interval = {int(last_activity_interval)!r}",
            f"c.JupyterHub.log_level = {log_level!r}",
            'c.JupyterHub.authenticator_class = "dummy"',
            "c.Authenticator.allow_all = True",
            'c.JupyterHub.spawner_class = "simple"',
            f"c.SimpleLocalProcessSpawner.home_dir_template = {str(self.homes) + '/{username}'!r}",
            f"c.Spawner.cmd = {[sys.executable, '-m', 'jupyterhub.singleuser']!r}",
            f"c.Spawner.args = {spawner_args!r}",
            f"c.Spawner.environment = {self.environment!r}",
            f"c.Spawner.poll_interval = {int(poll_interval)!r}",
            "c.Spawner.start_timeout = 120",
            "c.Spawner.http_timeout = 60",
            f"c.JupyterHub.services = {services!r}",
            f"c.JupyterHub.load_roles = {roles!r}",
        ]
        if self.server_token_scopes is not None:
            lines.append(f"c.Spawner.server_token_scopes = {self.server_token_scopes!r}")
        return "\n".join([*lines, extra_config, ""])

    # -- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> Hub:
        """Start the Hub; return once its API and the proxy's route to it answer."""
        env = dict(os.environ)
        env.pop("JUPYTERHUB_API_TOKEN", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config_path)],
            cwd=self.root,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def up() -> bool:
            self._check_alive()
            try:
                hub = http_json("GET", f"{self.api_url}/", timeout=5)[0] == 200
                proxied = http_json("GET", f"{self.url}/hub/api/", timeout=5)[0] == 200
            except OSError:
                return False
            return hub and proxied

        try:
            wait_until(up, timeout, interval=0.25)
        except AssertionError:
            raise AssertionError(
                f"the Hub did not start in {timeout} s:\n{self.log()[-4000:]}"
            ) from None
        return self

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the Hub exited ({self.proc.returncode}):\n{self.log()[-4000:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _children(self) -> list[Any]:
        import psutil

        if self.proc is None:
            return []
        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def _remember_children(self) -> None:
        for child in self._children():
            self._started.setdefault(child.pid, child)

    def processes(self) -> set[int]:
        """The pids of everything the Hub runs now: proxy, services, servers, their kernels."""
        return {child.pid for child in self._children()}

    def stop(self, timeout: float = 60) -> None:
        """Stop the Hub with SIGTERM (it stops its servers, services and the proxy), then make
        sure nothing it started is left: survivors are killed and listed in ``orphans``.

        Only processes seen as the Hub's descendants are touched (psutil guards against pid
        reuse); servers seen at ``wait_ready`` count even if they left the Hub's tree.
        """
        import psutil

        if self.proc is None:
            return
        self._remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        survivors = []
        for proc in self._started.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(proc)
        # the Hub's cleanup has stopped its servers by the time it exits; a straggler gets 5 s
        _, alive = psutil.wait_procs(survivors, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.orphans += [p.pid for p in alive]

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- log ---------------------------------------------------------------------------------

    def log(self) -> str:
        """The Hub's log: the Hub, the proxy, services and every single-user server."""
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float, count: int = 1) -> str:
        """Wait until the log matches ``pattern`` (a regex) ``count`` times; return the log."""
        regex = re.compile(pattern)

        def seen() -> str | None:
            text = self.log()
            return text if len(regex.findall(text)) >= count else None

        return str(wait_until(seen, timeout, interval=0.25))

    def activity_posts(self, user: str, server_name: str | None = None) -> list[str]:
        """The activity posts the Hub received for ``user``, one log line each.

        Without ``server_name``: the Hub's access-log lines of
        ``POST /hub/api/users/{user}/activity`` (INFO, any status), e.g.
        ``[I 2025-01-01 12:00:00.000 JupyterHub log:192] 200 POST /hub/api/users/alice/activity
        (alice@127.0.0.1) 9.40ms``. With ``server_name`` ("" for the default server): the
        Hub's DEBUG lines for the posts that named that server, whether they moved its
        last_activity (``Activity on server alice/gpu: TS``) or not (``Not updating server
        activity on alice/gpu: TS < TS``); needs ``log_level="DEBUG"``.
        """
        text = self.log()
        if server_name is None:
            regex = re.compile(
                rf"^.*\b\d{{3}} POST /hub/api/users/{re.escape(user)}/activity \(.*$", re.M
            )
        else:
            name = re.escape(f"{user}/{server_name}")
            regex = re.compile(
                rf"^.*\b(?:Activity on server|Not updating server activity on) {name}: .*$",
                re.M,
            )
        return [m.group(0) for m in regex.finditer(text)]

    def count_activity_posts(self, user: str, server_name: str | None = None) -> int:
        return len(self.activity_posts(user, server_name))

    # -- Hub REST API ------------------------------------------------------------------------

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """A Hub REST API request (``path`` below ``/hub/api``), as the test driver by default."""
        return http_json(method, self.api_url + path, body, token or DRIVER_TOKEN)

    def create_user(self, name: str) -> dict[str, Any]:
        status, model = self.api("POST", f"/users/{name}")
        assert status == 201, (status, model)
        return dict(model)

    def user_model(self, name: str) -> dict[str, Any]:
        status, model = self.api("GET", f"/users/{name}")
        assert status == 200, (status, model)
        return dict(model)

    def server_info(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        """The Hub's model of a server (``ready``, ``pending``, ``last_activity``, ``url``,
        ``state``...), or None once the Hub considers it stopped."""
        servers = self.user_model(user).get("servers") or {}
        model = servers.get(server_name)
        return dict(model) if model else None

    def last_activity(self, user: str, server_name: str = "") -> datetime | None:
        """The Hub's last_activity for a server (None when the server is not running)."""
        info = self.server_info(user, server_name)
        return parse_time(info.get("last_activity")) if info else None

    def _server_path(self, user: str, server_name: str) -> str:
        if server_name:
            return f"/users/{user}/servers/{urllib.parse.quote(server_name)}"
        return f"/users/{user}/server"

    def request_start(self, user: str, server_name: str = "") -> None:
        """Ask the Hub to start a server; return at once (``wait_ready`` waits)."""
        status, body = self.api("POST", self._server_path(user, server_name))
        assert status in (201, 202), (status, body)

    def wait_ready(self, user: str, server_name: str = "", timeout: float = 90) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self._check_alive()
            info = self.server_info(user, server_name)
            return info if info and info.get("ready") else None

        try:
            info: dict[str, Any] = wait_until(ready, timeout, interval=0.25)
        except AssertionError:
            raise AssertionError(
                f"server {user}/{server_name} not ready in {timeout} s:\n{self.log()[-4000:]}"
            ) from None
        self._remember_children()
        return info

    def start_server(self, user: str, server_name: str = "", timeout: float = 90) -> dict[str, Any]:
        """Start a server (the user must exist) and wait until the Hub reports it ready."""
        self.request_start(user, server_name)
        return self.wait_ready(user, server_name, timeout)

    def stop_server(self, user: str, server_name: str = "", timeout: float = 60) -> None:
        status, body = self.api("DELETE", self._server_path(user, server_name))
        assert status in (202, 204), (status, body)
        self.wait_stopped(user, server_name, timeout)

    def wait_stopped(self, user: str, server_name: str = "", timeout: float = 60) -> float:
        """Wait until the Hub shows the server stopped; return how long that took."""
        start = time.monotonic()
        wait_until(lambda: self.server_info(user, server_name) is None, timeout, interval=0.25)
        return time.monotonic() - start

    def user_token(self, user: str) -> str:
        """An API token of ``user`` (same permissions as the user), made once and cached."""
        if user not in self._user_tokens:
            status, model = self.api(
                "POST",
                f"/users/{user}/tokens",
                {"note": "jupyter_idle_ext test harness", "expires_in": 3600},
            )
            assert status == 201, (status, model)
            self._user_tokens[user] = str(model["token"])
        return self._user_tokens[user]

    # -- the single-user server, through the proxy --------------------------------------------

    def server_url(self, user: str, server_name: str = "") -> str:
        """The server's public URL through the proxy (``/user/NAME/`` or ``/user/NAME/SERVER/``)."""
        info = self.server_info(user, server_name)
        assert info is not None, f"server {user}/{server_name} is not running"
        return self.url + str(info["url"])

    def user_request(
        self,
        user: str,
        method: str,
        path: str,
        body: Any = None,
        server_name: str = "",
        token: str | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """A REST request to the user's server through the proxy, with the user's token, as a
        browser tab would make it; ``path`` is below the server's URL, e.g. ``api/kernels``."""
        url = self.server_url(user, server_name) + path.lstrip("/")
        return http_json(method, url, body, token or self.user_token(user), timeout)

    def start_kernel(self, user: str, server_name: str = "", name: str = "python3") -> str:
        status, model = self.user_request(
            user, "POST", "api/kernels", {"name": name}, server_name, timeout=60
        )
        assert status == 201, (status, model)
        return str(model["id"])

    def execute(
        self,
        user: str,
        code: str,
        *,
        server_name: str = "",
        kernel_id: str | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> Execution:
        """Run ``code`` on a kernel of the user's server (a new one unless ``kernel_id``) over
        the kernel websocket through the proxy (messaging protocol v5, JSON frames).

        ``wait=False`` returns as soon as the execute_request is sent, with the websocket kept
        open in a thread until the reply; ``Execution.wait()`` collects it.
        """
        if kernel_id is None:
            kernel_id = self.start_kernel(user, server_name)
        ws_url = (
            self.server_url(user, server_name).replace("http://", "ws://", 1)
            + f"api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        )
        token = self.user_token(user)
        execution = Execution(user=user, kernel_id=kernel_id, code=code)
        sent = threading.Event()

        def run() -> None:
            try:
                asyncio.run(_execute(ws_url, token, execution, sent, timeout))
            except BaseException as e:
                execution.error = e
            finally:
                execution.finished = time.monotonic()
                sent.set()

        execution._thread = threading.Thread(target=run, name=f"execute-{kernel_id}", daemon=True)
        execution._thread.start()
        sent.wait(60)
        if execution.error is not None:
            raise AssertionError(f"could not send {code!r}: {execution.error!r}")
        return execution.wait(timeout) if wait else execution


async def _execute(
    url: str, token: str, execution: Execution, sent: threading.Event, timeout: float
) -> None:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=60)
    conn = await websocket_connect(request)
    try:
        message = execute_request(execution.code, user=execution.user, session=uuid.uuid4().hex)
        msg_id = message["header"]["msg_id"]
        await conn.write_message(json.dumps(message))
        sent.set()
        deadline = time.monotonic() + timeout
        reply: dict[str, Any] | None = None
        idle = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no execute_reply within {timeout} s")
            raw = await asyncio.wait_for(conn.read_message(), remaining)
            if raw is None:
                raise ConnectionError("kernel websocket closed before the execute_reply")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            msg_type = msg.get("msg_type") or msg["header"]["msg_type"]
            if msg_type == "stream" and msg["content"].get("name") == "stdout":
                execution.stdout += msg["content"]["text"]
            elif msg_type == "status" and msg["content"].get("execution_state") == "idle":
                idle = True  # iopub and shell are not ordered: output may follow the reply
            elif msg_type == "execute_reply":
                reply = msg["content"]
            if idle and reply is not None:
                execution.reply = reply
                return
    finally:
        conn.close()


@contextlib.contextmanager
def hub_factory(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """``start(**options) -> Hub``: started Hubs (options as ``Hub``), all stopped at exit.

    Skips (fails under CI=true) when configurable-http-proxy is missing. At exit each Hub is
    stopped and the test fails if any process it started had to be killed.
    """
    started: list[Hub] = []

    def start(**options: Any) -> Hub:
        chp = require_chp()
        hub = Hub(tmp_path / f"hub{len(started)}", chp=chp, **options)
        started.append(hub)
        return hub.start()

    try:
        yield start
    finally:
        for hub in started:
            hub.stop()
    orphans = [pid for hub in started for pid in hub.orphans]
    assert not orphans, f"processes left running after the Hub stopped: {orphans}"
