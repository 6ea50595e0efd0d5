"""The Hub reporter against a fault-injecting local Hub endpoint (next to the real-Hub tests).

A small tornado app plays the Hub's activity API: it records every POST and answers what the test
tells it to (200, 5xx, 403, a hang), so retries, backoff and what is sent can be counted exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_idle_ext.activity import ActivityTracker
from jupyter_idle_ext.hub import HubEnvironment, HubReporter
from jupyter_idle_ext.pytest_plugin import wait_for

TOKEN = "hub-secret-token-9c1e"

pytestmark = pytest.mark.timeout(60)


class FakeHub:
    """Records activity posts; ``answers`` is a queue of status codes (then 200 forever)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self.answers: list[int] = []
        self.deletes: list[str] = []
        self.hang = False
        hub = self

        class Activity(web.RequestHandler):
            async def post(self) -> None:
                hub.headers.append(self.request.headers.get("Authorization", ""))
                hub.posts.append(json.loads(self.request.body))
                if hub.hang:
                    await asyncio.sleep(30)
                code = hub.answers.pop(0) if hub.answers else 200
                self.set_status(code)

        class Server(web.RequestHandler):
            def delete(self, path: str) -> None:
                hub.deletes.append(path)
                self.set_status(hub.answers.pop(0) if hub.answers else 202)

        sock, self.port = bind_unused_port()
        self.server = HTTPServer(
            web.Application(
                [(r"/hub/api/users/alice/activity", Activity), (r"/hub/api/users/(.*)", Server)]
            )
        )
        self.server.add_sockets([sock])

    def environ(self, server_name: str = "") -> HubEnvironment:
        env = HubEnvironment.from_environ(
            {
                "JUPYTERHUB_API_TOKEN": TOKEN,
                "JUPYTERHUB_ACTIVITY_URL": f"http://127.0.0.1:{self.port}/hub/api/users/alice/activity",
                "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.port}/hub/api",
                "JUPYTERHUB_USER": "alice",
                "JUPYTERHUB_SERVER_NAME": server_name,
            }
        )
        assert env is not None
        return env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_hub() -> Any:
    hub = FakeHub()
    yield hub
    hub.server.stop()


@pytest.fixture
def log(caplog: Any) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="test-hub")
    return logging.getLogger("test-hub")


def make_reporter(fake_hub: FakeHub, log: Any, **kwargs: Any) -> tuple[HubReporter, Clock, Any]:
    clock = Clock()
    tracker = ActivityTracker(clock=clock, wall_clock=lambda: 1_800_000_000.0 + clock.now)
    state = {"busy": False}

    async def last_activity() -> float:
        return clock.now if state["busy"] else tracker.last_activity

    reporter = HubReporter(
        hub=kwargs.pop("hub", fake_hub.environ()),
        tracker=tracker,
        interval=kwargs.pop("interval", 300.0),
        log=log,
        last_activity=last_activity,
    )
    reporter.state = state  # type: ignore[attr-defined]
    return reporter, clock, tracker


async def test_posts_in_the_hub_format_only_when_activity_moved(
    fake_hub: FakeHub, log: Any
) -> None:
    reporter, clock, tracker = make_reporter(fake_hub, log, hub=fake_hub.environ("gpu"))
    assert await reporter.report()
    post = fake_hub.posts[0]
    stamp = post["last_activity"]
    assert stamp.endswith("Z") and "T" in stamp
    assert post == {"servers": {"gpu": {"last_activity": stamp}}, "last_activity": stamp}
    assert fake_hub.headers == [f"token {TOKEN}"]
    # nothing happened: an idle hour makes no post at all
    for _ in range(12):
        clock.now += 300
        assert not await reporter.report()
    assert len(fake_hub.posts) == 1
    clock.now += 1
    tracker.touch("kernel", "k1")
    assert await reporter.report()
    assert len(fake_hub.posts) == 2
    assert fake_hub.posts[1]["last_activity"] > stamp


async def test_busy_kernel_reports_now_each_interval(fake_hub: FakeHub, log: Any) -> None:
    reporter, clock, _ = make_reporter(fake_hub, log)
    reporter.state["busy"] = True  # type: ignore[attr-defined]
    stamps = []
    for _ in range(4):
        assert await reporter.report()
        stamps.append(fake_hub.posts[-1]["last_activity"])
        clock.now += 300
    assert stamps == sorted(set(stamps)), "each report of a busy server must move forward"


