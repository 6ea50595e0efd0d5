"""Kernel activity and culling with real ipykernel kernels in an in-process server (S2, S3, S6-S9)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from jupyter_idle_ext.policy import DEAD_KERNEL_GRACE
from jupyter_idle_ext.pytest_plugin import (
    IN_PROCESS,
    culled_at,
    kernel_exists,
    kernel_gone,
    ready_client,
    run,
    start_kernel,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def record(app: Any, kernel_id: str) -> Any:
    return app.tracker.records[("kernel", kernel_id)]


async def test_idle_kernel_is_culled_at_its_timeout(idle_app: Any, jp_fetch: Any) -> None:
    kernel_id = await start_kernel(jp_fetch)
    await wait_for(lambda: ("kernel", kernel_id) in idle_app.tracker.records, 30)
    client = await ready_client(idle_app, kernel_id)
    await run(client, "x = 1")
    client.stop_channels()
    ran = time.monotonic()
    # on a real server (also the oldest jupyter_server we claim), nothing we borrow is missing
    assert idle_app.capabilities.lost == {}, idle_app.capabilities.lost
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    gone_after = time.monotonic() - ran
    # culled at cull_idle_timeout (3 s) after the last execution, not cull_interval (300 s) later
    assert 2.5 < gone_after < 6, gone_after


async def test_silent_busy_kernel_is_never_culled(idle_app: Any, jp_fetch: Any) -> None:
    """S2: a silent cell running longer than every timeout is work; the clock starts at its end."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    cell = asyncio.ensure_future(run(client, "import time; time.sleep(8)"))
    await wait_for(lambda: record(idle_app, kernel_id).busy_since is not None, 10)
    await asyncio.sleep(7)
    assert await kernel_exists(jp_fetch, kernel_id), "a busy kernel was culled"
    await cell
    ended = time.monotonic()
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    assert time.monotonic() - ended > 2.5, "the idle clock must start when the cell ends"
    client.stop_channels()


async def test_background_thread_output_is_activity(idle_app: Any, jp_fetch: Any) -> None:
    """S3: a thread printing after its cell returned keeps the kernel active."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    code = (
        "import threading, time\n"
        "def work():\n"
        "    for i in range(8):\n"
        "        time.sleep(1)\n"
        "        print('step', i, flush=True)\n"
        "threading.Thread(target=work).start()\n"
    )
    await run(client, code)
    await asyncio.sleep(7)
    assert await kernel_exists(jp_fetch, kernel_id), "culled while its thread was printing"
    assert record(idle_app, kernel_id).busy_since is None
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    client.stop_channels()


async def test_kernel_info_and_reconnects_are_not_activity(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    """S6: reloads, reconnects and kernel_info/comm_info requests never reset the idle clock."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    with culled_at(idle_app, kernel_id) as culled:
        await run(client, "x = 1")
        ran = time.monotonic()
        while await kernel_exists(jp_fetch, kernel_id):
            assert time.monotonic() - ran < 8, "reconnects and kernel_info kept an idle kernel"
            try:
                ws = await asyncio.wait_for(jp_ws_fetch("api", "kernels", kernel_id, "channels"), 2)
                await asyncio.sleep(0.3)
                ws.close()
            except Exception:
                continue  # culled while connecting: the loop condition ends it
            client.kernel_info()
            client.comm_info()
            await asyncio.sleep(0.3)
    # culled cull_idle_timeout (3 s) after the execution, as if nothing had happened since
    assert culled.at is not None and culled.at - ran < 3 + 2.5
    client.stop_channels()


