"""Kernels of this server's kernel manager as a source of activity.

Kernels are followed through the traits jupyter_server's own IOPub watcher already maintains
(``last_activity`` moves on execution, completion, inspection, widget messages and any output of
a running or background-thread cell, but not on kernel_info/comm_info requests and their status
bursts; ``execution_state`` shows the busy period), so following them costs no second copy of
each message.
"""

from __future__ import annotations

import math
from typing import Any

from jupyter_core.utils import ensure_async

from ..activity import ActivityTracker
from ..compat import (
    Capabilities,
    guard_iopub_watcher,
    is_gateway_kernel,
    is_gateway_manager,
    kernel_connections,
    local_process,
    polls_locally,
    replace_method,
    reset_execution_state,
    watches_iopub,
)
from ..policy import KernelState
from . import BaseSource, Context
from .gateway import GatewayRelay

# a kernel on a gateway is polled (an HTTP request to the gateway) at most this often
REMOTE_POLL_EVERY = 5.0
# a local kernel ready this long without jupyter_server's IOPub watcher is not followed by it
# (the watcher starts a moment after the kernel is ready, and again after a restart)
UNWATCHED_GRACE = 2.0

# a kernel's process is polled at most this often (its death is seen within this, far inside
# the dead kernel's grace of policy.DEAD_KERNEL_GRACE)
POLL_EVERY = 1.0


