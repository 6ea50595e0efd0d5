"""Kernels on a gateway (S18): a real Jupyter Enterprise Gateway and a real Jupyter Kernel Gateway
run them (each test runs with both), the server under test
runs with ``--gateway-url`` and relays a tab's websocket.

Executions and a silent busy cell keep the remote kernel and the server; an idle remote kernel is
culled on time through the gateway while a tab stays connected and polls; reconnects sending
``kernel_info`` (which move the gateway's own ``last_activity``) never count; after the idle
shutdown the gateway holds no kernel of this server. Also the fail-safe rule: a kernel manager
whose kernels cannot be followed never has them culled, and they keep the server up to
``max_busy_time``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyter_server.gateway.connections import GatewayWebSocketConnection

from jupyter_idle_ext.activity import ActivityTracker
from jupyter_idle_ext.compat import Capabilities
from jupyter_idle_ext.pytest_plugin import Gateway, KernelSocket, ServerProcess, wait_until
from jupyter_idle_ext.sources.gateway import CLOCK_MARGIN, GatewayRelay

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["enterprise", "kernel"])
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """Jupyter Enterprise Gateway, and Jupyter Kernel Gateway."""
    gw = Gateway(tmp_path, request.param)
    yield gw
    gw.stop()


def options(**values: float) -> tuple[str, ...]:
    return tuple(f"--IdleExtension.{name}={value}" for name, value in values.items())


def remote_kernel(server: ServerProcess, kernel_id: str) -> dict[str, Any] | None:
    status, doc = server.request("GET", "/api/idle", track=False)
    assert status == 200, doc
    return next((k for k in doc["kernels"] if k["id"] == kernel_id), None)


class Poller(threading.Thread):
    """A forgotten tab: lists the kernels every 2 s (which copies the gateway's model over)."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(2):
            try:
                self.server.request("GET", "/api/kernels", timeout=5)
            except OSError:
                return


def test_executions_keep_a_remote_kernel_then_it_is_culled_and_the_server_stops(
    gateway: Gateway, start_server: Any
) -> None:
    server = start_server(
        f"--gateway-url={gateway.url}",
        *options(cull_idle_timeout=8, server_idle_timeout=16, shutdown_warning=3),
    )
    assert "kernels (on the gateway" in server.log()
    kernel_id = server.start_kernel()
    tab = KernelSocket(server.url, kernel_id)
    poller = Poller(server)
    poller.start()
    try:
        # a cell every 3 s for longer than both timeouts
        started = time.monotonic()
        while time.monotonic() - started < 20:
            reply = tab.execute("x = 1 + 1")
            assert reply["content"]["status"] == "ok"
            time.sleep(3)
        last_execution = time.monotonic()
        assert server.running, server.log()[-2000:]
        assert gateway.kernels() == [kernel_id]
        model = remote_kernel(server, kernel_id)
        assert model is not None
        assert model["remote"] == gateway.url
        assert model["connections"] == 1
        assert model["action"] == "keep"
        # now nothing runs, the tab stays connected and keeps polling
        wait_until(lambda: kernel_id not in gateway.kernels(), 20)
        culled_after = time.monotonic() - last_execution
        assert 5 <= culled_after <= 16, culled_after
        log = server.wait_log("Culling idle remote kernel", 5)
        assert f"({kernel_id}) on the gateway {gateway.url} with 1 connections" in log
        assert server.wait_exit(30) == 0
        stopped_after = time.monotonic() - last_execution
        assert 13 <= stopped_after <= 26, stopped_after
    finally:
        poller.done.set()
        tab.close()
    assert "Shutting down the server: idle" in server.log()
    assert gateway.kernels() == []


def test_a_silent_busy_remote_cell_keeps_kernel_and_server_after_its_tab_closed(
    gateway: Gateway, start_server: Any
) -> None:
    server = start_server(
        f"--gateway-url={gateway.url}",
        *options(cull_idle_timeout=5, server_idle_timeout=9, shutdown_warning=2),
    )
    kernel_id = server.start_kernel()
    tab = KernelSocket(server.url, kernel_id)
    msg_id = tab.send("execute_request", {"code": "import time; time.sleep(24)", "silent": False})
    # the cell has started (under load the gateway may relay it seconds later; closed before,
    # the tab would leave an idle kernel, rightly culled)
    tab.wait_reply(msg_id, "execute_input", 60)
    # a request on the control channel, answered while the cell runs (JupyterLab's debugger sends
    # them; a gateway's own connect sends kernel_info there): its status "idle" leaves Enterprise
    # Gateway's model saying "idle" with the cell still running
    info = tab.send("kernel_info_request", {}, channel="control")
    tab.wait_reply(info, "status", 60, state="idle")
    time.sleep(1)
    tab.close()  # nothing is relayed any more: only the gateway's model shows the cell runs
    started = time.monotonic()
    time.sleep(16)  # past both timeouts
    assert server.running, server.log()[-2000:]
    assert gateway.kernels() == [kernel_id], (
        f"server:\n{server.log()[-3000:]}\ngateway:\n{gateway.log()[-3000:]}"
    )
    model = remote_kernel(server, kernel_id)
    assert model is not None and model["execution_state"] == "busy", model
    # the cell ends about 23 s after the tab closed: then the kernel is culled and the server
    # stops a server_idle_timeout later
    assert server.wait_exit(40) == 0
    stopped_after = time.monotonic() - started
    assert 22 + 9 - 6 <= stopped_after <= 22 + 9 + 12, stopped_after
    assert gateway.kernels() == []


def test_reconnects_with_kernel_info_to_an_idle_remote_kernel_do_not_keep_the_server(
    gateway: Gateway, start_server: Any
) -> None:
    """Each reconnect makes the gateway send kernel_info and moves its own last_activity; a
    tab polling the kernel list copies that over. None of it is activity."""
    server = start_server(
        f"--gateway-url={gateway.url}",
        *options(cull_idle_timeout=0, server_idle_timeout=10, shutdown_warning=2),
    )
    started = time.monotonic()
    kernel_id = server.start_kernel()
    poller = Poller(server)
    poller.start()
    try:
        while server.running and time.monotonic() - started < 40:
            try:
                tab = KernelSocket(server.url, kernel_id)
                tab.kernel_info()
                tab.close()
            except Exception:
                break  # the server is stopping
            time.sleep(2)
        assert server.wait_exit(30) == 0
    finally:
        poller.done.set()
    stopped_after = time.monotonic() - started
    assert stopped_after <= 10 + 8, stopped_after
    assert "Shutting down the server: idle" in server.log()
    # the stop shut the kernel down on the gateway
    assert gateway.kernels() == []


UNWATCHED = '''
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class UnwatchedKernelManager(AsyncMappingKernelManager):
    """A kernel manager whose kernels no IOPub watcher follows (a stand-in for a custom one)."""

    def start_watching_activity(self, kernel_id):
        pass
'''


def test_kernels_that_cannot_be_followed_are_never_culled_and_keep_the_server_to_the_cap(
    tmp_path: Path, start_server: Any
) -> None:
    (tmp_path / "unwatched.py").write_text(UNWATCHED)
    server = start_server(
        "--ServerApp.kernel_manager_class=unwatched.UnwatchedKernelManager",
        *options(cull_idle_timeout=3, server_idle_timeout=5, shutdown_warning=2, max_busy_time=16),
        env={"PYTHONPATH": str(tmp_path)},
    )
    kernel_id = server.start_kernel()
    server.wait_log("cannot be followed", 15)
    time.sleep(8)  # past both timeouts
    assert server.running, server.log()[-2000:]
    assert kernel_id in server.kernel_ids()
    model = remote_kernel(server, kernel_id)
    assert model is not None
    assert model["reason"] == "its activity cannot be seen: never culled"
    _, doc = server.request("GET", "/api/idle", track=False)
    assert doc["server"]["kept_by"]["what"] == "kernel not observable", doc["server"]
    # max_busy_time ends what nothing can see: the server stops, the kernel was never culled
    assert server.wait_exit(30) == 0
    log = server.log()
    assert log.count("cannot be followed") == 1
    assert "Culling" not in log
    assert "Shutting down the server" in log


def test_the_gateways_stale_idle_does_not_end_a_busy_period_after_the_tab_left() -> None:
    """The relay's rule for Enterprise Gateway's model (which takes its state from every status):
    after the tab left, an "idle" the gateway had already shown while the cell ran ends the busy
    period only once its last_activity is clearly after the last message relayed."""
    wall = [1_000_000.0]
    tracker = ActivityTracker(wall_clock=lambda: wall[0])
    web_app = SimpleNamespace(
        settings={"kernel_websocket_connection_class": GatewayWebSocketConnection}
    )
    km = SimpleNamespace(track_message_type=lambda t: t not in ("kernel_info_request", None))
    relay = GatewayRelay(web_app, km, tracker, Capabilities(None), logging.getLogger("test"))

    def status(state: str, parent: str) -> str:
        return json.dumps(
            {
                "header": {"msg_type": "status"},
                "parent_header": {"msg_type": parent},
                "content": {"execution_state": state},
                "channel": "iopub",
            }
        )

    def at(seconds_after_relay: float) -> datetime:
        return datetime.fromtimestamp(wall[0] + seconds_after_relay, timezone.utc)

    def busy(kernel_id: str) -> bool:
        return tracker.records[("kernel", kernel_id)].busy_since is not None

    # a cell runs, and a control request is answered meanwhile: the gateway's model says "idle"
    relay.relayed("k", status("busy", "execute_request"))
    relay.relayed("k", status("busy", "kernel_info_request"))
    relay.relayed("k", status("idle", "kernel_info_request"))
    assert busy("k")
    relay.polled("k", "idle", at(0))  # the model read with no tab: that same "idle"
    assert busy("k")
    relay.polled("k", "idle", at(CLOCK_MARGIN / 2))  # within the clocks' margin: still that one
    assert busy("k")
    relay.polled("k", "idle", at(CLOCK_MARGIN + 5))  # a message after the tab left: the cell's end
    assert not busy("k")

    # with no stray status while the cell ran, the model's "idle" is the cell's end at once
    relay.relayed("j", status("busy", "execute_request"))
    relay.polled("j", "idle", at(0))
    assert not busy("j")
    relay.close()
