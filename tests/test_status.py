"""The status endpoint, keep-alive, metrics and events through the real server (S1, S2, S8, S11)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from jupyter_idle_ext.pytest_plugin import kernel_gone, ready_client, start_kernel, wait_for

pytestmark = pytest.mark.timeout(120)


async def status(jp_fetch: Any) -> dict[str, Any]:
    r = await jp_fetch("api", "idle", method="GET")
    return dict(json.loads(r.body))


async def keepalive(jp_fetch: Any, body: Any, method: str = "POST") -> tuple[int, dict[str, Any]]:
    try:
        kwargs = {"body": body if isinstance(body, str) else json.dumps(body)} if body else {}
        r = await jp_fetch("api", "idle", "keepalive", method=method, **kwargs)
        return r.code, json.loads(r.body)
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body) if e.response else {}


def kernel_entry(doc: dict[str, Any], kernel_id: str) -> dict[str, Any]:
    return next(k for k in doc["kernels"] if k["id"] == kernel_id)


async def test_status_explains_an_idle_kernel(idle_app: Any, jp_fetch: Any) -> None:
    """S1: an idle kernel shows its cull deadline and why."""
    kernel_id = await start_kernel(jp_fetch)
    await wait_for(lambda: ("kernel", kernel_id) in idle_app.tracker.records, 30)
    doc = await status(jp_fetch)
    entry = kernel_entry(doc, kernel_id)
    assert entry["action"] == "keep"
    assert entry["execution_state"] == "idle"
    assert entry["cull_at"].endswith("Z")
    assert "cull_idle_timeout" in entry["reason"]
    assert doc["now"].endswith("Z") and doc["last_activity"].endswith("Z")
    assert doc["lastActiveTimestamp"].endswith("z")  # SageMaker's format
    assert doc["policy"]["cull_idle_timeout"] == 3.0
    assert doc["hub"] == {"enabled": False, "note": "not running under JupyterHub"}
    # reading the status is not activity: the kernel is still culled on time
    while not await kernel_gone(jp_fetch, kernel_id):
        await status(jp_fetch)
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    # a server rule on (never reached here), so that the server says what keeps it
    "idle_config",
    [{"max_busy_time": 4.0, "server_idle_timeout": 600.0}],
    indirect=True,
)
async def test_status_explains_a_busy_kernel_and_its_cap(idle_app: Any, jp_fetch: Any) -> None:
    """S2 and S8: a busy kernel says how long it has been busy, and the cap is its deadline;
    until the cap it keeps the server, and the status says so."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    client.execute("import time; time.sleep(60)")
    await wait_for(lambda: idle_app.tracker.records[("kernel", kernel_id)].busy_since, 10)
    doc = await status(jp_fetch)
    entry = kernel_entry(doc, kernel_id)
    assert entry["execution_state"] == "busy"
    assert entry["reason"].startswith("busy for")
    assert entry["busy_seconds"] is not None
    assert entry["cull_at"] is not None  # busy_since + max_busy_time
    assert doc["idle_seconds"] == 0.0, "a working server is not idle"
    kept_by = doc["server"]["kept_by"]
    assert kept_by["what"] == "kernel busy" and 0 <= kept_by["busy_seconds"] < 4, doc["server"]
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 20)
    assert (await status(jp_fetch))["server"]["kept_by"] is None
    client.stop_channels()


async def test_unauthenticated_requests_are_refused(
    jp_serverapp: Any, http_server_client: Any
) -> None:
    for path, method, body in (
        ("/a%40b/api/idle", "GET", None),
        ("/a%40b/api/idle/keepalive", "POST", '{"seconds": 60}'),
        ("/a%40b/api/idle/keepalive", "DELETE", None),
    ):
        with pytest.raises(HTTPClientError) as e:
            await http_server_client.fetch(path, method=method, body=body)
        assert e.value.code == 403, path


