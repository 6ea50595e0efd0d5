"""What the extension borrows from jupyter_server's, terminado's and jupyterhub's insides
(compat.py): a test per borrowed piece, removing it. Each loss is said once, as a WARNING naming
the capability, and the behaviour falls to the safe side: never cull more.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_idle_ext import compat
from jupyter_idle_ext.activity import ActivityTracker
from jupyter_idle_ext.compat import Capabilities
from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.policy import KernelState, decide_kernel, decide_terminal
from jupyter_idle_ext.pytest_plugin import wait_for
from jupyter_idle_ext.sources.terminals import TerminalWatcher

LOG = logging.getLogger("test_compat")


def warnings_of(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class Kernel(SimpleNamespace):
    pass


def test_connections_from_the_private_count(caplog: Any) -> None:
    km = SimpleNamespace(_kernel_connections={"a": 2})
    connections = compat.kernel_connections(km, Capabilities(LOG))
    assert (connections("a"), connections("b")) == (2, 0)
    assert warnings_of(caplog) == []


def test_without_the_private_count_the_public_model_is_read(caplog: Any) -> None:
    km = SimpleNamespace(kernel_model=lambda kernel_id: {"id": kernel_id, "connections": 3})
    connections = compat.kernel_connections(km, Capabilities(LOG))
    assert connections("a") == 3
    assert warnings_of(caplog) == [
        "Kernel connections are read through the kernel model: "
        "MappingKernelManager._kernel_connections is gone; this is slower."
    ]


def test_unknown_connections_count_as_connected(caplog: Any) -> None:
    capabilities = Capabilities(LOG)
    connections = compat.kernel_connections(SimpleNamespace(), capabilities)
    compat.kernel_connections(SimpleNamespace(), capabilities)  # said once
    assert connections("a") is None
    [warning] = warnings_of(caplog)
    assert "cannot be known" in warning and "cull_connected off none is culled" in warning
    # and the policy then keeps a kernel it cannot tell is unconnected
    unknown = KernelState(id="k1", name="python3", last_activity=0.0, connections=None)
    kept = decide_kernel(unknown, IdleOptions.default_policy(cull_connected=False), 10**7)
    assert kept.action == "keep" and "connections unknown" in kept.reason


def test_without_the_iopub_stream_the_guard_says_what_is_lost(caplog: Any) -> None:
    capabilities = Capabilities(LOG)
    compat.guard_iopub_watcher(Kernel(), "k1", LOG, capabilities)
    [warning] = warnings_of(caplog)
    assert "IOPub watcher cannot be guarded" in warning
    assert capabilities.lost


def test_the_guard_keeps_the_watcher_alive_through_a_malformed_message() -> None:
    seen = []

    def callback(msg_list: Any) -> None:
        if msg_list == "garbage":
            raise ValueError("malformed")
        seen.append(msg_list)

    stream = SimpleNamespace(_recv_callback=callback)
    stream.on_recv = lambda fn: setattr(stream, "_recv_callback", fn)
    compat.guard_iopub_watcher(Kernel(_activity_stream=stream), "k1", LOG, Capabilities(LOG))
    stream._recv_callback("garbage")  # would have stopped jupyter_server's watcher for good
    stream._recv_callback("fine")
    assert seen == ["fine"]


def test_without_the_pty_hook_terminals_are_never_culled(caplog: Any) -> None:
    manager = SimpleNamespace(terminals={"1": object()})
    watcher = TerminalWatcher(manager, ActivityTracker(), Capabilities(LOG))
    assert not watcher.seen
    watcher.tracker.add("terminal", "1", "1")
    (state,) = watcher.states()
    decision = decide_terminal(state, IdleOptions.default_policy(cull_idle_timeout=1), 10**7)
    assert decision.action == "keep" and "cannot be seen" in decision.reason
    [warning] = warnings_of(caplog)
    assert "Terminal activity cannot be seen" in warning


class SingleUser:
    """The parts of jupyterhub-singleuser's extension app the reporter switch uses."""

    def __init__(self, with_trait: bool = True) -> None:
        self.with_trait = with_trait
        self.hub_activity_interval = 300
        self._activity_task: Any = None

    def keep_activity_updated(self) -> None:
        pass

    def trait_names(self) -> list[str]:
        return ["hub_activity_interval"] if self.with_trait else []


def serverapp_with(app: Any) -> Any:
    point = SimpleNamespace(app=app)
    return SimpleNamespace(
        extension_manager=SimpleNamespace(extension_points={"jupyterhub": point})
    )


async def test_singleusers_reporter_is_switched_off_and_a_running_one_cancelled() -> None:
    app = SingleUser()
    app._activity_task = asyncio.ensure_future(asyncio.sleep(3600))
    assert compat.silence_singleuser_reporter(serverapp_with(app), LOG, Capabilities(LOG))
    assert app.hub_activity_interval == 0
    await asyncio.sleep(0)
    assert app._activity_task.cancelled()


