"""A real Jupyter Enterprise Gateway or Kernel Gateway for the tests of kernels that run on a
gateway.

Enterprise Gateway 3.3.0 pins jupyter_server 1.24 and jupyter_client 6, so it runs from a venv of
its own (``.venv-gateway``, made by scripts/test.sh); Kernel Gateway 3 runs on the test venv's
jupyter_server 2 (the ``test`` extra). Each runs as the separate service it is in a deployment;
the Jupyter server under test talks to it over HTTP and websockets on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import websocket
from servers import TOKEN, free_port, require, wait_until

GATEWAY_VENV = Path(__file__).resolve().parent.parent / ".venv-gateway"


class Gateway:
    """``jupyter enterprisegateway`` (``kind="enterprise"``) or ``jupyter kernelgateway``
    (``kind="kernel"``) on a loopback port; ``kernels()`` reads its own list."""

    def __init__(self, workdir: Path, kind: str = "enterprise") -> None:
        self.port = free_port()
        if kind == "enterprise":
            program = GATEWAY_VENV / "bin" / "jupyter-enterprisegateway"
            require(program.exists(), f"Enterprise Gateway is not installed in {GATEWAY_VENV}")
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
        with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=10) as r:
            return [k["id"] for k in json.loads(r.read())]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class KernelSocket:
    """A tab's websocket to a kernel through the server (the plain JSON protocol the server
    speaks for a gateway's kernels)."""

    def __init__(self, server_url: str, kernel_id: str) -> None:
        self.session = uuid.uuid4().hex
        url = server_url.replace("http", "ws", 1)
        self.ws = websocket.create_connection(
            f"{url}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {TOKEN}"],
            timeout=30,
        )

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": "test",
            "session": self.session,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "version": "5.3",
        }
        message = {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }
        self.ws.send(json.dumps(message))
        return msg_id

    def wait_reply(self, msg_id: str, msg_type: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg["msg_type"] == msg_type and msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg)

    def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        return self.wait_reply(msg_id, "execute_reply", timeout)

    def kernel_info(self) -> dict[str, Any]:
        return self.wait_reply(self.send("kernel_info_request", {}), "kernel_info_reply")

    def close(self) -> None:
        self.ws.close()
