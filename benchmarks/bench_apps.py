"""Benchmark 10: what the extension costs where a person writes documents or works in a proxied
app, the two sources of activity that involve no kernel.

- Document saves: JupyterLab's autosave PUTs the whole notebook to ``/api/contents/<path>``; with
  the extension each save also passes its wrappers of the contents manager's ``emit`` (the
  contents_service event) and ``save`` (``jupyter_idle_ext/documents.py``). Measured as server CPU
  per save.
- Proxied websocket: every client-to-app message through jupyter-server-proxy passes the
  extension's ``on_message`` observer (``jupyter_idle_ext/proxy.py``). Measured as the time a
  client takes to get 1,000 messages through the proxy to the stand-in app
  (``tests/standin_app.py``) and their echoes back.

Three real servers run side by side each time: ours, one without the extension, and a second one
without it (the A/A control); batches alternate between them, rotating the order.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    TESTS,
    TOKEN,
    Context,
    Row,
    ServerProcess,
    compare_row,
    cpu_seconds,
    fmt,
    median,
    start_servers,
    stop_all,
)

BENCH = "10. Documents and proxied apps"
SAVE_GOAL = 1.03
PROXY_GOAL = 1.02
#: ours, the server without the extension, and a second one without it (the A/A control)
EXTENSION = (True, False, False)

#: jupyter-server-proxy is installed only here (scripts/test.sh sets it up)
APPS_VENV = ROOT / ".venv-apps"
APPS_PYTHON = APPS_VENV / "bin" / "python"
STANDIN = TESTS / "standin_app.py"
#: the name the stand-in app is served under: no keep-alive patterns apply to it, so every
#: client message is input the extension records
APP = "standin"
#: jupyter-collaboration's server extensions are installed in .venv-apps too; they are off here
#: (as in most deployments, and they do nothing on the proxy's path)
APPS_EXTENSIONS = {
    "jupyter_server_proxy": True,
    "jupyter_server_ydoc": False,
    "jupyter_server_fileid": False,
}
# a message a person's keystroke or command might make
PADDING = "x" * 64


def writing_and_apps(ctx: Context) -> list[Row]:
    """10. Server CPU per document save, and proxied websocket throughput, extension on vs off."""
    check_apps_venv()
    rows = document_saves(ctx)
    rows += proxied_websocket(ctx)
    return rows


def _rotation(count: int, round_: int) -> list[int]:
    return [(round_ + i) % count for i in range(count)]


def _threads(pid: int) -> set[str]:
    return set(os.listdir(f"/proc/{pid}/task"))


def _setup_name(side: int) -> str:
    return ("ours", "extension off", "second server off (A/A)")[side]


def _spread(values: Sequence[float], digits: int) -> str:
    return f"{fmt(min(values), digits)} to {fmt(max(values), digits)}"


# -- document saves --------------------------------------------------------------------------


def notebook(n: int) -> dict[str, Any]:
    """A small notebook as JupyterLab sends it on autosave: a markdown cell, code cells with
    outputs; ``n`` changes one cell (autosave writes only a changed document)."""
    return {
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.11"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
        "cells": [
            {
                "cell_type": "markdown",
                "id": "intro",
                "metadata": {},
                "source": "# Notes\n\nA small notebook, saved again and again.",
            },
            {
                "cell_type": "code",
                "id": "load",
                "metadata": {},
                "execution_count": 1,
                "source": "import math\nvalues = [math.sqrt(i) for i in range(10)]\nvalues[:3]",
                "outputs": [
                    {
                        "output_type": "execute_result",
                        "execution_count": 1,
                        "metadata": {},
                        "data": {"text/plain": "[0.0, 1.0, 1.4142135623730951]"},
                    }
                ],
            },
            {
                "cell_type": "code",
                "id": "edit",
                "metadata": {},
                "execution_count": None,
                "source": f"# edit {n}\ntotal = sum(values)\nprint(total)",
                "outputs": [],
            },
        ],
    }


class Saver:
    """Saves a notebook on one server over one kept-alive connection, as a browser tab does."""

    PATH = "/api/contents/autosaved.ipynb"

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.count = 0

    def save(self) -> None:
        self.count += 1
        body = json.dumps(
            {"type": "notebook", "format": "json", "content": notebook(self.count)}
        ).encode()
        self.conn.request(
            "PUT",
            self.PATH,
            body=body,
            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        )
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"save on port {self.server.port}: {resp.status} {raw[:300]!r}")

    def close(self) -> None:
        self.conn.close()


def document_saves(ctx: Context) -> list[Row]:
    """Server CPU per PUT /api/contents/<notebook>, extension on vs off (+A/A)."""
    batches, batch, warmup = (4, 20, 10) if ctx.quick else (40, 50, 30)
    # the notary's signatures in memory: three servers must not share (and write) the user's
    # nbsignatures.db, whose disk writes would land on all of them unevenly
    args = ("--NotebookNotary.db_file=:memory:",)
    servers = start_servers(ctx, "saves", [(ext, args) for ext in EXTENSION])
    savers: list[Saver] = []
    try:
        savers = [Saver(s) for s in servers]
        for saver in savers:
            for _ in range(warmup):
                saver.save()
        per_save: list[list[float]] = [[] for _ in servers]
        redone = 0
        start = time.monotonic()
        for b in range(batches):
            for side in _rotation(len(servers), b):
                pid = servers[side].proc.pid
                for _attempt in range(3):
                    threads = _threads(pid)
                    before = cpu_seconds(pid)
                    for _ in range(batch):
                        savers[side].save()
                    used = cpu_seconds(pid) - before
                    # cpu_seconds sums the live threads: a worker thread that ended during the
                    # batch (anyio retires idle ones) takes its whole CPU time with it
                    if threads <= _threads(pid):
                        break
                    redone += 1
                per_save[side].append(used / batch * 1e6)
        took = time.monotonic() - start
    finally:
        for saver in savers:
            saver.close()
        stop_all(servers)
    ours, base, control = per_save
    row = compare_row(
        BENCH,
        "server CPU per notebook save (PUT /api/contents), median µs per save",
        ours,
        base,
        aa=control,
        unit="µs",
        digits=0,
        goal=SAVE_GOAL,
    )
    row.values.update(batches=batches, batch=batch, redone_batches=redone)
    ctx.note(
        BENCH,
        f"Saves: {batches} batches of {batch} PUTs of a 3-cell notebook (changed each time) per "
        f"server over one kept-alive connection, the three servers in turn, rotating the order, "
        f"after {warmup} saves each to warm up ({took:.1f} s); a sample is the server "
        f"process's CPU over the batch (per-thread schedstat) divided by {batch}; per-save "
        f"samples range {_spread(ours, 0)} µs (ours), {_spread(base, 0)} µs (off), "
        f"{_spread(control, 0)} µs (second server off); {redone} batches measured again because "
        "a server thread ended during them",
    )
    return [row]


# -- the proxied app -------------------------------------------------------------------------


def check_apps_venv() -> None:
    """jupyter-server-proxy lives only in .venv-apps: say how to get it when it is not there."""
    problem = ""
    if not APPS_PYTHON.exists():
        problem = f"{APPS_PYTHON} does not exist"
    else:
        found = subprocess.run(
            [str(APPS_PYTHON), "-c", "import jupyter_server_proxy, jupyter_idle_ext"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if found.returncode != 0:
            problem = f"{APPS_PYTHON} cannot import jupyter_server_proxy and jupyter_idle_ext"
    if problem:
        raise RuntimeError(
            f"{problem}: the proxied-app benchmark needs the venv with jupyter-server-proxy; "
            "run `bash scripts/test.sh` once (it sets up .venv-apps)"
        )


def launcher(directory: Path) -> Path:
    """A script ServerProcess runs instead of ``-m jupyter_server``: it becomes jupyter_server
    of .venv-apps in the same process (exec), so the pid ServerProcess has is the server's."""
    path = directory / "apps_server.py"
    path.write_text(
        "import os, sys\n"
        f"python = {str(APPS_PYTHON)!r}\n"
        "os.execv(python, [python, '-m', 'jupyter_server', *sys.argv[1:]])\n"
    )
    return path