async def test_completion_and_inspection_are_activity(idle_app: Any, jp_fetch: Any) -> None:
    """S7: typing that reaches the kernel (completion, inspection) keeps it."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    for _ in range(12):
        client.complete("import o", 8)
        client.inspect("print", 5)
        await asyncio.sleep(0.5)
    assert await kernel_exists(jp_fetch, kernel_id), "culled while the user was typing"
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    client.stop_channels()


@pytest.mark.parametrize("idle_config", [{"max_busy_time": 5.0}], indirect=True)
async def test_kernel_busy_past_the_cap_is_culled(
    idle_app: Any, jp_fetch: Any, caplog: Any
) -> None:
    """S8: with max_busy_time, a silent busy kernel counts as stuck and is culled at the cap."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    with culled_at(idle_app, kernel_id) as culled:
        client.execute("import time; time.sleep(600)")
        await wait_for(lambda: record(idle_app, kernel_id).busy_since is not None, 10)
        busy = time.monotonic()
        await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    assert culled.at is not None and 4.5 < culled.at - busy < 5 + 3
    assert "max_busy_time" in caplog.text
    client.stop_channels()


async def test_without_a_cap_a_busy_kernel_is_never_culled(idle_app: Any, jp_fetch: Any) -> None:
    """S8, the other half: no cap configured, busy is busy however long."""
    kernel_id = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, kernel_id)
    client.execute("import time; time.sleep(600)")
    await wait_for(lambda: record(idle_app, kernel_id).busy_since is not None, 10)
    await asyncio.sleep(8)
    assert await kernel_exists(jp_fetch, kernel_id)
    await idle_app.serverapp.kernel_manager.interrupt_kernel(kernel_id)
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 30)
    client.stop_channels()


@pytest.mark.parametrize("idle_config", [{"cull_idle_timeout": 300.0}], indirect=True)
async def test_killed_kernel_is_removed(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, caplog: Any
) -> None:
    """S9: a kernel killed from outside, which jupyter_server does not restart, is removed
    DEAD_KERNEL_GRACE after it was seen dead."""
    kernel_id = await start_kernel(jp_fetch)
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    await wait_for(lambda: ("kernel", kernel_id) in idle_app.tracker.records, 30)
    kernel.stop_restarter()
    os.kill(kernel.provisioner.process.pid, signal.SIGKILL)
    await wait_for(lambda: kernel.provisioner.process.poll() is not None, 10)
    idle_app.tracker.changed.set()  # "the next check": do not wait 300 s for it
    seen_dead = await wait_for(lambda: dead_in_status(jp_fetch, kernel_id), 10)
    assert seen_dead["action"] == "keep" and "kernel process is dead" in seen_dead["reason"]
    assert await kernel_exists(jp_fetch, kernel_id), "removed before its grace"
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), DEAD_KERNEL_GRACE + 10)
    assert "Removing dead kernel" in caplog.text


@pytest.mark.parametrize("idle_config", [{"cull_idle_timeout": 0}], indirect=True)
async def test_a_crashed_kernel_that_jupyter_server_restarts_is_kept(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, caplog: Any
) -> None:
    """The grace lets jupyter_server's restarter bring a crashed kernel back (seen dead at a check
    in between, or not): the user's kernel restarts instead of vanishing."""
    kernel_id = await start_kernel(jp_fetch)
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    await wait_for(lambda: ("kernel", kernel_id) in idle_app.tracker.records, 30)
    pid = kernel.provisioner.process.pid
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: kernel.provisioner.process.poll() is not None, 10)
    idle_app.tracker.changed.set()
    await wait_for(lambda: kernel.has_kernel and kernel.provisioner.pid != pid, 30)
    await asyncio.sleep(DEAD_KERNEL_GRACE + 2)
    idle_app.tracker.changed.set()
    await asyncio.sleep(1)
    assert await kernel_exists(jp_fetch, kernel_id), "a restarted kernel was removed"
    assert "Removing dead kernel" not in caplog.text


async def dead_in_status(jp_fetch: Any, kernel_id: str) -> dict[str, Any] | None:
    r = await jp_fetch("api", "idle", method="GET")
    for entry in json.loads(r.body)["kernels"]:
        if entry["id"] == kernel_id and entry["execution_state"] == "dead":
            return dict(entry)
    return None