def test_a_reporter_that_cannot_be_switched_off_names_the_setting(caplog: Any) -> None:
    compat.silence_singleuser_reporter(
        serverapp_with(SingleUser(with_trait=False)), LOG, Capabilities(LOG)
    )
    [warning] = warnings_of(caplog)
    assert "c.JupyterHubSingleUser.hub_activity_interval = 0" in warning


@pytest.fixture
def no_start_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """jupyter_server before 2.16, which never calls the extension's start hook."""
    monkeypatch.setattr("jupyter_idle_ext.app.has_start_hook", lambda: False)


async def test_without_the_start_hook_the_extension_starts_itself(
    no_start_hook: None, jp_serverapp: Any
) -> None:
    app = jp_serverapp.extension_manager.extension_points["jupyter_idle_ext"].app
    # nobody calls _start_jupyter_server_extension here: the callback scheduled at load does
    await wait_for(lambda: app.culler is not None, 10)
    await app.stop_extension()


def _local_kernel(process: Any, owns: bool = True) -> Any:
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner
    from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

    kernel = ServerKernelManager(kernel_name="python3", owns_kernel=owns)
    kernel.provisioner = LocalProvisioner(kernel_id="k", kernel_spec=None, connection_info={})
    kernel.provisioner.process = process
    return kernel


async def test_a_local_kernel_is_polled_directly_and_says_what_is_alive_says() -> None:
    """The check polls a local kernel's process itself (what is_alive ends in); anything else
    (a custom provisioner, a kernel manager overriding is_alive) goes through is_alive."""
    import subprocess

    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    process = subprocess.Popen(["sleep", "30"])
    try:
        kernel = _local_kernel(process)
        assert compat.polls_locally(kernel)
        assert compat.local_process(kernel) is process
        assert (process.poll() is None) is await kernel.is_alive() is True
        process.kill()
        process.wait()
        assert (process.poll() is None) is await kernel.is_alive() is False

        class Remote(LocalProvisioner):  # type: ignore[misc]
            async def poll(self) -> int | None:
                return None

        remote = _local_kernel(process)
        remote.provisioner = Remote(kernel_id="k", kernel_spec=None, connection_info={})
        assert compat.local_process(remote) is None
        assert compat.local_process(Kernel(provisioner=None)) is None
        assert not compat.polls_locally(Kernel(provisioner=None, is_alive=lambda: True))
        assert not compat.polls_locally(_local_kernel(process, owns=False))
    finally:
        process.kill()
        process.wait()


async def test_a_check_at_a_deadline_polls_a_kernel_at_most_once_a_second() -> None:
    """Many deadlines, many checks: a kernel polled a moment ago is not polled again at a
    deadline's check, but is at a check a wake-up asked for, and a second later anyway."""
    import subprocess

    from jupyter_idle_ext.sources.kernels import POLL_EVERY, KernelWatcher

    process = subprocess.Popen(["sleep", "30"])
    try:
        kernel = _local_kernel(process)
        km = SimpleNamespace(
            list_kernel_ids=lambda: ["k"], get_kernel=lambda _: kernel, _kernel_connections={}
        )
        clock = [100.0]
        tracker = ActivityTracker(clock=lambda: clock[0])
        watcher = KernelWatcher(km, tracker, LOG)
        await watcher.refresh(every=False)
        assert watcher.states()[0].dead_since is None
        process.kill()
        process.wait()
        await watcher.refresh(every=False)
        assert watcher.states()[0].dead_since is None, "polled again within POLL_EVERY"
        clock[0] += POLL_EVERY
        await watcher.refresh(every=False)
        assert watcher.states()[0].dead_since == clock[0]
        # a wake-up's check polls whatever was polled last
        other = subprocess.Popen(["sleep", "30"])
        kernel.provisioner.process = other
        await watcher.refresh(every=True)
        assert watcher.states()[0].dead_since is None
        other.kill()
        other.wait()
        await watcher.refresh(every=True)
        assert watcher.states()[0].dead_since == clock[0]
    finally:
        process.kill()
        process.wait()


