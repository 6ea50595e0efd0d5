"""Life cycle: every hook is safe whatever stage the extension reached, and nothing of ours escapes
into jupyter_server's cleanup (which would cut the server's own cleanup, its kernels, short)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.serverapp import ServerApp

from jupyter_idle_ext.app import IdleExtension
from jupyter_idle_ext.compat import handler_rules


def idle_extension(serverapp: Any) -> Any:
    return serverapp.extension_manager.extension_points["jupyter_idle_ext"].app


async def test_stop_before_anything_started() -> None:
    app = IdleExtension()
    await app.stop_extension()
    await app.stop_extension()
    assert app.culler is None


def test_stop_after_start_up_failed_past_the_link(
    tmp_path: Path, jp_configurable_serverapp: Any, jp_asyncio_loop: Any
) -> None:
    """jupyter_server's own test_preferred_dir_validation: the server fails after linking the
    extensions, then stops them; its cleanup goes on to the kernels."""
    root = tmp_path / "subdir"
    root.mkdir()
    with pytest.raises(SystemExit):
        jp_configurable_serverapp(root_dir=str(root), preferred_dir=str(tmp_path))
    serverapp = ServerApp.instance()
    assert idle_extension(serverapp).culler is None  # linked, never started
    jp_asyncio_loop.run_until_complete(serverapp.cleanup_extensions())


async def test_start_twice_starts_once(idle_app: Any, jp_serverapp: Any) -> None:
    """Started by the test fixture; a second start (jupyter_server's own, say) changes nothing."""
    culler, tasks = idle_app.culler, list(idle_app._tasks)
    await idle_app._start_jupyter_server_extension(jp_serverapp)
    assert idle_app.culler is culler
    assert idle_app._tasks == tasks


async def test_a_failure_while_stopping_is_logged_not_raised(
    idle_app: Any, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("detaching failed")

    async def broken_source() -> None:
        raise RuntimeError("a source failed to stop")

    monkeypatch.setattr(idle_app.culler, "close", broken)
    monkeypatch.setattr(idle_app.sources.get("documents"), "stop", broken_source)
    terminals = idle_app.sources.get("terminals")
    with caplog.at_level(logging.ERROR):
        await idle_app.stop_extension()
    assert "detaching failed" in caplog.text
    assert "a source failed to stop" in caplog.text
    # the sources stopped after it were still stopped: the terminals' hook is put back
    assert terminals.tm.pre_pty_read_hook == terminals._original_hook
    assert idle_app._tasks == []
    await idle_app.stop_extension()  # and again, as the fixture's teardown does


async def test_a_task_that_does_not_end_never_hangs_the_servers_cleanup(
    idle_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop stalled under a test harness left the check loop unable to end: the stop waits
    for it a bounded time, then goes on to the sources and the server's own cleanup."""
    import asyncio
    import time

    from jupyter_idle_ext import app as app_module

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    monkeypatch.setattr(app_module, "STOP_WAIT", 0.5)
    task = asyncio.ensure_future(stubborn())
    idle_app._tasks.append(task)
    terminals = idle_app.sources.get("terminals")
    began = time.monotonic()
    await idle_app.stop_extension()
    assert time.monotonic() - began < 3
    assert terminals.tm.pre_pty_read_hook == terminals._original_hook
    idle_app._tasks = []


async def test_without_the_optional_packages_nothing_of_theirs_is_followed(
    idle_app: Any, jp_serverapp: Any, caplog: Any
) -> None:
    """Without jupyter-server-proxy and jupyter-collaboration (this venv has neither) the
    extension follows kernels, terminals and documents, and changes no route."""
    if importlib.util.find_spec("jupyter_server_proxy") or importlib.util.find_spec(
        "jupyter_server_ydoc"
    ):
        pytest.skip("this venv has the optional packages (the test runs in the main one)")
    assert idle_app.sources.get("proxy") is None
    names = [s.name for s in idle_app.sources]
    assert names == ["kernels", "terminals", "documents", "api", "jobs", "processes"], names
    routes = handler_rules(jp_serverapp.web_app, object)
    observed = {"jupyter_idle_ext.sources.proxy", "jupyter_idle_ext.sources.collaboration"}
    assert routes and not [r for r in routes if r.target.__module__ in observed]


def test_the_exit_names_the_threads_and_processes_that_held_it() -> None:
    """The exit's log line says what still ran: a non-daemon thread, and a process the server
    started (a job's kernel, say), not "nothing"."""
    import subprocess
    import sys
    import threading

    from jupyter_idle_ext.shutdown import held_by

    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="a worker left behind")
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = held_by()
        assert "thread a worker left behind" in held, held
        assert any(h.startswith(f"process {child.pid} `") and "time.sleep" in h for h in held)
    finally:
        release.set()
        thread.join()
        child.kill()
        child.wait()