@pytest.fixture
def bad_kernelspec(jp_environ: Any, jp_data_dir: Any) -> str:
    """A kernelspec whose program does not exist: its kernel fails to start."""
    spec_dir = jp_data_dir / "kernels" / "bad"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": ["non_existent_path"], "display_name": "bad", "language": "python"})
    )
    return "bad"


PENDING_KERNELS = {
    "ServerApp": {
        "kernel_manager_class": (
            "jupyter_server.services.kernels.kernelmanager.AsyncMappingKernelManager"
        )
    },
    "AsyncMappingKernelManager": {"use_pending_kernels": True},
}


@pytest.mark.parametrize("extra_server_config", [PENDING_KERNELS], indirect=True)
async def test_a_kernel_that_failed_to_start_stays_visible_then_goes(
    bad_kernelspec: str, idle_app: Any, jp_fetch: Any, caplog: Any
) -> None:
    """A client that started a kernel can read why it failed before it is removed (jupyter_server's
    own test_cull_dead asks this of its culler, and ours must not pre-empt it)."""
    started = time.monotonic()
    kernel_id = await start_kernel(jp_fetch, bad_kernelspec)
    await wait_for(lambda: dead_in_status(jp_fetch, kernel_id), 30)
    # visible for the grace after we saw it dead, and from the client's start at least that long
    while time.monotonic() - started < DEAD_KERNEL_GRACE - 1:
        assert await kernel_exists(jp_fetch, kernel_id), "failed kernel removed within its grace"
        await asyncio.sleep(0.5)
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), IN_PROCESS["cull_idle_timeout"] + 15)
    assert f"Removing dead kernel 'bad' ({kernel_id})" in caplog.text


@pytest.fixture
def spec_with_override(jp_environ: Any, jp_data_dir: Any) -> str:
    """A kernelspec like python3 whose metadata says never cull it."""
    native = KernelSpecManager().get_kernel_spec("python3")
    spec_dir = jp_data_dir / "kernels" / "never-cull"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": native.argv,
                "display_name": "never cull",
                "language": "python",
                "metadata": {"cull_idle_timeout": 0},
            }
        )
    )
    return "never-cull"


async def test_kernelspec_override_zero_never_culls(
    idle_app: Any, jp_fetch: Any, spec_with_override: str
) -> None:
    kept = await start_kernel(jp_fetch, spec_with_override)
    culled = await start_kernel(jp_fetch)
    await wait_for(lambda: kernel_gone(jp_fetch, culled), 30)
    await asyncio.sleep(2)
    assert await kernel_exists(jp_fetch, kept)


async def test_kernel_that_ignores_shutdown_is_stopped_anyway(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    kernel_id = await start_kernel(jp_fetch)
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    client = await ready_client(idle_app, kernel_id)
    stubborn = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "k = get_ipython().kernel\n"
        "async def ignore(*args, **kwargs):\n"
        "    pass\n"
        "k.control_handlers['shutdown_request'] = ignore\n"
        "k.shell_handlers['shutdown_request'] = ignore\n"
    )
    await run(client, stubborn)
    process = kernel.provisioner.process
    ran = time.monotonic()
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), 40)
    await wait_for(lambda: process.poll() is not None, 5)
    # graceful first (jupyter_client waits shutdown_wait_time), then killed: bounded
    assert time.monotonic() - ran < 3 + 15
    client.stop_channels()


async def test_a_kernel_whose_graceful_stop_hangs_is_stopped_by_force(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, caplog: Any, monkeypatch: Any
) -> None:
    """After KERNEL_STOP_TIMEOUT the graceful stop is given up and the kernel is stopped now."""
    import jupyter_idle_ext.culler as culler_module

    monkeypatch.setattr(culler_module, "KERNEL_STOP_TIMEOUT", 1.0)
    km = jp_serverapp.kernel_manager
    graceful = km.shutdown_kernel

    async def hang_unless_now(kernel_id: str, now: bool = False, restart: bool = False) -> None:
        if not now:
            await asyncio.Event().wait()
        await graceful(kernel_id, now=True, restart=restart)

    monkeypatch.setattr(km, "shutdown_kernel", hang_unless_now)
    kernel_id = await start_kernel(jp_fetch)
    await wait_for(lambda: kernel_gone(jp_fetch, kernel_id), IN_PROCESS["cull_idle_timeout"] + 15)
    assert f"Kernel {kernel_id} did not shut down cleanly" in caplog.text
    assert "stopping it now" in caplog.text


