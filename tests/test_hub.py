"""S10 behind a real JupyterHub: what the Hub stores is execution activity, and idle servers stop.

A real JupyterHub 6 with configurable-http-proxy, jupyterhub-singleuser servers with our extension,
and jupyterhub-idle-culler as a Hub service. Assertions read what the Hub stores (its REST API and
log), not what the extension sends. The ``test_baseline_*`` tests in test_hub_harness.py show the
same situations without the extension.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from jupyter_idle_ext.pytest_plugin import (
    SELF_STOP_SERVER_TOKEN_SCOPES,
    STATUS_TOKEN,
    Hub,
    hub_factory,
    logged_at,
    utcnow,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

INTERVAL = 2  # seconds between reports, standing in for the default 300


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    with hub_factory(tmp_path) as start:
        yield start


def idle_env(**options: float) -> dict[str, str]:
    env = {"JUPYTER_IDLE_HUB_ACTIVITY_INTERVAL": str(INTERVAL)}
    env.update({f"JUPYTER_IDLE_{k.upper()}": str(v) for k, v in options.items()})
    return env


def test_silent_long_cell_keeps_the_hub_informed(start_hub: Callable[..., Hub]) -> None:
    """S10a: a silent cell longer than the hub culler's timeout; the Hub's last_activity keeps
    moving, the hub culler leaves the server alone, and the cell finishes."""
    culler_timeout = 10
    hub = start_hub(
        environment=idle_env(server_idle_timeout=60, cull_idle_timeout=60),
        last_activity_interval=0,
        culler={"timeout": culler_timeout, "cull_every": 1},
    )
    hub.create_user("alice")
    hub.start_server("alice")
    hub.wait_log(r"(?i)switched off jupyterhub-singleuser.s activity reporter", timeout=10)
    started = utcnow()
    cell = hub.execute("alice", "import time; time.sleep(22); print('done')", wait=False)
    seen = []
    while not cell.done:
        last = hub.last_activity("alice")
        assert last is not None, "the hub culler stopped a server whose kernel was working"
        seen.append(last)
        time.sleep(1)
    assert cell.wait(30).stdout == "done\n"
    assert (utcnow() - started).total_seconds() > culler_timeout + 5
    # the Hub heard "now" all along: its timestamp moved past the culler's timeout
    assert seen[-1] - seen[0] > timedelta(seconds=culler_timeout)
    # and it never went back
    assert min(b - a for a, b in zip(seen, seen[1:])) >= timedelta(0)
    assert "Culling server alice" not in hub.log()
    # and only our reporter posted: jupyterhub-singleuser's re-posts would show as "Not updating"
    assert not [line for line in hub.activity_posts("alice", "") if "Not updating" in line]


@pytest.mark.parametrize("self_stop", [True, False], ids=["stop-through-hub", "exit-and-poll"])
def test_polling_client_cannot_keep_an_idle_server(
    start_hub: Callable[..., Hub], self_stop: bool
) -> None:
    """S10b: REST polling through the proxy after the last execution: the Hub's last_activity
    stays at the execution, the extension stops the server at server_idle_timeout, and the Hub
    shows it stopped (at once when the token may stop it, after a poll otherwise)."""
    idle_timeout = 12
    # with a stop through the Hub, the Hub's poll comes too late to be what records the stop
    poll_interval = 120 if self_stop else 5
    hub = start_hub(
        environment=idle_env(server_idle_timeout=idle_timeout, cull_idle_timeout=6),
        last_activity_interval=0,
        server_token_scopes=SELF_STOP_SERVER_TOKEN_SCOPES if self_stop else None,
        poll_interval=poll_interval,
    )
    hub.create_user("bob")
    hub.start_server("bob")
    result = hub.execute("bob", "x = 1")
    executed = utcnow()
    stored = []
    while hub.server_info("bob") is not None and "Shutting down the server" not in hub.log():
        assert (utcnow() - executed).total_seconds() < idle_timeout + 10
        hub.user_request("bob", "GET", "api/contents")
        hub.user_request("bob", "GET", "api/sessions")
        hub.user_request("bob", "GET", f"api/kernels/{result.kernel_id}")
        stored.append(hub.last_activity("bob"))
        time.sleep(0.5)
    # what the Hub stored while the client polled: the execution, not the polling after it
    # (JupyterHub itself sets last_activity to the stop time once the server stops)
    assert len(stored) > 10 and stored[-1] is not None
    assert abs((stored[-1] - executed).total_seconds()) < 3, (stored[-1], executed)
    # the server's own time of its decision: the loop above notices it only after its requests
    # through the proxy, which took seconds under load
    decided = logged_at(hub.log(), "Shutting down the server", monotonic=False)
    assert decided is not None, "the server did not log its decision"
    assert idle_timeout - 1 <= decided - executed.timestamp() <= idle_timeout + 3
    stopped_after = hub.wait_stopped("bob", timeout=30)
    if self_stop:
        # at once: the server's own exit (which the Hub's stop waits for) and no poll
        assert stopped_after < 15, "the Hub should record the stop without waiting for a poll"
        hub.wait_log(r"DELETE /hub/api/users/bob/server \(bob@", timeout=5)
    else:
        assert "Asked the Hub to stop" not in hub.log()
        assert "does not let this server stop itself" in hub.log()


def test_named_server_reports_under_its_name_and_idle_makes_no_posts(
    start_hub: Callable[..., Hub],
) -> None:
    hub = start_hub(
        environment=idle_env(server_idle_timeout=600, cull_idle_timeout=600),
        last_activity_interval=0,
    )
    hub.create_user("carol")
    hub.start_server("carol", "gpu")
    hub.execute("carol", "x = 1", server_name="gpu")
    executed = utcnow()
    # the activity lands under the named server
    wait_until(
        lambda: (
            (hub.last_activity("carol", "gpu") or executed - timedelta(1))
            > executed - timedelta(seconds=2)
        ),
        10,
    )
    time.sleep(INTERVAL * 1.5)  # the post carrying the last change lands
    posts = hub.count_activity_posts("carol", "gpu")
    assert posts >= 1
    stored = hub.last_activity("carol", "gpu")
    time.sleep(INTERVAL * 5)
    # an idle server makes no posts after its last change, and the Hub's time stays put
    assert hub.count_activity_posts("carol", "gpu") == posts
    assert hub.count_activity_posts("carol") == hub.count_activity_posts("carol", "gpu")
    assert hub.last_activity("carol", "gpu") == stored
    # activity after the quiet stretch is reported at once, not an interval late
    hub.execute("carol", "y = 2", server_name="gpu")
    resumed = utcnow()
    wait_until(lambda: hub.count_activity_posts("carol", "gpu") > posts, INTERVAL * 3)
    stored_again = hub.last_activity("carol", "gpu")
    assert stored_again is not None and stored_again > resumed - timedelta(seconds=2)


def hub_status(hub: Hub, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`jupyter idle hub-status` as an admin runs it, from the Hub's environment."""
    env = {
        **os.environ,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_API_TOKEN": token,
        "JUPYTERHUB_PUBLIC_URL": hub.url,
    }
    return subprocess.run(
        [sys.executable, "-m", "jupyter_idle_ext.cli", "hub-status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# carol's server runs without jupyter_idle_ext
WITHOUT_EXTENSION_FOR_CAROL = """
def _without_extension(spawner):
    if spawner.user.name == "carol":
        spawner.args = [
            a.replace("'jupyter_idle_ext': True", "'jupyter_idle_ext': False") for a in spawner.args
        ]
c.Spawner.pre_spawn_hook = _without_extension
"""


def test_hub_status_lists_every_server_what_keeps_it_and_when_it_stops(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    """Two users, one with a named server: a busy one and an idle one, one row each; a third
    user's server without the extension is listed as such; a token without the admin scopes
    gets a clear error."""
    hub = start_hub(
        environment=idle_env(server_idle_timeout=600, cull_idle_timeout=600),
        last_activity_interval=0,
        # pages of 2 users: hub-status must follow them to list all three
        extra_config=WITHOUT_EXTENSION_FOR_CAROL
        + "\nc.JupyterHub.api_page_default_limit = 2\nc.JupyterHub.api_page_max_limit = 2\n",
    )
    for user in ("alice", "bob", "carol"):
        hub.create_user(user)
    assert hub.api("POST", "/groups/gpu-users", {"users": ["bob"]})[0] == 201
    hub.request_start("alice")
    hub.request_start("bob", "gpu")
    hub.request_start("carol")
    hub.wait_ready("alice")
    hub.wait_ready("bob", "gpu")
    hub.wait_ready("carol")
    # busy until the test has listed it (a fixed length ran out under load)
    flag = tmp_path / "let-the-cell-end"
    cell = hub.execute(
        "alice",
        f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.2)",
        wait=False,
    )
    hub.execute("bob", "x = 1", server_name="gpu")

    def rows() -> list[dict[str, Any]]:
        out = hub_status(hub, STATUS_TOKEN, "--json")
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    found = wait_until(
        lambda: (r := rows()) and any("kernel busy" in x.get("keeps", "") for x in r) and r, 30
    )
    by_user = {(r["user"], r["server"]): r for r in found}
    assert set(by_user) == {("alice", ""), ("bob", "gpu"), ("carol", "")}, found
    assert by_user[("carol", "")]["state"] == "no jupyter_idle_ext", found
    assert by_user[("alice", "")]["keeps"].startswith("kernel busy"), found
    assert by_user[("alice", "")]["shutdown_at"] is None
    idle = by_user[("bob", "gpu")]["keeps"]
    assert idle.startswith("idle ") and "stops in" in idle, idle
    assert by_user[("bob", "gpu")]["shutdown_at"].endswith("Z")
    table = hub_status(hub, STATUS_TOKEN)
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # the README's example
    assert "alice" in table.stdout and "(default)" in table.stdout and "gpu" in table.stdout
    assert "kernel busy" in table.stdout and "stops in" in table.stdout
    assert "no jupyter_idle_ext" in table.stdout

    # filters: by user, by group, by what keeps the server, by idle time
    def listed(*args: str) -> set[tuple[str, str]]:
        out = hub_status(hub, STATUS_TOKEN, "--json", *args)
        assert out.returncode == 0, out.stderr
        return {(r["user"], r["server"]) for r in json.loads(out.stdout)}

    assert listed("--user", "alice") == {("alice", "")}
    assert listed("--group", "gpu-users") == {("bob", "gpu")}
    assert listed("--kept-by", "kernel") == {("alice", "")}
    assert listed("--kept-by", "idle") == {("bob", "gpu")}
    assert listed("--idle-over", "100000") == set()
    assert ("bob", "gpu") in listed("--idle-over", "0")

    # a user's own token may not list the Hub's users: one clear line, no traceback
    refused = hub_status(hub, hub.user_token("bob"))
    assert refused.returncode != 0
    assert "needs an admin role with the scopes" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    flag.touch()
    cell.wait(60)


# The README's group recipe ("Policies per group"), with seconds instead of hours: the value comes
# from the Hub's groups at each spawn, through an environment callable and a pre_spawn_hook.
GROUP_RECIPE = """
c.JupyterHub.load_groups = {"gpu": {"users": ["gina"]}, "cpu": {"users": ["carl"]}}

IDLE_BY_GROUP = {"gpu": 15, "cpu": 3600}  # server_idle_timeout by group, in seconds


def idle_timeout(spawner):
    groups = {group.name for group in spawner.user.groups}
    return str(min((t for g, t in IDLE_BY_GROUP.items() if g in groups), default=3600))


c.Spawner.environment.update(
    {
        "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": idle_timeout,
        # the same value as a ceiling: the user's own config cannot lift it
        "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT_MAX": idle_timeout,
    }
)


def pre_spawn_hook(spawner):
    if "gpu" in {group.name for group in spawner.user.groups}:
        spawner.environment = {**spawner.environment, "JUPYTER_IDLE_CULL_IDLE_TIMEOUT": "10"}


c.Spawner.pre_spawn_hook = pre_spawn_hook
"""


def test_group_policies_from_the_hub_config(start_hub: Callable[..., Hub]) -> None:
    """A gpu group gets shorter timeouts than a cpu group, from the Hub's config alone: the gpu
    member's server culls its idle kernel at 10 s and stops at 15 s, also with
    ``server_idle_timeout = 0`` in that user's own config; the cpu member's server stays."""
    hub = start_hub(
        environment={"JUPYTER_IDLE_HUB_ACTIVITY_INTERVAL": str(INTERVAL)},
        extra_config=GROUP_RECIPE,
    )
    config = hub.homes / "gina" / ".jupyter" / "jupyter_server_config.py"
    config.parent.mkdir(parents=True)
    config.write_text("c.IdleExtension.server_idle_timeout = 0\n")
    hub.request_start("gina")
    hub.request_start("carl")
    hub.wait_ready("gina")
    hub.wait_ready("carl")
    policies = {}
    for user in ("gina", "carl"):
        status, doc = hub.user_request(user, "GET", "api/idle")
        assert status == 200, doc
        policies[user] = doc["policy"]
    assert policies["gina"]["server_idle_timeout"] == 15, policies
    assert policies["gina"]["cull_idle_timeout"] == 10, policies
    assert policies["carl"]["server_idle_timeout"] == 3600, policies
    assert policies["carl"]["cull_idle_timeout"] == 3600, policies
    kernel = hub.start_kernel("gina")
    hub.wait_log(rf"Culling idle kernel 'python3' \({kernel}\)", 30)
    hub.wait_stopped("gina", timeout=40)
    # the WARNING naming both values and where each came from
    assert "IdleExtension.server_idle_timeout = 0 (never, from the configuration" in hub.log()
    assert hub.server_info("carl") is not None
