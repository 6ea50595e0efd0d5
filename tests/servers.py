"""Real jupyter_server processes for tests that need a whole server: its log, its exit code, its clock.

A test starts one with the options it wants, drives it over HTTP, websockets or ZMQ, and reads
what it logged and how it ended. Nothing is mocked: the server, its kernels and terminals are real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

TOKEN = "test-token-3f2a"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def start_kernel(self, name: str = "python3") -> str:
        status, model = self.request("POST", "/api/kernels", {"name": name})
        assert status == 201, (status, model)
        return str(model["id"])

    def kernel_ids(self) -> list[str]:
        status, models = self.request("GET", "/api/kernels")
        assert status == 200, (status, models)
        return [m["id"] for m in models]

    def connection_file(self, kernel_id: str) -> Path:
        """The kernel's connection file, for clients that talk ZMQ to it directly."""
        return self.runtime_dir / f"kernel-{kernel_id}.json"


def execute_over_zmq(connection_file: Path, code: str, timeout: float = 60) -> dict[str, Any]:
    """Run code on a kernel as `jupyter console` would: straight over ZMQ, not through the server."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        reply: dict[str, Any] = client.execute_interactive(
            code, timeout=timeout, output_hook=lambda m: None
        )
        return reply
    finally:
        client.stop_channels()