async def test_a_kernel_that_cannot_be_stopped_does_not_stop_the_loop(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any, caplog: Any, monkeypatch: Any
) -> None:
    """Fault injection: shutting one kernel down fails; the others are culled on time and the
    failing one is tried again at a later check."""
    km = jp_serverapp.kernel_manager
    broken = await start_kernel(jp_fetch)
    healthy = await start_kernel(jp_fetch)
    real_shutdown = km.shutdown_kernel
    failures = []

    async def shutdown_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
        if kernel_id == broken and len(failures) < 4:
            failures.append(kernel_id)
            raise RuntimeError("injected failure")
        return await real_shutdown(kernel_id, *args, **kwargs)

    monkeypatch.setattr(km, "shutdown_kernel", shutdown_kernel)
    await wait_for(lambda: kernel_gone(jp_fetch, healthy), 30)
    await wait_for(lambda: kernel_gone(jp_fetch, broken), 30)
    assert len(failures) == 4
    assert "Could not stop kernel" in caplog.text
    assert "injected failure" in caplog.text


async def test_other_extensions_report_activity(idle_app: Any, jp_serverapp: Any) -> None:
    """The public API: another extension's source counts as activity, and busy keeps the server."""
    from jupyter_idle_ext import record_activity, set_busy
    from jupyter_idle_ext.policy import decide

    settings = jp_serverapp.web_app.settings
    before = idle_app.tracker.last_activity
    await asyncio.sleep(0.05)
    record_activity(settings, "my-extension")
    assert idle_app.tracker.last_activity > before
    config = dataclasses.replace(idle_app.policy, server_idle_timeout=1.0, shutdown_warning=0.0)
    set_busy(settings, "my-extension", True)
    await asyncio.sleep(1.2)
    plan = decide(idle_app.culler.take_snapshot(), config)
    assert plan.server.action == "keep"
    assert "my-extension busy" in plan.server.reason
    set_busy(settings, "my-extension", False)
    await asyncio.sleep(1.2)
    assert decide(idle_app.culler.take_snapshot(), config).server.action == "shutdown"


async def test_a_kernel_slow_to_stop_does_not_delay_the_others(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    """A stubborn kernel takes jupyter_client's whole grace period to stop; a kernel whose
    deadline falls inside that time is still culled on time."""
    stubborn = await start_kernel(jp_fetch)
    client = await ready_client(idle_app, stubborn)
    await run(
        client,
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "async def ignore(*args, **kwargs):\n"
        "    pass\n"
        "get_ipython().kernel.control_handlers['shutdown_request'] = ignore\n",
    )
    client.stop_channels()
    await wait_for(lambda: "stopping" if stubborn in idle_app.culler.stopping_ids() else None, 10)
    other = await start_kernel(jp_fetch)
    other_client = await ready_client(idle_app, other)
    with culled_at(idle_app, other) as culled:
        await run(other_client, "x = 1")
        ran = time.monotonic()
        assert stubborn in idle_app.culler.stopping_ids(), (
            "the stubborn kernel should still be stopping"
        )
        await wait_for(lambda: kernel_gone(jp_fetch, other), 20)
    # decided at its own deadline, not after the stubborn kernel's stop
    assert culled.at is not None and culled.at - ran < 3 + 1.5
    other_client.stop_channels()
    await wait_for(lambda: kernel_gone(jp_fetch, stubborn), 30)