class KernelWatcher(BaseSource):
    """Follows the kernels of a MappingKernelManager into an ActivityTracker."""

    name = "kernels"

    def __init__(
        self,
        kernel_manager: Any,
        tracker: ActivityTracker,
        log: Any,
        capabilities: Capabilities | None = None,
        gateway: GatewayRelay | None = None,
    ) -> None:
        self.km = kernel_manager
        # the relay of a server whose kernels run on a gateway
        self.gateway = gateway
        # per kernel on a gateway: the gateway's URL
        self._remote: dict[str, str] = {}
        # kernels whose activity cannot be followed: since when (never culled; they keep the
        # server up to max_busy_time); and local kernels not yet seen followed, since when
        self._unobserved: dict[str, float] = {}
        self._unconfirmed: dict[str, float | None] = {}
        self._remote_polled: dict[str, float] = {}
        self.tracker = tracker
        self.log = log
        self.capabilities = capabilities or Capabilities(log)
        self.connections = kernel_connections(kernel_manager, self.capabilities)
        self._attached: dict[str, Any] = {}
        # when each kernel's process was first seen dead
        self._dead_since: dict[str, float] = {}
        # per kernel: its kernelspec's cull_idle_timeout (read once), and its last KernelState
        # (a check rebuilds only the states that changed, see states())
        self._overrides: dict[str, float | None] = {}
        self._states: dict[str, KernelState] = {}
        # per kernel: its key in the tracker's records, made once
        self._keys: dict[str, tuple[str, str]] = {}
        # per kernel: whether its process may be polled directly (compat.polls_locally), and
        # when it was last polled
        self._local: dict[str, bool] = {}
        self._polled: dict[str, float] = {}
        # when the first kernel is due for its poll again: a check before then reads no kernel
        self._due_at = -math.inf

        # guard jupyter_server's IOPub watcher on every (re)start of watching (a gateway's kernel
        # manager has no watcher: its kernels are followed at the relay)
        def observe(original: Any) -> Any:
            def start_watching_activity(kernel_id: str) -> None:
                original(kernel_id)
                self._guard_watcher(kernel_id)

            return start_watching_activity

        self._undo_watching = replace_method(
            kernel_manager,
            "start_watching_activity",
            observe,
            self.capabilities,
            lost=None
            if gateway is not None
            else (
                "jupyter_server's IOPub watcher cannot be guarded after a kernel restart "
                "(MappingKernelManager.start_watching_activity is gone)",
                "a malformed message from a restarted kernel would stop its activity being seen",
            ),
        )

    def _guard_watcher(self, kernel_id: str) -> None:
        try:
            kernel = self.km.get_kernel(kernel_id)
        except KeyError:
            return
        guard_iopub_watcher(kernel, kernel_id, self.log, self.capabilities)

    def sync(self) -> None:
        """Attach to new kernels and forget removed ones."""
        current = set(self.km.list_kernel_ids())
        for kernel_id in current - set(self._attached):
            self._attach(kernel_id)
            self._due_at = -math.inf
        for kernel_id in set(self._attached) - current:
            self._detach(kernel_id)

    def _attach(self, kernel_id: str) -> None:
        kernel = self.km.get_kernel(kernel_id)
        record = self.tracker.add("kernel", kernel_id, getattr(kernel, "kernel_name", "") or "")
        self._keys[kernel_id] = ("kernel", kernel_id)
        self._overrides[kernel_id] = self._timeout_override(kernel, record.name)
        if self.gateway is not None and is_gateway_kernel(kernel):
            # its model copies the gateway's view: the relay says what it does (gateway.py)
            self._remote[kernel_id] = self.gateway.url or "gateway"
            self._attached[kernel_id] = (kernel, None, None, None)
            if not self.gateway.seen:
                self._unobserved[kernel_id] = record.last_activity
            return
        self._unconfirmed[kernel_id] = None
        self._guard_watcher(kernel_id)
        if getattr(kernel, "execution_state", None) == "busy":
            record.busy_since = record.last_activity

        def on_activity(change: Any) -> None:
            self.tracker.touch("kernel", kernel_id)

        def on_state(change: Any) -> None:
            state = change["new"]
            if state == "busy":
                self.tracker.set_busy("kernel", kernel_id, True)
            elif state in ("idle", "starting"):
                self.tracker.set_busy("kernel", kernel_id, False)
            elif state == "dead":
                # seen here, not only at the next poll (a check may poll no kernel)
                self._dead_since.setdefault(kernel_id, self.tracker.clock())
                self.tracker.changed.set()

        def on_restart() -> None:
            # an automatic restart after a crash is not activity, and a crash mid-cell leaves
            # execution_state at "busy" forever (no "idle" comes from the dead process)
            rec = self.tracker.records.get(("kernel", kernel_id))
            if rec is not None:
                rec.busy_since = None
            reset_execution_state(kernel)

        kernel.observe(on_activity, names=["last_activity"])
        kernel.observe(on_state, names=["execution_state"])
        if hasattr(kernel, "add_restart_callback"):
            kernel.add_restart_callback(on_restart, "restart")
        self._attached[kernel_id] = (kernel, on_activity, on_state, on_restart)

    def _timeout_override(self, kernel: Any, name: str) -> float | None:
        """The kernelspec's ``metadata.cull_idle_timeout``, if it sets one."""
        spec = getattr(kernel, "kernel_spec", None)
        metadata = getattr(spec, "metadata", None) or {}
        if "cull_idle_timeout" not in metadata:
            return None
        try:
            return max(0.0, float(metadata["cull_idle_timeout"]))
        except (TypeError, ValueError):
            self.log.warning(
                "Ignoring kernelspec %r metadata.cull_idle_timeout=%r: not a number",
                name,
                metadata["cull_idle_timeout"],
            )
            return None

    def _detach(self, kernel_id: str) -> None:
        kernel, on_activity, on_state, on_restart = self._attached.pop(kernel_id)
        self._dead_since.pop(kernel_id, None)
        self._overrides.pop(kernel_id, None)
        self._states.pop(kernel_id, None)
        self._keys.pop(kernel_id, None)
        self._local.pop(kernel_id, None)
        self._polled.pop(kernel_id, None)
        self._unobserved.pop(kernel_id, None)
        self._unconfirmed.pop(kernel_id, None)
        if self._remote.pop(kernel_id, None) is not None:
            if self.gateway is not None:
                self.gateway.forget(kernel_id)
            self.tracker.remove("kernel", kernel_id)
            return
        try:
            kernel.unobserve(on_activity, names=["last_activity"])
            kernel.unobserve(on_state, names=["execution_state"])
            if hasattr(kernel, "remove_restart_callback"):
                kernel.remove_restart_callback(on_restart, "restart")
        except ValueError:
            pass
        self.tracker.remove("kernel", kernel_id)

    def detach_all(self) -> None:
        for kernel_id in list(self._attached):
            self._detach(kernel_id)
        if self._undo_watching is not None:
            self._undo_watching()
            self._undo_watching = None

    async def refresh(self, every: bool = True) -> None:
        """Check which kernel processes are still alive: a cheap poll of each process; without
        ``every``, only of those not polled in the last POLL_EVERY seconds (a check at each of
        many deadlines need not poll them all each time)."""
        self.sync()
        local, polled = self._local, self._polled
        now = self.tracker.clock()
        if every:
            polled.clear()
        elif now < self._due_at:
            return  # every kernel was polled less than POLL_EVERY ago
        due_at = math.inf
        for kernel_id, (kernel, *_) in list(self._attached.items()):
            if getattr(kernel, "execution_state", None) == "dead":
                self._dead_since.setdefault(kernel_id, now)
                continue
            last = polled.get(kernel_id, -POLL_EVERY)
            if now - last < POLL_EVERY:
                due_at = min(due_at, last + POLL_EVERY)
                continue
            polled[kernel_id] = now
            due_at = min(due_at, now + POLL_EVERY)
            try:
                if kernel_id in self._remote:
                    alive = await self._poll_remote(kernel_id, kernel, now)
                else:
                    if kernel_id in self._unconfirmed:
                        self._confirm(kernel_id, kernel, now)
                    direct = local.get(kernel_id)
                    if direct is None:
                        direct = local[kernel_id] = polls_locally(kernel)
                    process = local_process(kernel) if direct else None
                    if process is not None:
                        alive = process.poll() is None
                    else:
                        alive = await self._is_alive(kernel)
            except Exception as e:
                self.log.debug("Could not poll kernel %s: %s", kernel_id, e)
                alive = True
            if alive:
                self._dead_since.pop(kernel_id, None)
            else:
                self._dead_since.setdefault(kernel_id, now)
        self._due_at = due_at

    async def _poll_remote(self, kernel_id: str, kernel: Any, now: float) -> bool:
        """Whether a gateway's kernel lives, from the gateway's model (read at most every
        REMOTE_POLL_EVERY); with no tab connected, its execution_state is what the relay knows."""
        last = self._remote_polled.get(kernel_id)
        if last is not None and now - last < REMOTE_POLL_EVERY:
            return kernel_id not in self._dead_since
        self._remote_polled[kernel_id] = now
        # not _is_alive: a gateway kernel's ``ready`` never resolves (jupyter_server 2.21)
        alive = bool(await ensure_async(kernel.is_alive()))
        # a kernel the gateway no longer has leaves the model empty
        alive = alive and bool(getattr(kernel, "has_kernel", True))
        if alive and self.gateway is not None:
            self.gateway.polled(
                kernel_id,
                getattr(kernel, "execution_state", None),
                getattr(kernel, "last_activity", None),
            )
        return alive

    def _confirm(self, kernel_id: str, kernel: Any, now: float) -> None:
        """Whether jupyter_server's IOPub watcher follows a local kernel; one its kernel
        manager never watches is not followed: never culled, it keeps the server (fail safe)."""
        watched = watches_iopub(kernel)
        if watched:
            del self._unconfirmed[kernel_id]
            if self._unobserved.pop(kernel_id, None) is not None:
                self.tracker.changed.set()
            return
        if watched is None:
            return  # still starting
        first = self._unconfirmed[kernel_id]
        if first is None:
            self._unconfirmed[kernel_id] = now
        elif now - first >= UNWATCHED_GRACE and kernel_id not in self._unobserved:
            self._unobserved[kernel_id] = now
            self.capabilities.lose(
                f"Activity of the kernels of {type(self.km).__name__} cannot be followed "
                "(no IOPub watcher runs for them)",
                "they are never culled, and keep the server up until max_busy_time",
            )
            self.tracker.changed.set()

    @staticmethod
    async def _is_alive(kernel: Any) -> bool:
        if getattr(kernel, "execution_state", None) == "dead":
            return False
        ready = getattr(kernel, "ready", None)
        if ready is not None and not ready.done():
            # a pending kernel still starting has no process to poll yet
            return True
        return bool(await ensure_async(kernel.is_alive()))

    def owns(self) -> dict[int, tuple[str, str]]:
        """The process id of each local kernel."""
        found = {}
        for kernel_id, (kernel, *_) in list(self._attached.items()):
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            if isinstance(pid, int):
                found[pid] = ("kernel", kernel_id)
        return found

    def state(self, kernel_id: str) -> KernelState | None:
        """A kernel's state as the last ``states()`` built it."""
        return self._states.get(kernel_id)

    def states(self) -> tuple[KernelState, ...]:
        """Each kernel's state; a kernel's previous state object while nothing about it changed
        (compared field by field, allocating nothing: at thousands of kernels a check's garbage
        is what costs, through the collector's passes)."""
        states = []
        connections = self.connections
        records = self.tracker.records
        built = self._states
        dead_since = self._dead_since
        for kernel_id, key in self._keys.items():
            record = records.get(key)
            if record is None:
                continue
            remote = self._remote.get(kernel_id, "")
            if remote and self.gateway is not None:
                open_connections: int | None = self.gateway.connections(kernel_id)
            else:
                open_connections = connections(kernel_id)
            dead = dead_since.get(kernel_id)
            unobserved = self._unobserved.get(kernel_id)
            state = built.get(kernel_id)
            if (
                state is None
                or state.last_activity != record.last_activity
                or state.busy_since != record.busy_since
                or state.connections != open_connections
                or state.dead_since != dead
                or state.computing_since != record.computing_since
                or state.computing != record.computing
                or state.name != record.name
                or state.unobserved_since != unobserved
                or state.remote != remote
            ):
                state = built[kernel_id] = KernelState(
                    id=kernel_id,
                    name=record.name,
                    last_activity=record.last_activity,
                    busy_since=record.busy_since,
                    connections=open_connections,
                    dead_since=dead,
                    computing_since=record.computing_since,
                    computing=record.computing,
                    timeout_override=self._overrides.get(kernel_id),
                    remote=remote,
                    unobserved_since=unobserved,
                )
            states.append(state)
        return tuple(states)

    def explain(self) -> str:
        if self.gateway is None:
            return "kernels"
        return f"kernels (on the gateway {self.gateway.url}, read from the messages relayed)"

    async def stop(self) -> None:
        self.detach_all()
        if self.gateway is not None:
            self.gateway.close()


def make(context: Context) -> KernelWatcher:
    km = context.serverapp.kernel_manager
    gateway = None
    if is_gateway_manager(km):
        gateway = GatewayRelay(
            context.serverapp.web_app, km, context.tracker, context.capabilities, context.log
        )
    return KernelWatcher(km, context.tracker, context.log, context.capabilities, gateway)
