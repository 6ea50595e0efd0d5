"""Reliability: kernel faults, hostile requests and load, against real kernels and servers.

Kernel faults (a kernel dying mid-cull, an output flood, malformed messages, 20 kernels at once)
run in-process, where the tracker and the kernels' processes can be watched directly. Hostile
requests and token leaks go through real ``jupyter server`` processes, the way an attacker or a
log collector sees them. The load test measures, inside the server, how long our code holds the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import http.cookiejar
import json
import logging
import os
import resource
import signal
import socket
import threading
import time
import traceback
import types
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from jupyter_client import BlockingKernelClient
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.netutil import Resolver
from tornado.websocket import websocket_connect

from jupyter_idle_ext.handlers import StatusHandler
from jupyter_idle_ext.pytest_plugin import (
    TOKEN,
    CulledAt,
    ServerProcess,
    culled_at,
    execute_over_zmq,
    free_port,
    kernel_gone,
    ready_client,
    run,
    start_kernel,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

# the in-process cull_idle_timeout (pytest_plugin.IN_PROCESS)
TIMEOUT = 3.0


def record(app: Any, kernel_id: str) -> Any:
    return app.tracker.records.get(("kernel", kernel_id))


async def status(jp_fetch: Any) -> dict[str, Any]:
    r = await jp_fetch("api", "idle", method="GET")
    return dict(json.loads(r.body))


async def execute_reply(client: Any, code: str, timeout: float = 30) -> None:
    """Execute and wait for the reply on the shell channel only, never reading IOPub (where this
    client may hold malformed messages that jupyter_client cannot parse)."""
    msg_id = client.execute(code)
    while True:
        reply = await client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            assert reply["content"]["status"] == "ok", reply["content"]
            return


def culler_running(app: Any) -> bool:
    return bool(app._tasks) and not app._tasks[0].done()


@contextlib.contextmanager
def loop_exceptions() -> Iterator[list[dict[str, Any]]]:
    """Collect what reaches the event loop's exception handler (an exception that escaped)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