class DenyIdle(Authorizer):  # type: ignore[misc]
    """An Authorizer that refuses everything of jupyter_idle_ext, and allows the rest."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return not resource.startswith("jupyter_idle_ext")


@pytest.mark.parametrize(
    "extra_server_config", [{"ServerApp": {"authorizer_class": DenyIdle}}], indirect=True
)
async def test_an_authorizer_that_denies_us_gets_403_from_every_endpoint(
    idle_app: Any, jp_fetch: Any
) -> None:
    for path, method, body in (
        (("api", "idle"), "GET", None),
        (("api", "idle", "keepalive"), "POST", '{"seconds": 60}'),
        (("api", "idle", "keepalive"), "DELETE", None),
        (("api", "idle", "stop-when-done"), "POST", "{}"),
        (("api", "idle", "stop-when-done"), "DELETE", None),
        (("api", "idle", "edit"), "POST", '{"path": "notes.md"}'),
        (("api", "idle", "unsaved"), "POST", '{"page": "p", "documents": [{"path": "a.md"}]}'),
    ):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch(*path, method=method, body=body)
        assert e.value.code == 403, (path, method)
    assert idle_app.tracker.keepalive_until is None
    assert idle_app.tracker.stop_when_done is None
    assert ("document", "notes.md") not in idle_app.tracker.records
    assert idle_app.unsaved.documents() == []
    # the rest of the server is not ours to refuse
    assert (await jp_fetch("api", "kernels", method="GET")).code == 200


@pytest.mark.parametrize("idle_config", [{"max_keepalive": 600.0}], indirect=True)
async def test_keepalive_refusals_change_nothing(idle_app: Any, jp_fetch: Any) -> None:
    for body, code, words in (
        ({"seconds": 601}, 400, "max_keepalive"),
        ("{not json", 400, "JSON"),
        ({"seconds": -5}, 400, "> 0"),
        ({"seconds": "600"}, 400, "number"),
        ({"seconds": True}, 400, "number"),
        ({"hours": 1}, 400, "seconds"),
        ("[600]", 400, "seconds"),
        ({"seconds": 1e308 * 10}, 400, "number"),
        ("x" * 10000, 413, "larger"),
    ):
        got, answer = await keepalive(jp_fetch, body)
        assert got == code, (body, answer)
        assert words in answer["message"], (body, answer)
        assert (await status(jp_fetch))["keepalive"] is None
    assert idle_app.tracker.keepalive_until is None


@pytest.mark.parametrize("idle_config", [{"max_keepalive": 0.0}], indirect=True)
async def test_keepalive_disabled_answers_403(idle_app: Any, jp_fetch: Any) -> None:
    code, answer = await keepalive(jp_fetch, {"seconds": 60})
    assert code == 403
    assert "max_keepalive = 0" in answer["message"]
    assert idle_app.tracker.keepalive_until is None


async def test_keepalive_granted_shown_and_cancelled(
    idle_app: Any, jp_fetch: Any, caplog: Any
) -> None:
    code, answer = await keepalive(jp_fetch, {"seconds": 1800})
    assert code == 200
    until = answer["keepalive"]["until"]
    doc = await status(jp_fetch)
    assert doc["keepalive"]["until"] == until
    assert 1790 < doc["keepalive"]["seconds_left"] <= 1800
    assert "Keep-alive granted" in caplog.text
    code, answer = await keepalive(jp_fetch, None, method="DELETE")
    assert (code, answer) == (200, {"cancelled": True})
    assert (await status(jp_fetch))["keepalive"] is None
    assert "Keep-alive cancelled" in caplog.text


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_move_when_a_kernel_is_culled(idle_app: Any, jp_fetch: Any) -> None:
    before = (await jp_fetch("metrics", method="GET")).body.decode()
    kernel_id = await start_kernel(jp_fetch)
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    after = (await jp_fetch("metrics", method="GET")).body.decode()
    name = 'jupyter_idle_ext_kernels_culled_total{reason="cull_idle_timeout"}'
    assert metric(after, name) == metric(before, name) + 1
    assert "jupyter_idle_ext_idle_seconds" in after
    # in-process: no shutdown rule; outside a Hub the user and server labels are empty
    assert 'jupyter_idle_ext_seconds_to_shutdown{server="",user=""} -1.0' in after
    # the kernel was idle and is gone, nothing else works: the time so far was idle
    idle = [
        line
        for line in after.splitlines()
        if line.startswith("jupyter_idle_ext_kept_seconds_total{") and 'kept_by="idle"' in line
    ]
    assert idle and float(idle[0].rsplit(" ", 1)[1]) > 0, after


def test_usage_counts_each_interval_for_what_kept_the_server_at_its_start() -> None:
    from jupyter_idle_ext.metrics import Usage

    now = [100.0]
    readings = iter([("kernel", ""), ("kernel", ""), ("idle", "document"), ("keepalive", "")])
    usage = Usage(lambda: next(readings), ("alice", "gpu"), clock=lambda: now[0])
    now[0] = 110.0
    assert usage.count() == {("idle", "none"): 10.0}  # from the start: nothing read yet
    now[0] = 130.0
    assert usage.count() == {("idle", "none"): 10.0, ("kernel", ""): 20.0}
    now[0] = 135.0
    assert usage.count() == {("idle", "none"): 10.0, ("kernel", ""): 25.0}
    now[0] = 136.0
    text = "".join(str(m) for m in usage.families())
    assert "alice" in text and "gpu" in text
    assert usage.count()[("idle", "document")] == 1.0


async def test_events_reach_a_subscribed_client(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    ws = await jp_ws_fetch("api", "events", "subscribe")
    kernel_id = await start_kernel(jp_fetch)
    code, _ = await keepalive(jp_fetch, {"seconds": 60})
    assert code == 200
    actions = {}
    deadline = time.monotonic() + 30
    while "kernel_culled" not in actions:
        assert time.monotonic() < deadline, actions
        message = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
        event = json.loads(message)
        if event.get("schema_id", "").startswith("https://events.jupyter.org/jupyter_idle_ext"):
            actions[event["action"]] = event
    assert actions["kernel_culled"]["id"] == kernel_id
    assert "cull_idle_timeout" in actions["kernel_culled"]["reason"]
    assert actions["keepalive_granted"]["at"].endswith("Z")
    ws.close()


def test_keepalive_holds_the_server_until_it_expires(start_server: Any) -> None:
    """S11 with a real server: granted up to the cap, shown in status, holds until it ends."""
    server = start_server(
        "--IdleExtension.server_idle_timeout=5",
        "--IdleExtension.shutdown_warning=2",
        "--IdleExtension.max_keepalive=12",
    )
    code, answer = server.request("POST", "/api/idle/keepalive", {"seconds": 13})
    assert code == 400 and "max_keepalive" in answer["message"]
    code, answer = server.request("POST", "/api/idle/keepalive", {"seconds": 12})
    assert code == 200, answer
    granted = time.monotonic()
    code, doc = server.request("GET", "/api/idle")
    assert doc["keepalive"]["until"] == answer["keepalive"]["until"]
    assert doc["server"]["rule"] == "keepalive"
    assert doc["server"]["shutdown_at"] == answer["keepalive"]["until"]
    assert server.wait_exit(30) == 0
    held = time.monotonic() - granted
    assert 11 <= held < 12 + 4, held
    assert "Shutting down the server: keep-alive ended" in server.log()


def test_polling_the_status_never_delays_the_shutdown(start_server: Any) -> None:
    """Platforms poll api/idle; S12's status shows the age rule and its warning, on time."""
    server = start_server(
        "--IdleExtension.server_idle_timeout=3600",
        "--IdleExtension.max_server_age=10",
        "--IdleExtension.shutdown_warning=4",
    )
    seen_warning = None
    while server.running:
        try:
            code, doc = server.request("GET", "/api/idle", timeout=2)
        except OSError:
            break
        if code != 200:
            break
        assert doc["server"]["rule"] == "max_server_age", doc["server"]
        if doc["server"]["warning"]:
            seen_warning = doc["server"]["warning"]
        time.sleep(0.2)
    assert server.wait_exit(20) == 0
    exited = time.monotonic()
    assert exited - server.started >= 10, exited - server.started
    assert exited - server.ready_at < 10 + 8, exited - server.ready_at
    assert seen_warning is not None and seen_warning["rule"] == "max_server_age"
    assert seen_warning["shutdown_at"].endswith("Z")


def test_jupyter_idle_status_explains_a_running_server(start_server: Any) -> None:
    """The admin's command finds the running server and explains its kernel and shutdown."""
    server = start_server("--IdleExtension.cull_idle_timeout=600")
    kernel_id = server.start_kernel()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(server.runtime_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_idle_ext.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"Server {server.url}/" in out
    assert f"kernel {kernel_id[:8]} python3" in out
    assert "of cull_idle_timeout 600 s, culled at" in out
    assert "shuts down at" in out and "rule server_idle_timeout" in out
    assert "hub: not running under JupyterHub" in out
    # the status is not activity: the kernel's idle time keeps growing
    _, doc = server.request("GET", "/api/idle")
    assert doc["kernels"][0]["idle_seconds"] > 0
