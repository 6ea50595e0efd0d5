"""One plan per check: the loop decides, every reader (status, metrics, the Hub reporter) reads its
latest snapshot and plan, and a wake-up that arrives during a check is never lost."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import jupyter_idle_ext.culler as culler_module
from jupyter_idle_ext.pytest_plugin import wait_for

pytestmark = pytest.mark.timeout(120)

# kernels culled after 300 s: the loop has no reason to look again before then by itself
LONG = {"cull_idle_timeout": 300.0}


async def start_kernel(jp_fetch: Any) -> str:
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    return str(json.loads(r.body)["id"])


async def status(jp_fetch: Any) -> dict[str, Any]:
    r = await jp_fetch("api", "idle", method="GET")
    return dict(json.loads(r.body))


@pytest.mark.parametrize("idle_config", [LONG], indirect=True)
async def test_kernels_started_during_a_slow_check_are_found_within_a_second(
    idle_app: Any, jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with remote kernels, whose is_alive awaits: each check takes a second."""
    kernels = idle_app.culler.kernels
    original = kernels.refresh
    checks: list[float] = []

    async def slow_refresh(every: bool = True) -> None:
        await original(every)
        checks.append(time.monotonic())
        await asyncio.sleep(1.0)

    monkeypatch.setattr(kernels, "refresh", slow_refresh)
    for _ in range(3):
        before = len(checks)
        idle_app.tracker.changed.set()
        await wait_for(lambda b=before: len(checks) > b, 5)  # a check is under way
        kernel_id = await start_kernel(jp_fetch)
        started = time.monotonic()
        await wait_for(lambda k=kernel_id: ("kernel", k) in idle_app.tracker.records, 5, 0.02)
        assert time.monotonic() - started < 1.5, "a kernel start during a check was lost"
        # and the status, read right after the start, lists it
        assert kernel_id in [k["id"] for k in (await status(jp_fetch))["kernels"]]


# a kernel that is not culled while the reads are counted (at 3 s, the cull came inside them)
@pytest.mark.parametrize("idle_config", [{"cull_idle_timeout": 600.0}], indirect=True)
async def test_reading_the_status_decides_nothing_and_changes_nothing(
    idle_app: Any, jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_kernel(jp_fetch)
    # until the kernel's start-up messages are over
    quiet: list[int] = []

    async def settled() -> bool:
        quiet.append(idle_app.tracker.generation)
        await status(jp_fetch)
        return len(quiet) > 3 and len(set(quiet[-3:])) == 1

    await wait_for(settled, 20, 0.3)
    decisions: list[Any] = []
    decide = culler_module.decide

    def counted(*args: Any) -> Any:
        decisions.append(args)
        return decide(*args)

    monkeypatch.setattr(culler_module, "decide", counted)
    # A late message of the kernel's own start-up is activity, and the next read
    # decides on it as it should; so is the loop's own check when its time comes: such a
    # window is measured again.
    for _ in range(5):
        generation = idle_app.tracker.generation
        first = await status(jp_fetch)
        decisions.clear()
        plan = idle_app.culler.plan
        docs = []
        for _ in range(10):
            docs.append(await status(jp_fetch))
            await asyncio.sleep(0.1)
        due = plan.next_check <= idle_app.tracker.clock() + 0.5
        if idle_app.tracker.generation == generation and not due:
            break
    assert idle_app.tracker.generation == generation, "reading the status changed the state"
    assert decisions == [], "a status read made the loop decide again with nothing new"
    assert idle_app.culler.plan is plan
    # the same decisions, with durations counted to each read
    assert {d["kernels"][0]["cull_at"] for d in [first, *docs]} == {first["kernels"][0]["cull_at"]}
    idle = [d["kernels"][0]["idle_seconds"] for d in docs]
    assert idle == sorted(idle) and idle[-1] > idle[0]


async def test_activity_since_the_last_check_is_in_the_next_status(
    idle_app: Any, jp_fetch: Any
) -> None:
    before = await status(jp_fetch)
    await jp_fetch(
        "api",
        "contents",
        "new.md",
        method="PUT",
        body=json.dumps({"type": "file", "format": "text", "content": "x"}),
    )
    await wait_for(lambda: ("document", "new.md") in idle_app.tracker.records, 5)
    after = await status(jp_fetch)
    assert any(s["name"] == "new.md" for s in after["sources"]), after["sources"]
    assert after["last_activity"] > before["last_activity"]


@pytest.mark.parametrize("idle_config", [{"server_idle_timeout": 600.0}], indirect=True)
async def test_the_metrics_count_to_the_deadline_the_status_shows(
    idle_app: Any, jp_fetch: Any
) -> None:
    """Activity since the last check moves the shutdown deadline in the metrics as in the
    status, before the loop checks again: both read the one view (``current``)."""
    body = json.dumps({"type": "file", "format": "text", "content": "x"})
    await jp_fetch("api", "contents", "notes.md", method="PUT", body=body)
    culler = idle_app.culler
    await wait_for(lambda: culler.generation == idle_app.tracker.generation, 10)
    await asyncio.sleep(2)
    await jp_fetch("api", "contents", "notes.md", method="PUT", body=body)
    assert culler.generation != idle_app.tracker.generation, "the loop checked: no test"
    doc = await status(jp_fetch)
    left = doc["server"]["seconds_to_shutdown"]
    assert left > 599, doc["server"]
    assert abs(culler.seconds_to_shutdown() - left) < 0.5, (culler.seconds_to_shutdown(), left)
    assert culler.idle_seconds() < 0.5


async def test_readers_never_run_a_check_and_still_see_activity_since_the_last_one(
    idle_app: Any, jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status, the metrics and the Hub reporter read; only the loop checks (and culls)."""
    body = json.dumps({"type": "file", "format": "text", "content": "x"})
    await jp_fetch("api", "contents", "notes.md", method="PUT", body=body)
    culler = idle_app.culler
    # the loop has seen the new document (a new source wakes it)
    await wait_for(lambda: culler.generation == idle_app.tracker.generation, 10)
    checks: list[bool] = []
    check = culler.check

    async def counted(poll_all: bool = True) -> Any:
        checks.append(poll_all)
        return await check(poll_all)

    monkeypatch.setattr(culler, "check", counted)
    before = await status(jp_fetch)
    await asyncio.sleep(0.2)
    # a second save of the same document: activity that moves no deadline earlier
    await jp_fetch("api", "contents", "notes.md", method="PUT", body=body)
    assert culler.generation != idle_app.tracker.generation
    after = await status(jp_fetch)
    assert after["last_activity"] > before["last_activity"], (before, after)
    assert await culler.reported_activity() > idle_app.tracker.started
    # the same view for every reader until something else happens
    first, second = culler.current(), culler.current()
    assert first is not None and second is not None and first[1] is second[1]
    assert checks == [], "a reader made the loop check"