async def test_a_check_that_polls_nothing_reads_no_kernel_yet_sees_one_marked_dead() -> None:
    """Within POLL_EVERY of the last poll a check reads no kernel at all (at thousands of
    kernels that is most of a check's cost); a kernel jupyter_server marks dead meanwhile is seen
    through its execution_state at once, and a kernel started meanwhile is polled at once."""
    import subprocess

    from jupyter_idle_ext.sources.kernels import KernelWatcher

    process = subprocess.Popen(["sleep", "30"])
    try:
        kernels = {"k": _local_kernel(process)}
        km = SimpleNamespace(
            list_kernel_ids=lambda: list(kernels),
            get_kernel=lambda kid: kernels[kid],
            _kernel_connections={},
        )
        clock = [100.0]
        tracker = ActivityTracker(clock=lambda: clock[0])
        watcher = KernelWatcher(km, tracker, LOG)
        await watcher.refresh(every=False)
        polled = dict(watcher._polled)
        clock[0] += 0.5
        await watcher.refresh(every=False)
        assert watcher._polled == polled, "a kernel polled again within POLL_EVERY"
        tracker.changed.clear()
        kernels["k"].execution_state = "dead"
        assert tracker.changed.is_set(), "a kernel marked dead did not wake the loop"
        await watcher.refresh(every=False)
        assert watcher.states()[0].dead_since == clock[0]
        # a kernel that appears is due at once, although the first is not
        dead = subprocess.Popen(["true"])
        dead.wait()
        kernels["new"] = _local_kernel(dead)
        clock[0] += 0.1
        await watcher.refresh(every=False)
        assert watcher._polled["new"] == clock[0]
        assert [s.dead_since for s in watcher.states()] == [clock[0] - 0.1, clock[0]]
    finally:
        process.kill()
        process.wait()


# -- every change to another package's object goes through compat --------------------------

# names under which the package's modules hold objects of their own (records, samples, the
# tracker); any other object whose attribute a module sets belongs to another package
OWN_OBJECTS = {
    "self",
    "self.tracker",
    "self.reporter",
    "tracker",
    "record",
    "rec",
    "tracked",
    "sample",
    "followed",
    "result",
    "draft",
    "Observed",
}


def _stores(path: Any) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "setattr"
            and ast.unparse(node.args[0]) not in OWN_OBJECTS
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for store in ast.walk(target):
                if isinstance(store, ast.Attribute) and isinstance(store.ctx, ast.Store):
                    base = ast.unparse(store.value)
                    if base not in OWN_OBJECTS and not base.startswith("self.tracker."):
                        found.append(f"{path.name}:{node.lineno} {ast.unparse(store)} = ...")
    return found


def test_no_module_but_compat_changes_another_packages_objects() -> None:
    """A kernel's trait, a manager's method, a route's handler: changed in compat.py only, where
    each change is probed and undone, so an upgrade of jupyter_server breaks one file."""
    from pathlib import Path

    package = Path(compat.__file__).parent
    # (the test harness, pytest_plugin.py, sets up test doubles and is never loaded by a server)
    skip = {"compat.py", "pytest_plugin.py"}
    modules = [p for p in sorted(package.rglob("*.py")) if p.name not in skip]
    assert len(modules) > 20
    found = [store for path in modules for store in _stores(path)]
    assert found == [], "changes of other packages' objects outside compat.py:\n" + "\n".join(found)
    # and the scan sees such a change where there is one
    assert _stores(package / "compat.py")


def test_a_contents_manager_without_a_write_method_says_which_writes_are_not_seen(
    caplog: Any,
) -> None:
    from jupyter_idle_ext.sources.documents import DocumentWatcher

    saved: list[str] = []
    manager = SimpleNamespace(save=lambda model, path: saved.append(path) or {"path": path})
    tracker = ActivityTracker()
    watcher = DocumentWatcher(manager, tracker, Capabilities(LOG))
    manager.save({}, "notes.md")
    assert saved == ["notes.md"]
    assert ("document", "notes.md") in tracker.records
    lost = warnings_of(caplog)
    assert len(lost) == 3, lost  # rename, copy, delete; a missing emit is no loss
    assert all("cannot be seen (it has no such method)" in w for w in lost), lost
    assert "SimpleNamespace.rename" in lost[0] and "a rename does not delay" in lost[0]
    watcher.close()
    assert "save" in vars(manager)  # its own attribute, not one of ours: kept as it was
    assert manager.save({}, "x.md") == {"path": "x.md"}


async def test_what_the_sources_change_is_undone_when_the_extension_stops(
    idle_app: Any, jp_serverapp: Any
) -> None:
    km = jp_serverapp.kernel_manager
    cm = jp_serverapp.contents_manager
    tm = jp_serverapp.web_app.settings["terminal_manager"]
    assert {"start_watching_activity"} <= set(vars(km))
    assert {"emit", "save", "rename", "copy", "delete"} <= set(vars(cm))
    assert "pre_pty_read_hook" in vars(tm)
    await idle_app.stop_extension()
    assert "start_watching_activity" not in vars(km)
    assert not {"emit", "save", "rename", "copy", "delete"} & set(vars(cm))
    assert "pre_pty_read_hook" not in vars(tm)