def tracebacks_through_us(caplog: Any, escaped: list[dict[str, Any]]) -> list[str]:
    """Every logged or escaped traceback that passes through jupyter_idle_ext."""
    texts = []
    for rec in caplog.records:
        if rec.exc_info and rec.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(*rec.exc_info)))
    for context in escaped:
        e = context.get("exception")
        if e is not None:
            texts.append("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        else:
            texts.append(str(context.get("message")))
    return [t for t in texts if "jupyter_idle_ext" in t]


# -- A1: a kernel that dies while it is being culled ---------------------------------------------

# The kernel honours shutdown_request by dying: the cull's request reaches a process that is
# gone a moment later, before any reply.
DIE_ON_SHUTDOWN = (
    "import os, time\n"
    "k = get_ipython().kernel\n"
    "async def die(*args, **kwargs):\n"
    "    time.sleep(0.2)\n"
    "    os._exit(1)\n"
    "k.control_handlers['shutdown_request'] = die\n"
    "k.shell_handlers['shutdown_request'] = die\n"
)


class KillWhenCulled(CulledAt):
    """SIGKILLs a kernel's process the moment the culler logs that it culls it, so the process
    dies between the decision and the shutdown_request."""

    def __init__(self, kernel_id: str, pid: int) -> None:
        super().__init__(kernel_id)
        self.pid = pid

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None:
            super().emit(record)
            if self.at is not None:
                os.kill(self.pid, signal.SIGKILL)

    @property
    def killed(self) -> bool:
        return self.at is not None


async def test_kernels_dying_while_culled_are_removed_and_culling_goes_on(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, caplog: Any
) -> None:
    km = jp_serverapp.kernel_manager
    with loop_exceptions() as escaped:
        dies_on_request, killed_at_decision = await asyncio.gather(
            start_kernel(jp_fetch), start_kernel(jp_fetch)
        )
        client = await ready_client(idle_app, dies_on_request)
        await run(client, DIE_ON_SHUTDOWN)
        client.stop_channels()
        processes = {
            k: km.get_kernel(k).provisioner.process for k in (dies_on_request, killed_at_decision)
        }
        killer = KillWhenCulled(killed_at_decision, processes[killed_at_decision].pid)
        idle_app.log.addHandler(killer)
        try:
            for kernel_id in processes:
                await wait_for(lambda k=kernel_id: kernel_gone(jp_fetch, k), 30)
        finally:
            idle_app.log.removeHandler(killer)
        assert killer.killed, "the culler never started culling the kernel"
        for kernel_id, process in processes.items():
            await wait_for(lambda p=process: p.poll() is not None, 10)
            assert record(idle_app, kernel_id) is None, "a dead kernel is still tracked"
        assert processes[dies_on_request].returncode == 1  # it died in its shutdown handler
        assert processes[killed_at_decision].returncode == -signal.SIGKILL
        doc = await status(jp_fetch)
        assert not {k["id"] for k in doc["kernels"]} & set(processes)

        # the loop goes on: a kernel started afterwards is culled at its timeout
        later = await start_kernel(jp_fetch)
        client = await ready_client(idle_app, later)
        with culled_at(idle_app, later) as culled:
            await run(client, "x = 1")
            ran = time.monotonic()
            await wait_for(lambda: kernel_gone(jp_fetch, later), 30)
        client.stop_channels()
        assert culled.at is not None, "the kernel went, but not by the culler"
        # culled at its timeout, not at the next cull_interval (300 s)
        assert TIMEOUT - 0.5 < culled.at - ran < TIMEOUT + 3
    assert culler_running(idle_app), "the check loop ended"
    assert "check failed" not in caplog.text
    assert not tracebacks_through_us(caplog, escaped)
    ours = [r for r in caplog.records if r.name == idle_app.log.name]
    assert not [r.getMessage() for r in ours if r.levelno >= logging.ERROR]


# -- A2: a kernel that floods output --------------------------------------------------------------

CELL_FLOOD = "for i in range(200000):\n    print('line', i)\n"
# after its cell returned, a thread prints as fast as it can for longer than the timeout
THREAD_FLOOD = (
    "import threading, time\n"
    "def flood():\n"
    "    end = time.monotonic() + 5\n"
    "    i = 0\n"
    "    while time.monotonic() < end:\n"
    "        print('background line', i)\n"
    "        i += 1\n"
    "threading.Thread(target=flood).start()\n"
)


async def test_output_flood_is_tracked_and_the_server_keeps_answering(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    # a browser tab on the kernel: the server relays the flood to it too
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    relayed = 0

    async def drain() -> None:
        nonlocal relayed
        while await ws.read_message() is not None:
            relayed += 1

    tab = asyncio.ensure_future(drain())

    async def watch(until: Callable[[], bool]) -> list[tuple[float, float, Any]]:
        """(time, last_activity, busy_since) samples, each after a status request answered
        within two seconds."""
        samples = []
        while not until():
            asked = time.monotonic()
            doc = await status(jp_fetch)
            assert time.monotonic() - asked < 2.0, "api/idle answered slowly during the flood"
            assert kernel_id in {k["id"] for k in doc["kernels"]}
            rec = record(idle_app, kernel_id)
            assert rec is not None, "culled during the flood"
            samples.append((time.monotonic(), rec.last_activity, rec.busy_since))
            await asyncio.sleep(0.2)
        return samples

    cell = asyncio.ensure_future(run(client, CELL_FLOOD, timeout=120))
    during_cell = await watch(cell.done)
    await cell
    assert len(during_cell) >= 3, "the flood was too short to sample"
    # busy from the first sample after the cell started to the last before it ended (the last
    # one may come after the kernel's idle status, which precedes the execute_reply)
    assert all(busy is not None for _, _, busy in during_cell[1:-1]), during_cell

    started = time.monotonic()
    await run(client, THREAD_FLOOD)
    during_thread = await watch(lambda: time.monotonic() - started > 5)
    # not busy, yet active: output moved the kernel's last activity all along
    assert all(busy is None for _, _, busy in during_thread[2:])
    activity = [last for _, last, _ in during_thread[2:]]
    assert all(b >= a for a, b in zip(activity, activity[1:])), activity
    assert activity[-1] - activity[0] > 3.5, activity
    assert all(seen - last < 1.0 for seen, last, _ in during_thread[2:])

    # after the flood: culled cull_idle_timeout after the last output it printed
    last_output = record(idle_app, kernel_id).last_activity
    with culled_at(idle_app, kernel_id) as culled:
        while await (ready := kernel_gone(jp_fetch, kernel_id)) is False:
            rec = record(idle_app, kernel_id)
            if rec is not None:
                last_output = rec.last_activity
            await asyncio.sleep(0.05)
    assert ready
    assert culled.at is not None, "the kernel went, but not by the culler"
    assert TIMEOUT - 0.5 < culled.at - last_output < TIMEOUT + 3
    assert relayed > 0
    assert culler_running(idle_app)
    await status(jp_fetch)
    client.stop_channels()
    ws.close()
    tab.cancel()


# -- A3: malformed messages --------------------------------------------------------------------


def _header(msg_type: str) -> dict[str, Any]:
    return {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "session": uuid.uuid4().hex,
        "username": "mallory",
        "version": "5.3",
        "date": "2026-01-01T00:00:00Z",
    }


WEBSOCKET_GARBAGE: list[str | bytes] = [
    "not json",
    "{",
    json.dumps([1, 2, 3]),
    json.dumps(None),
    json.dumps({"channel": "shell"}),
    json.dumps({"channel": "shell", "content": {}, "metadata": {}, "parent_header": {}}),
    json.dumps(
        {
            "channel": "no-such-channel",
            "header": _header("execute_request"),
            "content": {"code": "1"},
            "metadata": {},
            "parent_header": {},
        }
    ),
    json.dumps(
        {
            "channel": "shell",
            "header": _header("no_such_request"),
            "content": {},
            "metadata": {},
            "parent_header": {},
        }
    ),
    b"\x00\x01garbage",
    b"\x00\x00\x00\x02" + b"\x00" * 12 + b"junk",
]


async def send_over_websocket(jp_ws_fetch: Any, kernel_id: str, message: str | bytes) -> None:
    """One malformed message per connection: the server may drop a connection that sent one."""
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    with contextlib.suppress(Exception):
        await ws.write_message(message, binary=isinstance(message, bytes))
        await asyncio.wait_for(ws.read_message(), 0.5)
    ws.close()


async def test_malformed_shell_and_websocket_messages_change_nothing(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any, caplog: Any
) -> None:
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    with loop_exceptions() as escaped:
        # straight to the kernel's shell socket, as a broken ZMQ client would
        shell, session = client.shell_channel.socket, client.session
        empty = [b"{}"] * 4
        not_json = [b"not json", b"{}", b"{}", b"{}"]
        shell.send_multipart([b"garbage"])
        shell.send_multipart([b"<IDS|MSG>", b"bad signature", *empty])
        shell.send_multipart([b"<IDS|MSG>", session.sign(empty), *empty])  # no header
        shell.send_multipart([b"<IDS|MSG>", session.sign(not_json), *not_json])
        session.send(shell, "no_such_request", {})
        # through the server's kernel websocket, as a broken browser client would
        for message in WEBSOCKET_GARBAGE:
            await send_over_websocket(jp_ws_fetch, kernel_id, message)
        assert kernel_id in {k["id"] for k in (await status(jp_fetch))["kernels"]}
        await asyncio.sleep(1.5)

        # the next real execution counts: the kernel is culled its timeout after it, not
        # after the garbage
        before = record(idle_app, kernel_id).last_activity
        with culled_at(idle_app, kernel_id) as culled:
            await run(client, "x = 1")
            ran = time.monotonic()
            # the reply can come before the server's watcher has read the kernel's busy status
            await wait_for(lambda: record(idle_app, kernel_id).last_activity > before, 10)
            await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
        assert culled.at is not None, "the kernel went, but not by the culler"
        assert TIMEOUT - 0.5 < culled.at - ran < TIMEOUT + 3
    client.stop_channels()
    assert culler_running(idle_app)
    assert not tracebacks_through_us(caplog, escaped)


# Published by the kernel's own code on its IOPub socket, as a buggy kernel or library would:
# no delimiter, a bad signature, a signed message without header, a signed non-JSON header.
IOPUB_GARBAGE = (
    "k = get_ipython().kernel\n"
    "sock, sign = k.iopub_socket, k.session.sign\n"
    "empty = [b'{}'] * 4\n"
    "not_json = [b'not json', b'{}', b'{}', b'{}']\n"
    "def publish_garbage():\n"
    "    sock.send_multipart([b'garbage'])\n"
    "    sock.send_multipart([b'kernel.x.status', b'<IDS|MSG>', b'bad signature', *empty])\n"
    "    sock.send_multipart([b'kernel.x.status', b'<IDS|MSG>', sign(empty), *empty])\n"
    "    sock.send_multipart(\n"
    "        [b'kernel.x.status', b'<IDS|MSG>', sign(not_json), *not_json]\n"
    "    )\n"
)


def working(app: Any, kernel_id: str) -> bool:
    rec = record(app, kernel_id)
    assert rec is not None, "culled while it worked"
    return rec.busy_since is not None


@pytest.mark.parametrize("when", ["while idle", "during a cell"])
async def test_malformed_iopub_messages_do_not_stop_tracking(
    idle_app: Any, jp_fetch: Any, caplog: Any, when: str
) -> None:
    kernel_id = await start_kernel(jp_fetch)
    publisher = await ready_client(idle_app, kernel_id)
    if when == "while idle":
        code = IOPUB_GARBAGE + "import threading\nthreading.Timer(0.5, publish_garbage).start()\n"
    else:
        code = IOPUB_GARBAGE + "publish_garbage()\n"
    await execute_reply(publisher, code)
    publisher.stop_channels()  # its IOPub queue holds the garbage
    await asyncio.sleep(1.5)
    assert record(idle_app, kernel_id).busy_since is None, "stuck busy after the garbage"

    # real work afterwards is seen: busy while a silent cell runs longer than the timeout,
    # culled its timeout after the cell ends
    client = await ready_client(idle_app, kernel_id)
    with culled_at(idle_app, kernel_id) as culled:
        cell = asyncio.ensure_future(run(client, "import time; time.sleep(5)", timeout=15))
        try:
            await wait_for(lambda: working(idle_app, kernel_id), 3)
            await cell
        finally:
            cell.cancel()
        ended = time.monotonic()
        assert record(idle_app, kernel_id) is not None, "culled while it worked"
        await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 10)
    assert culled.at is not None, "the kernel went, but not by the culler"
    assert TIMEOUT - 0.5 < culled.at - ended < TIMEOUT + 3
    client.stop_channels()
    assert culler_running(idle_app)


# -- A4: twenty kernels at once ------------------------------------------------------------------

MANY = 20
MANY_TIMEOUT = 10.0


class CullLog(logging.Handler):
    """When the culler decided to cull each kernel (monotonic), from its WARNING line."""

    def __init__(self, kernel_ids: list[str]) -> None:
        super().__init__()
        self.kernel_ids = kernel_ids
        self.decided: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Culling"):
            for kernel_id in self.kernel_ids:
                if kernel_id in message:
                    self.decided.setdefault(kernel_id, time.monotonic())


@pytest.mark.serial
@pytest.mark.parametrize("idle_config", [{"cull_idle_timeout": MANY_TIMEOUT}], indirect=True)
async def test_twenty_kernels_are_all_culled_on_time(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    km = jp_serverapp.kernel_manager
    ids = list(await asyncio.gather(*(start_kernel(jp_fetch) for _ in range(MANY))))
    await wait_for(lambda: all(record(idle_app, k) for k in ids), 60)
    cull_log = CullLog(ids)
    idle_app.log.addHandler(cull_log)
    last: dict[str, float] = {}
    gone: dict[str, float] = {}
    busy_seen: set[str] = set()

    async def follow() -> None:
        """Each kernel's last activity as the tracker saw it, and when it was gone."""
        while len(gone) < MANY:
            alive = set(km.list_kernel_ids())
            for kernel_id in ids:
                rec = record(idle_app, kernel_id)
                if rec is not None:
                    last[kernel_id] = rec.last_activity
                    if rec.busy_since is not None:
                        busy_seen.add(kernel_id)
                if kernel_id not in alive and kernel_id not in gone:
                    gone[kernel_id] = time.monotonic()
            await asyncio.sleep(0.02)

    follower = asyncio.ensure_future(follow())
    try:
        doc = await status(jp_fetch)
        assert {k["id"] for k in doc["kernels"]} == set(ids), "status must list every kernel"
        # work in three of them at different times, so deadlines differ; one works silently
        clients = [await ready_client(idle_app, k) for k in ids[:3]]
        await run(clients[0], "x = 1")
        await asyncio.sleep(1)
        await run(clients[1], "import time; time.sleep(3)")
        await run(clients[2], "print('hello')")
        doc = await status(jp_fetch)
        assert {k["id"] for k in doc["kernels"]} == set(ids), "culled before its deadline"
        await asyncio.wait_for(follower, 60)
    finally:
        follower.cancel()
        idle_app.log.removeHandler(cull_log)
    for client in clients:
        client.stop_channels()

    assert ids[1] in busy_seen
    assert set(cull_log.decided) == set(ids)
    decided_late = {k: cull_log.decided[k] - (last[k] + MANY_TIMEOUT) for k in ids}
    gone_late = {k: gone[k] - (last[k] + MANY_TIMEOUT) for k in ids}
    print(
        f"\n{MANY} kernels: decided {min(decided_late.values()):+.2f}..."
        f"{max(decided_late.values()):+.2f} s, gone {min(gone_late.values()):+.2f}..."
        f"{max(gone_late.values()):+.2f} s after their deadlines"
    )
    # never before the deadline; decided within a second of it, gone a few seconds later
    assert min(decided_late.values()) > -0.1, decided_late
    assert max(decided_late.values()) < 1.5, decided_late
    assert max(gone_late.values()) < 5.0, gone_late
    assert culler_running(idle_app)


# -- B: hostile requests against a real server -------------------------------------------------


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    """One real server for the refusals: none of them may change its state."""
    root = tmp_path_factory.mktemp("hostile") / "root"
    root.mkdir()
    server = ServerProcess(root, args=("--IdleExtension.max_keepalive=600",))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def raw_request(
    url: str,
    method: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    opener: Any = None,
) -> tuple[int, str]:
    """Any request, with the body sent byte for byte; returns the status and the body text."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    open_ = opener.open if opener is not None else urllib.request.urlopen
    try:
        with open_(req, timeout=20) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def keepalive_in_force(server: ServerProcess) -> Any:
    code, doc = server.request("GET", "/api/idle", track=False)
    assert code == 200, doc
    return doc["keepalive"]


WRONG = "not-the-token-" + uuid.uuid4().hex[:8]
ENDPOINTS = [
    ("GET", "/api/idle", None),
    ("POST", "/api/idle/keepalive", b'{"seconds": 60}'),
    ("DELETE", "/api/idle/keepalive", None),
]
CREDENTIALS = {
    "no credentials": ({}, ""),
    "wrong token header": ({"Authorization": f"token {WRONG}"}, ""),
    "wrong bearer token": ({"Authorization": f"Bearer {WRONG}"}, ""),
    "wrong token in URL": ({}, f"?token={WRONG}"),
}


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
def test_requests_without_the_right_token_are_refused(
    hostile_server: ServerProcess, credentials: str
) -> None:
    headers, query = CREDENTIALS[credentials]
    for method, path, body in ENDPOINTS:
        code, text = raw_request(hostile_server.url + path + query, method, body, dict(headers))
        assert code == 403, (method, path, code, text)
        assert '"kernels"' not in text and '"keepalive"' not in text, text
    assert keepalive_in_force(hostile_server) is None


def test_cookie_login_needs_the_xsrf_token_to_change_anything(
    hostile_server: ServerProcess,
) -> None:
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    # open the URL the server prints, as a browser would: it sets the login and _xsrf cookies
    code, _ = raw_request(f"{hostile_server.url}/?token={TOKEN}", "GET", opener=browser)
    assert code == 200
    cookies = {c.name: c.value for c in jar}
    assert any(name.startswith("username-") for name in cookies), cookies
    xsrf = cookies["_xsrf"]
    status_url = hostile_server.url + "/api/idle"
    keepalive_url = hostile_server.url + "/api/idle/keepalive"
    body = b'{"seconds": 60}'

    # the cookie alone authenticates: reading is allowed, changing is not
    code, text = raw_request(status_url, "GET", opener=browser)
    assert code == 200 and json.loads(text)["keepalive"] is None
    for method in ("POST", "DELETE"):
        code, text = raw_request(keepalive_url, method, body, opener=browser)
        assert code == 403, (method, code, text)
        code, text = raw_request(
            keepalive_url, method, body, {"X-XSRFToken": "2|00000000|bad|0"}, opener=browser
        )
        assert code == 403, (method, code, text)
        assert keepalive_in_force(hostile_server) is None

    # with the token from its _xsrf cookie, the page's own request goes through
    code, text = raw_request(keepalive_url, "POST", body, {"X-XSRFToken": xsrf}, opener=browser)
    assert code == 200, text
    assert keepalive_in_force(hostile_server) is not None
    code, text = raw_request(keepalive_url, "DELETE", None, {"X-XSRFToken": xsrf}, opener=browser)
    assert (code, json.loads(text)) == (200, {"cancelled": True})
    assert keepalive_in_force(hostile_server) is None


def _padded(size: int) -> bytes:
    head = b'{"seconds": 60, "padding": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


# (body, expected status, a word the reason must contain)
BAD_BODIES = {
    "invalid JSON": (b'{"seconds": 60', 400, "JSON"),
    "not UTF-8": (b'\x80\x81{"seconds": 60}', 400, "JSON"),
    "empty": (b"", 400, "seconds"),
    "a list": (b"[60]", 400, "seconds"),
    "1 MB": (_padded(1024 * 1024), 413, "larger"),
    "negative": (b'{"seconds": -60}', 400, "> 0"),
    "zero": (b'{"seconds": 0}', 400, "> 0"),
    "NaN literal": (b'{"seconds": NaN}', 400, "number"),
    "NaN string": (b'{"seconds": "NaN"}', 400, "number"),
    "Infinity literal": (b'{"seconds": Infinity}', 400, "number"),
    "1e999": (b'{"seconds": 1e999}', 400, "number"),
    "1e308": (b'{"seconds": 1e308}', 400, "max_keepalive"),
    "a boolean": (b'{"seconds": true}', 400, "number"),
    "deeply nested": (b"[" * 2000 + b"]" * 2000, 400, "JSON"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_keepalive_bodies_are_refused_with_a_reason(
    hostile_server: ServerProcess, case: str
) -> None:
    body, expected, word = BAD_BODIES[case]
    code, text = raw_request(
        hostile_server.url + "/api/idle/keepalive",
        "POST",
        body,
        {"Authorization": f"token {TOKEN}"},
    )
    assert code == expected, (code, text[:500])
    message = json.loads(text)["message"]
    assert word in message, message
    assert "Traceback" not in text
    assert keepalive_in_force(hostile_server) is None, "a refused request changed the state"


# -- B(e): no token ever leaks -----------------------------------------------------------------


async def test_tokens_never_leak_into_responses_logs_or_events(start_server: Any) -> None:
    hub_token = "hub-secret-" + uuid.uuid4().hex
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: every Hub request fails
    server = start_server(
        "--IdleExtension.cull_idle_timeout=3",
        "--IdleExtension.server_idle_timeout=12",
        "--IdleExtension.shutdown_warning=4",
        "--IdleExtension.hub_activity_interval=2",
        "--IdleExtension.max_keepalive=600",
        "--log-level=DEBUG",
        env={
            "JUPYTERHUB_API_TOKEN": hub_token,
            "JUPYTERHUB_ACTIVITY_URL": f"{refused}/hub/api/users/alice/activity",
            "JUPYTERHUB_API_URL": f"{refused}/hub/api",
            "JUPYTERHUB_USER": "alice",
        },
    )
    auth = {"Authorization": f"token {TOKEN}"}
    ws = await websocket_connect(
        HTTPRequest(server.url.replace("http", "ws") + "/api/events/subscribe", headers=auth)
    )
    events: list[str] = []

    async def collect() -> None:
        while (message := await ws.read_message()) is not None:
            events.append(str(message))

    collector = asyncio.ensure_future(collect())
    bodies: list[str] = []

    def request(method: str, path: str, body: bytes | None = None, **headers: str) -> str:
        _, text = raw_request(server.url + path, method, body, headers)
        bodies.append(text)
        return text

    kernel_id = server.start_kernel()
    wait_until(lambda: server.connection_file(kernel_id).exists(), 30)
    execute_over_zmq(server.connection_file(kernel_id), "print('work')")
    request("GET", "/api/idle", Authorization=f"token {TOKEN}")
    request("GET", f"/api/idle?token={TOKEN}")
    request("POST", "/api/idle/keepalive", b'{"seconds": 1}', Authorization=f"token {TOKEN}")
    request("POST", "/api/idle/keepalive", b'{"seconds": 1e9}', Authorization=f"token {TOKEN}")
    request("POST", "/api/idle/keepalive", b"{oops", Authorization=f"token {TOKEN}")
    request("DELETE", "/api/idle/keepalive", Authorization=f"token {TOKEN}")
    request("GET", "/api/idle", Authorization=f"token {hub_token}")
    request("GET", f"/api/idle?token={hub_token}")
    request("POST", "/api/idle/keepalive", b'{"seconds": 1}', Authorization=f"token {hub_token}")

    # the Hub's paths ran and failed, so the token they carry had every chance to show
    def hub_failed() -> Any:
        doc = json.loads(request("GET", "/api/idle", Authorization=f"token {TOKEN}"))
        return doc["hub"]["enabled"] and doc["hub"]["failures"] >= 1 and doc["hub"]["last_error"]

    wait_until(hub_failed, 20)
    # culled, warned, shut down (asking the refusing Hub to stop it first)
    deadline = time.monotonic() + 40
    while server.running:
        if time.monotonic() > deadline:
            raise AssertionError(f"server still running:\n{server.log()[-3000:]}")
        with contextlib.suppress(OSError):
            request("GET", "/api/idle", Authorization=f"token {TOKEN}")
        await asyncio.sleep(0.5)
    assert server.wait_exit(10) == 0
    await asyncio.wait_for(collector, 10)

    log = server.log()
    ours = [line for line in log.splitlines() if "IdleExtension" in line]
    assert any("[E" in line and "Hub" in line for line in ours), "the Hub was never tried"
    assert "Shutting down the server" in log
    actions = {json.loads(e).get("action") for e in events}
    assert {"kernel_culled", "shutdown_warned", "shutdown_started"} <= actions, actions
    for secret in (TOKEN, hub_token):
        assert not [b for b in bodies if secret in b], f"{secret} in a response body"
        assert not [e for e in events if secret in e], f"{secret} in an event"
        assert not [line for line in ours if secret in line], f"{secret} in our log lines"
    assert hub_token not in log
    # jupyter_server itself masks the token in the URLs it prints ("?token=...")
    assert [line for line in log.splitlines() if TOKEN in line] == []


# -- C: load and event-loop lag -----------------------------------------------------------------

WORK = "import time; time.sleep(0.05); print('tick')"


def keep_executing(
    connection_file: Path, stop: threading.Event, done: list[int], index: int
) -> None:
    """Execute short cells back to back over ZMQ until told to stop."""
    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels(hb=False)  # one late heartbeat would read as a dead kernel
    try:
        client.wait_for_ready(timeout=30)
        while not stop.is_set():
            client.execute_interactive(WORK, timeout=30, output_hook=lambda m: None)
            done[index] += 1
    finally:
        client.stop_channels()


async def test_two_hundred_concurrent_status_requests_on_a_real_server(start_server: Any) -> None:
    server = start_server("--IdleExtension.cull_idle_timeout=600")
    kernel_ids = [server.start_kernel() for _ in range(3)]
    for kernel_id in kernel_ids:
        wait_until(lambda k=kernel_id: server.connection_file(k).exists(), 30)
    stop = threading.Event()
    done = [0] * len(kernel_ids)
    workers = [
        threading.Thread(
            target=keep_executing, args=(server.connection_file(k), stop, done, i), daemon=True
        )
        for i, k in enumerate(kernel_ids)
    ]
    for worker in workers:
        worker.start()
    client = AsyncHTTPClient(force_instance=True, max_clients=200)
    try:
        await wait_for(lambda: all(done), 60)
        before = list(done)
        request = HTTPRequest(
            server.url + "/api/idle",
            headers={"Authorization": f"token {TOKEN}"},
            request_timeout=60,
        )
        started = time.monotonic()

        async def timed_fetch() -> tuple[Any, float]:
            asked = time.monotonic()
            response = await client.fetch(request, raise_error=False)
            return response, time.monotonic() - asked

        answers = await asyncio.gather(*(timed_fetch() for _ in range(200)))
        took = time.monotonic() - started
    finally:
        stop.set()
        client.close()
        for worker in workers:
            worker.join(30)
    codes = [response.code for response, _ in answers]
    assert codes == [200] * 200, sorted(set(codes))
    docs = [json.loads(response.body) for response, _ in answers]
    assert all({k["id"] for k in doc["kernels"]} == set(kernel_ids) for doc in docs)
    assert any(k["execution_state"] == "busy" for doc in docs for k in doc["kernels"])
    assert all(after > b for after, b in zip(done, before)), "the kernels stopped working"
    slowest = max(seconds for _, seconds in answers)
    print(f"\n200 concurrent GET api/idle: all in {took:.2f} s, slowest {slowest * 1000:.0f} ms")
    assert took < 30


class LoopbackResolver(Resolver):
    """Resolves the loopback address in place, without the thread pool of the default."""

    async def resolve(self, host: str, port: int, family: Any = 0) -> list[tuple[int, Any]]:
        return [(socket.AF_INET, ("127.0.0.1", port))]


def _voluntary_switches() -> int:
    """How often this thread has gone to sleep on its own (a sleep, a blocking read, a lock)."""
    if _RUSAGE_THREAD is None:
        return 0
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux


class BlockingMeter:
    """How long each synchronous slice of wrapped code holds the event loop.

    A coroutine is timed step by step (each ``send`` between two awaits), so time spent waiting
    on I/O is not counted and time spent computing or blocking always is. A slice that computes
    shows it in the thread's CPU time; one that blocks (a sleep, sync I/O, a subprocess wait)
    goes to sleep on its own, so then its wall time counts. A slice the OS merely preempted (two
    cores, three kernels, maybe another test run) is charged its CPU time only: the loop was held
    by the machine, not by our code. Where the OS cannot tell (not Linux), wall time counts.
    """

    def __init__(self) -> None:
        # per name: (held, wall, cpu) of each slice
        self.slices: dict[str, list[tuple[float, float, float]]] = defaultdict(list)

    def _time(self, name: str, step: Callable[[], Any]) -> Any:
        switches = _voluntary_switches()
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return step()
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            slept = _RUSAGE_THREAD is None or _voluntary_switches() > switches
            self.slices[name].append((wall if slept else cpu, wall, cpu))

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            result = self._time(name, lambda: fn(*args, **kwargs))
            if asyncio.iscoroutine(result):
                return self._steps(name, result)
            return result

        return timed

    @types.coroutine
    def _steps(self, name: str, coro: Any) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = self._time(name, functools.partial(coro.send, value))
                else:
                    yielded = self._time(name, functools.partial(coro.throw, error))
            except StopIteration as stop:
                return stop.value
            try:
                value, error = (yield yielded), None
            except BaseException as e:  # delivered into the wrapped coroutine
                value, error = None, e

    def longest(self, name: str) -> tuple[float, float, float]:
        """The longest (held, wall, CPU) time of any slice."""
        held, wall, cpu = zip(*self.slices[name])
        return max(held), max(wall), max(cpu)


async def test_our_code_never_blocks_the_event_loop(
    idle_app: Any,
    jp_fetch: Any,
    jp_http_port: int,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    monkeypatch: Any,
) -> None:
    """200 concurrent status requests while three kernels execute back to back, in-process.

    The test's own clients share the server's loop here, so the loop's overall lag is only
    reported; what is asserted is the time each piece of our code holds the loop: the status
    handler, every step of each check, and every activity callback.
    """
    meter = BlockingMeter()
    monkeypatch.setattr(StatusHandler, "get", meter.wrap("status handler", StatusHandler.get))
    monkeypatch.setattr(idle_app, "status", meter.wrap("status", idle_app.status))
    culler, tracker = idle_app.culler, idle_app.tracker
    monkeypatch.setattr(culler, "check", meter.wrap("check", culler.check))
    monkeypatch.setattr(tracker, "touch", meter.wrap("activity", tracker.touch))
    monkeypatch.setattr(tracker, "set_busy", meter.wrap("activity", tracker.set_busy))

    kernel_ids = await asyncio.gather(*(start_kernel(jp_fetch) for _ in range(3)))
    clients = []
    for kernel_id in kernel_ids:
        # no heartbeat threads: a thread holding the GIL would be charged to the timed code
        client = idle_app.serverapp.kernel_manager.get_kernel(kernel_id).client()
        client.start_channels(hb=False)
        await client.wait_for_ready(timeout=60)
        clients.append(client)
    stop = asyncio.Event()
    cells = [0] * len(clients)

    async def keep_running(index: int) -> None:
        while not stop.is_set():
            await run(clients[index], WORK)
            cells[index] += 1

    async def wake_the_check_loop() -> None:
        # activity alone does not wake the loop; under load, checks must run too
        while not stop.is_set():
            tracker.changed.set()
            await asyncio.sleep(0.02)

    lag = [0.0]

    async def probe() -> None:
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            lag[0] = max(lag[0], time.perf_counter() - asked - 0.001)

    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}api/idle"
    # no resolver threads: they would compete for the GIL with the code being timed
    http = AsyncHTTPClient(force_instance=True, max_clients=200, resolver=LoopbackResolver())
    workers = [asyncio.ensure_future(keep_running(i)) for i in range(len(clients))]
    await wait_for(lambda: all(cells), 30)
    await status(jp_fetch)  # warm: first-call imports and caches are not the steady state
    meter.slices.clear()
    prober = asyncio.ensure_future(probe())
    waker = asyncio.ensure_future(wake_the_check_loop())
    # a collection of the whole test process could land in any slice; it is not our code
    responses: list[Any] = []
    gc.disable()
    try:
        for _ in range(3):
            responses += await asyncio.gather(
                *(
                    http.fetch(url, headers=jp_auth_header, request_timeout=60, raise_error=False)
                    for _ in range(200)
                )
            )
            await asyncio.sleep(0.5)
    finally:
        gc.enable()
        stop.set()
        http.close()
        await asyncio.gather(*workers, prober, waker, return_exceptions=True)
    for client in clients:
        client.stop_channels()

    counts = {name: len(slices) for name, slices in meter.slices.items()}
    longest = {name: meter.longest(name) for name in meter.slices}
    print(f"\nloop lag overall, the test's own clients included: {lag[0] * 1000:.1f} ms")
    for name, (held, wall, cpu) in longest.items():
        print(
            f"{name}: {counts[name]} slices, held the loop at most {held * 1000:.2f} ms "
            f"(longest wall {wall * 1000:.2f} ms, CPU {cpu * 1000:.2f} ms)"
        )
    for name, (held, _, _) in longest.items():
        assert held < 0.010, f"{name} held the event loop for {held * 1000:.1f} ms"
    # everything we meant to measure did run, under load
    assert counts["status"] >= 600
    assert counts["check"] >= 20, "too few checks ran while the kernels worked"
    assert counts["activity"] >= 100
    assert sum(cells) >= 10
    assert [r.code for r in responses] == [200] * 600
    assert all(len(json.loads(r.body)["kernels"]) == 3 for r in responses)