async def test_server_errors_are_retried_with_bounded_backoff(
    fake_hub: FakeHub, log: Any, caplog: Any
) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    reporter, _, _ = make_reporter(fake_hub, log)
    reporter.sleep = no_sleep
    fake_hub.answers = [503, 502, 500]
    assert await reporter.report()
    assert len(fake_hub.posts) == 4
    assert len(waits) == 3 and waits[0] < waits[2], waits  # growing, jittered
    # a Hub that stays down: bounded attempts, then wait for the next interval
    fake_hub.posts.clear()
    waits.clear()
    reporter.last_sent = None
    fake_hub.answers = [503] * 20
    assert not await reporter.report()
    assert len(fake_hub.posts) == 5
    assert all(w <= 300 for w in waits)
    assert reporter.last_error == "HTTP 503: Service Unavailable"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("\n" not in r.getMessage() for r in errors)
    assert TOKEN not in caplog.text


async def test_forbidden_is_not_retried(fake_hub: FakeHub, log: Any, caplog: Any) -> None:
    reporter, _, _ = make_reporter(fake_hub, log)
    fake_hub.answers = [403]
    assert not await reporter.report()
    assert len(fake_hub.posts) == 1
    assert "HTTP 403" in caplog.text
    assert TOKEN not in caplog.text


async def test_activity_after_an_idle_stretch_is_reported_at_once(
    fake_hub: FakeHub, log: Any
) -> None:
    reporter, clock, tracker = make_reporter(fake_hub, log, interval=300.0)
    task = asyncio.ensure_future(reporter.run())
    try:
        await wait_for(lambda: len(fake_hub.posts) == 1, 5)
        clock.now += 600  # a quiet stretch longer than the interval
        tracker.touch("kernel", "k1")
        # reported now, not up to 300 s later
        await wait_for(lambda: len(fake_hub.posts) == 2, 5)
    finally:
        task.cancel()


async def test_stop_through_the_hub(fake_hub: FakeHub, log: Any, caplog: Any) -> None:
    reporter, _, _ = make_reporter(fake_hub, log, hub=fake_hub.environ("gpu"))
    assert await reporter.stop_server()
    assert fake_hub.deletes == ["alice/servers/gpu"]
    fake_hub.answers = [403]
    assert not await reporter.stop_server()
    assert "delete:servers!server" in caplog.text
    default_server, _, _ = make_reporter(fake_hub, log)
    await default_server.stop_server()
    assert fake_hub.deletes[-1] == "alice/server"
    assert TOKEN not in caplog.text


def test_no_hub_without_its_environment() -> None:
    assert HubEnvironment.from_environ({}) is None
    assert HubEnvironment.from_environ({"JUPYTERHUB_ACTIVITY_URL": "http://hub"}) is None
    assert HubEnvironment.from_environ({"JUPYTERHUB_API_TOKEN": "t"}) is None


@pytest.fixture
def hub_environment(monkeypatch: Any, fake_hub: FakeHub) -> FakeHub:
    for key, value in {
        "JUPYTERHUB_API_TOKEN": TOKEN,
        "JUPYTERHUB_ACTIVITY_URL": f"http://127.0.0.1:{fake_hub.port}/hub/api/users/alice/activity",
    }.items():
        monkeypatch.setenv(key, value)
    return fake_hub


@pytest.mark.parametrize("idle_config", [{"hub_activity_interval": 0.0}], indirect=True)
async def test_interval_zero_turns_our_reporter_off(
    hub_environment: FakeHub, idle_app: Any, jp_fetch: Any
) -> None:
    assert idle_app.reporter is None
    r = await jp_fetch("api", "idle", method="GET")
    assert json.loads(r.body)["hub"] == {"enabled": False, "note": "hub_activity_interval is 0"}
    await asyncio.sleep(0.5)
    assert hub_environment.posts == []


@pytest.mark.parametrize("idle_config", [{"hub_activity_interval": 300.0}], indirect=True)
async def test_under_a_hub_the_reporter_runs_and_reports_at_start(
    hub_environment: FakeHub, idle_app: Any, jp_fetch: Any
) -> None:
    await wait_for(lambda: hub_environment.posts, 5)
    r = await jp_fetch("api", "idle", method="GET")
    hub = json.loads(r.body)["hub"]
    assert hub["enabled"] and hub["posts"] == 1 and hub["last_error"] is None
    assert TOKEN not in r.body.decode()