def start_proxied_servers(ctx: Context) -> list[ServerProcess]:
    """Three servers of .venv-apps serving the stand-in app, as tests/test_apps.py configures it
    (ServerProxy.servers in a config file)."""
    script = launcher(ctx.scratch("apps-launcher"))
    env = {
        "VIRTUAL_ENV": str(APPS_VENV),
        "PATH": f"{APPS_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    servers: list[ServerProcess] = []
    try:
        for i, extension in enumerate(EXTENSION):
            top = ctx.scratch(f"apps-{i}")
            config = top / "config"
            config.mkdir(exist_ok=True)
            (config / "jupyter_server_config.json").write_text(
                json.dumps(
                    {
                        "ServerProxy": {
                            "servers": {
                                APP: {
                                    "command": [
                                        str(APPS_PYTHON),
                                        str(STANDIN),
                                        "--port={port}",
                                        f"--name={APP}",
                                    ],
                                    "timeout": 30,
                                }
                            }
                        }
                    }
                )
            )
            root = top / "root"
            root.mkdir(exist_ok=True)
            servers.append(
                ServerProcess(
                    root,
                    extension=extension,
                    env={**env, "JUPYTER_CONFIG_DIR": str(config)},
                    extensions=APPS_EXTENSIONS,
                    launcher=script,
                )
            )
        for server in servers:
            server.wait_ready(120)
        for server in servers:
            # the first request starts the app; it answers once it listens
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                conn.request("GET", f"/{APP}/", headers={"Authorization": f"token {TOKEN}"})
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                raise RuntimeError(
                    f"the stand-in app behind port {server.port} answered {resp.status}:\n"
                    f"{server.log()[-3000:]}"
                )
    except BaseException:
        stop_all(servers)
        raise
    return servers


class AppSocket:
    """A client of the stand-in app's websocket through the proxy: sends messages, counts the
    app's echoes ("got ..."), skips its heartbeats."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.conn: Any = None
        self.sent = 0

    async def connect(self) -> AppSocket:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = self.server.url.replace("http://", "ws://", 1) + f"/{APP}/ws"
        self.conn = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"}, request_timeout=60)
        )
        # the app pushes its first heartbeat as it opens: the proxy's upstream side is up
        first = await asyncio.wait_for(self.conn.read_message(), 30)
        if not (isinstance(first, str) and first.startswith("heartbeat")):
            raise RuntimeError(f"unexpected first message through the proxy: {first!r}")
        return self

    async def burst(self, count: int) -> float:
        """Send ``count`` messages without waiting and read their echoes as they come: seconds
        from the first send to the last echo."""
        first = self.sent + 1
        last = self.sent + count
        self.sent = last

        async def read() -> None:
            expected = first
            while expected <= last:
                message = await self.conn.read_message()
                if message is None:
                    raise ConnectionError("the proxied websocket closed")
                if isinstance(message, str) and message.startswith("heartbeat"):
                    continue
                if message != f"got m{expected} {PADDING}":
                    raise RuntimeError(f"echo {expected} out of order: {message!r:.80}")
                expected += 1

        start = time.perf_counter()
        reader = asyncio.ensure_future(read())
        for n in range(first, last + 1):
            await self.conn.write_message(f"m{n} {PADDING}")
        await asyncio.wait_for(reader, 120)
        return time.perf_counter() - start

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def proxied_websocket(ctx: Context) -> list[Row]:
    """Time per 1,000 client-to-app websocket messages (and their echoes) through
    jupyter-server-proxy, extension on vs off (+A/A)."""
    batches, messages = (3, 200) if ctx.quick else (30, 1000)
    servers = start_proxied_servers(ctx)
    try:
        pids = [s.proc.pid for s in servers]

        async def measure() -> tuple[list[list[float]], list[list[float]]]:
            sockets = [await AppSocket(s).connect() for s in servers]
            try:
                for sock in sockets:
                    await sock.burst(messages // 2)  # warm the proxy's path
                wall: list[list[float]] = [[] for _ in servers]
                cpu: list[list[float]] = [[] for _ in servers]
                for b in range(batches):
                    for side in _rotation(len(servers), b):
                        before = cpu_seconds(pids[side])
                        elapsed = await sockets[side].burst(messages)
                        used = cpu_seconds(pids[side]) - before
                        wall[side].append(elapsed / messages * 1e6)  # ms per 1,000
                        cpu[side].append(used / messages * 1e6)
                return wall, cpu
            finally:
                for sock in sockets:
                    sock.close()

        start = time.monotonic()
        wall, cpu = asyncio.run(measure())
        took = time.monotonic() - start
        recorded = _app_recorded(servers[0])
    finally:
        stop_all(servers)
    rows = [
        compare_row(
            BENCH,
            "proxied websocket: client-to-app messages and their echoes, median ms per 1,000",
            wall[0],
            wall[1],
            aa=wall[2],
            unit="ms",
            digits=1,
            goal=PROXY_GOAL,
        ),
        compare_row(
            BENCH,
            "proxied websocket: server CPU per 1,000 messages and echoes, median ms",
            cpu[0],
            cpu[1],
            aa=cpu[2],
            unit="ms",
            digits=1,
        ),
    ]
    for row in rows:
        row.values.update(batches=batches, messages=messages)
    ctx.note(
        BENCH,
        f"Proxied app: {batches} bursts of {messages:,} messages (about {len(PADDING) + 6} "
        f"characters each) per server from one websocket client to the stand-in app "
        f"(tests/standin_app.py, served as `{APP}` by jupyter-server-proxy in .venv-apps), sent "
        "without waiting while a reader takes the echoes in order; the three servers in turn, "
        f"rotating the order ({took:.1f} s); a sample is first send to last echo, per 1,000; "
        f"samples range {_spread(wall[0], 1)} ms (ours), {_spread(wall[1], 1)} ms (off), "
        f"{_spread(wall[2], 1)} ms (second server off); server CPU per 1,000 messages "
        f"{fmt(median(cpu[0]), 1)} ms (ours) against {fmt(median(cpu[1]), 1)} ms (off); the "
        f"extension recorded the app's input: {recorded}",
    )
    return rows


def _app_recorded(server: ServerProcess) -> str:
    """What ours says about the app after the bursts (the measured path did record input)."""
    try:
        status, doc = server.request("GET", "/api/idle", track=False)
    except OSError as e:
        return f"api/idle unreachable ({e})"
    if status != 200 or not isinstance(doc, dict):
        return f"api/idle answered {status}"
    for source in doc.get("sources", []):
        if source.get("kind") == "app" and source.get("name") == APP:
            return f"yes ({source.get('reason', '')})"
    return "no app source listed"
