"""The real-JupyterHub harness (``Hub`` in jupyter_idle_ext/pytest_plugin.py) works, and what JupyterHub does without our reporter.

The first tests prove the harness: servers (default and named) start through the Hub, cells run
on kernels through the proxy, the Hub's REST API shows their last_activity, a server token with
``delete:servers!server`` stops its own server through the Hub, and jupyterhub-idle-culler runs
as a Hub service with enough scopes to cull.

The ``test_baseline_*`` tests document plain jupyterhub-singleuser (jupyter_idle_ext disabled in
the spawned servers): the problem our extension's Hub reporter exists to fix. They pin
upstream behaviour, so a failure there means JupyterHub changed, not that our code broke.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Callable

import psutil
import pytest

from jupyter_idle_ext.pytest_plugin import (
    SELF_STOP_SERVER_TOKEN_SCOPES,
    Hub,
    hub_factory,
    require_chp,
    utcnow,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    with hub_factory(tmp_path) as start:
        yield start


def test_missing_proxy_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jupyter_idle_ext import pytest_plugin

    monkeypatch.setattr(pytest_plugin, "chp_candidates", lambda: ())
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_chp()
    for value in ("true", "1", "yes", "TRUE"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception):
            require_chp()


def test_servers_start_and_cells_run_through_the_proxy(start_hub: Callable[..., Hub]) -> None:
    """Our extension enabled; a default and a named server; the servers' tokens may stop
    their own server (and only their own) through the Hub."""
    hub = start_hub(server_token_scopes=SELF_STOP_SERVER_TOKEN_SCOPES)
    hub.create_user("alice")
    # both spawns run side by side (the Hub answers 202 at once)
    hub.request_start("alice")
    hub.request_start("alice", "gpu")
    default = hub.wait_ready("alice")
    named = hub.wait_ready("alice", "gpu")
    assert default["url"] == "/user/alice/"
    assert named["url"] == "/user/alice/gpu/"
    # jupyter_idle_ext really runs in both (jupyter_server would run on without a broken one)
    hub.wait_log(r"IdleExtension\] culling kernels idle for", timeout=10, count=2)

    # REST through the proxy with the user's token, as a browser tab
    status, kernels = hub.user_request("alice", "GET", "api/kernels")
    assert (status, kernels) == (200, [])

    before = utcnow()
    result = hub.execute("alice", "print(6 * 7)")
    assert result.stdout == "42\n"
    named_result = hub.execute("alice", "import os; print(os.getcwd())", server_name="gpu")
    assert named_result.stdout.strip() == str(hub.homes / "alice")

    # the Hub shows a last_activity for each server (what our reporter will move)
    for server_name in ("", "gpu"):
        last_activity = hub.last_activity("alice", server_name)
        assert last_activity is not None
        assert last_activity > before - timedelta(minutes=1)

    # the server token got the scopes asked for, resolved to this one server
    status, tokens = hub.api("GET", "/users/alice/tokens")
    assert status == 200, tokens
    scopes = {t["note"]: set(t["scopes"]) for t in tokens["api_tokens"] if "Server at" in t["note"]}
    assert "delete:servers!server=alice/gpu" in scopes["Server at /user/alice/gpu/"], scopes

    # a server's own token stops its own server through the Hub at once, not another one
    stop_self = (
        "import json, os, urllib.error, urllib.request\n"
        "def delete(server):\n"
        "    url = os.environ['JUPYTERHUB_API_URL'] + '/users/alice/' + server\n"
        "    req = urllib.request.Request(url, method='DELETE', headers={\n"
        "        'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
    )
    other = hub.execute("alice", stop_self + "print(delete('servers/gpu'))")
    # (JupyterHub answers 404, not 403, when the scope's filter excludes the server)
    assert other.stdout.strip() in ("403", "404")
    # (the request returns once the server is gone, kernel included: no reply to wait for)
    hub.execute("alice", stop_self + "delete('servers/gpu')", server_name="gpu", wait=False)
    assert hub.wait_stopped("alice", "gpu", timeout=15) < 15
    hub.wait_log(r"20[24] DELETE /hub/api/users/alice/servers/gpu \(alice@", timeout=5)
    assert hub.server_info("alice") is not None

    # stopping the Hub stops everything it started: servers, kernels, the proxy
    started = hub.processes()
    assert len(started) >= 3, started  # proxy, server, kernel
    hub.stop()
    assert not hub.orphans
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in started), 10)


def test_baseline_polling_client_keeps_hub_activity_moving_and_culler_away(
    start_hub: Callable[..., Hub],
) -> None:
    """BASELINE, plain jupyterhub-singleuser (our extension disabled), the proxy's activity
    off (``last_activity_interval=0``), singleuser reporting every 2 s, the hub culler at 12 s.

    1. A client that polls the REST API through the proxy after its last execution makes the
       Hub's last_activity for the server keep moving: the false keep our extension fixes. The
       hub culler, which only sees that timestamp, leaves the server alone for as long as the
       client polls, well past its timeout.
    2. Idle (nothing polls): jupyterhub-singleuser re-posts the same timestamp every interval
       (the Hub logs "Not updating server activity"), and the Hub's last_activity stays put.
    3. The hub culler culls the server ~12 s after the polling stopped (so the harness's culler
       service has the scopes it needs). The idle count ends well before that.
    """
    interval, culler_timeout = 2, 12
    hub = start_hub(
        extension=False,
        hub_activity_interval=interval,
        last_activity_interval=0,
        culler={"timeout": culler_timeout, "cull_every": 1},
    )
    hub.create_user("bob")
    hub.start_server("bob")
    result = hub.execute("bob", "x = 1")
    executed = utcnow()
    # the execution reaches the Hub with the next post
    early = executed - timedelta(seconds=2)
    wait_until(lambda: (hub.last_activity("bob") or early) > early, 10)

    # 1. poll like an open tab: every second, for longer than the hub culler's timeout
    polled = culler_timeout + 3
    end = time.monotonic() + polled
    while time.monotonic() < end:
        assert hub.user_request("bob", "GET", f"api/kernels/{result.kernel_id}")[0] == 200
        time.sleep(1)
    moved = hub.last_activity("bob")
    assert moved is not None, "the hub culler culled a server its client was polling"
    moved_by = (moved - executed).total_seconds()
    print(f"\nbaseline: Hub last_activity {moved_by:.1f} s past the execution after {polled} s")
    assert moved_by > polled - 2 * interval - 1, (moved, executed)
    assert "Culling server bob" not in hub.log()

    # 2. idle: count the posts and watch the timestamp
    posts_before = hub.count_activity_posts("bob")
    server_posts_before = hub.count_activity_posts("bob", "")
    time.sleep(interval + 1)  # the post of the last poll's activity lands
    idle_from = hub.last_activity("bob")
    assert idle_from is not None
    idle_posts_before = hub.count_activity_posts("bob")
    idle_seconds = 5
    time.sleep(idle_seconds)
    idle_posts = hub.count_activity_posts("bob") - idle_posts_before
    unchanged = hub.activity_posts("bob", "")[server_posts_before:]
    assert hub.last_activity("bob") == idle_from
    print(
        f"baseline: {idle_posts} activity posts in {idle_seconds} s idle "
        f"(interval {interval} s), {hub.count_activity_posts('bob') - posts_before} since "
        f"polling stopped; server lines: {[line.split('] ', 1)[1] for line in unchanged]}"
    )
    assert idle_posts >= 1, "jupyterhub-singleuser stopped posting while idle"
    assert any("Not updating server activity on bob/" in line for line in unchanged)

    # 3. the hub culler culls once the Hub's timestamp stays put
    hub.wait_stopped("bob", timeout=culler_timeout + 20)
    hub.wait_log(r"Culling server bob \(inactive for", timeout=5)
    idle_for = (utcnow() - idle_from).total_seconds()
    print(f"baseline: hub culler stopped the server {idle_for:.1f} s after its last activity")
    assert idle_for >= culler_timeout
