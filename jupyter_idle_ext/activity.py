"""Activity: what each kernel, terminal and registered source did, and when, on a monotonic clock.

This module listens and records; it decides nothing. Kernels are followed through the traits
jupyter_server's own IOPub watcher already maintains (``last_activity`` moves on execution,
completion, inspection, widget messages and any output of a running or background-thread cell,
but not on kernel_info/comm_info requests and their status bursts; ``execution_state`` shows the
busy period), so following them costs no second copy of each message. Terminals are followed at
the pty: output of their programs, including the echo of typed keys, and never websocket traffic.
REST requests and websocket pings are never seen here, so they can never count.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from jupyter_core.utils import ensure_async

from .compat import (
    Capabilities,
    guard_iopub_watcher,
    kernel_connections,
    local_process,
    polls_locally,
    pty_read_hook,
)
from .policy import KernelState, Snapshot, SourceState, TerminalState

Clock = Callable[[], float]


@dataclass
class Record:
    """One source of activity: a kernel, a terminal, a document, a proxied app, or a source
    another extension registered."""

    kind: str
    id: str
    name: str
    last_activity: float
    busy_since: float | None = None
    # what it did last, for people: "saved", "input", ...
    detail: str = ""
    # a kernel or terminal whose process (or one it started) works: since when, and which
    computing_since: float | None = None
    computing: str | None = None
    # when its last busy period ended (a kernel's CPU then is its cell's, not a thread's)
    idle_since: float | None = None

    def describe(self) -> str:
        """The source as a person reads it in a reason: "notes.md saved", "rstudio: input"."""
        if self.kind == "document":
            return f"{self.name} {self.detail}".strip()
        if self.kind in ("kernel", "terminal"):
            return f"{self.kind} {self.id[:8]}"
        if self.kind == "process":
            return f"process {self.id.split('@')[0]} `{self.name}`"
        return f"{self.name}: {self.detail}" if self.detail else self.name


# the most documents a status lists (the most recently written ones)
MAX_DOCUMENTS = 20


class ActivityTracker:
    """The one place activity is kept; every consumer reads its snapshot.

    ``clock`` is monotonic (idle time), ``wall_clock`` is only used to turn a monotonic time into
    a timestamp for people and the Hub; both are seams for tests.
    """

    def __init__(self, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.started = clock()
        self.last_activity = self.started
        self.records: dict[tuple[str, str], Record] = {}
        # set when a source appears or a keep-alive changes, so the check loop looks again early
        # (other activity only moves deadlines later, so it needs no wake-up), and on any
        # activity while ``wake_on_activity`` (a shutdown warning in force, to cancel it at once)
        self.changed = asyncio.Event()
        self.wake_on_activity = False
        # set by activity that follows a quiet stretch longer than resume_gap (the Hub reporter's
        # interval), so the Hub hears at once that the server is used again
        self.resumed = asyncio.Event()
        self.resume_gap = float("inf")
        # a user's keep-alive: the server is not shut down for idleness before this time
        self.keepalive_until: float | None = None
        # when a user asked to stop the server once nothing works any more, or None
        self.stop_when_done: float | None = None
        # the source of the server's last activity, to name it in reasons
        self.last_record: Record | None = None
        # moves on every change, so a reader knows whether the loop's last plan saw it
        self.generation = 0

    # -- recording ---------------------------------------------------------------------------

    def _record(self, kind: str, id: str, name: str | None = None) -> Record:
        key = (kind, id)
        record = self.records.get(key)
        if record is None:
            record = Record(kind, id, name or id, self.clock())
            self.records[key] = record
            self.generation += 1
            self.changed.set()
        return record

    def _server_activity(self, now: float, record: Record) -> None:
        if now - self.last_activity > self.resume_gap:
            self.resumed.set()
        if self.wake_on_activity:
            self.changed.set()
        self.last_activity = max(self.last_activity, now)
        self.last_record = record
        self.generation += 1

    def touch(self, kind: str, id: str, name: str | None = None, detail: str | None = None) -> None:
        """Record activity of a source now (``detail``: what it did, for people)."""
        now = self.clock()
        record = self._record(kind, id, name)
        record.last_activity = now
        if detail is not None:
            record.detail = detail
        self._server_activity(now, record)

    def touch_document(self, path: str, action: str) -> None:
        """A document was written ("saved", "renamed", ...); only the latest ones are listed."""
        self.touch("document", path, path, action)
        documents = self.of_kind("document")
        if len(documents) > MAX_DOCUMENTS:
            oldest = min(documents, key=lambda r: r.last_activity)
            self.records.pop((oldest.kind, oldest.id), None)

    def set_busy(self, kind: str, id: str, busy: bool, name: str | None = None) -> None:
        """Mark the start or the end of a source's busy period; both ends are activity."""
        record = self._record(kind, id, name)
        now = self.clock()
        if busy and record.busy_since is None:
            record.busy_since = now
        elif not busy and record.busy_since is not None:
            record.busy_since = None
            record.idle_since = now
            if self.stop_when_done is not None:
                self.changed.set()  # what "stop when done" waits for may have ended
        record.last_activity = now
        self._server_activity(now, record)

    def set_computing(self, kind: str, id: str, command: str | None) -> None:
        """A kernel's or terminal's process (or one it started) works (``command``), or no
        longer does (None); both ends are activity."""
        record = self.records.get((kind, id))
        if record is None or (command is None) == (record.computing is None):
            if record is not None:
                record.computing = command
            return
        now = self.clock()
        record.computing = command
        record.computing_since = now if command is not None else None
        if command is None and self.stop_when_done is not None:
            self.changed.set()
        record.last_activity = now
        self._server_activity(now, record)

    def add(self, kind: str, id: str, name: str) -> Record:
        """Start following a source found between checks.

        Its idle clock starts now: a kernel or terminal is found within one check of its start
        (a kernel start also wakes the loop), and counting from its wall-clock timestamp instead
        could cull early after a wall-clock jump.
        """
        record = self._record(kind, id, name)
        record.name = name
        return record

    def remove(self, kind: str, id: str) -> None:
        """Forget a source; its activity still counts for the server's last activity."""
        if self.records.pop((kind, id), None) is not None:
            self.generation += 1

    def keep_alive(self, seconds: float) -> float:
        """Keep the server up for ``seconds`` from now (replacing any earlier keep-alive)."""
        self.keepalive_until = self.clock() + seconds
        self.generation += 1
        self.changed.set()
        return self.keepalive_until

    def cancel_keepalive(self) -> bool:
        """End the keep-alive; True when there was one in force."""
        active = self.keepalive_until is not None and self.keepalive_until > self.clock()
        self.keepalive_until = None
        self.generation += 1
        self.changed.set()
        return active

    def set_stop_when_done(self, on: bool) -> bool:
        """Stop the server once nothing works any more (or no longer); True when it changed."""
        changed = (self.stop_when_done is not None) != on
        if changed:
            self.stop_when_done = self.clock() if on else None
            self.generation += 1
            self.changed.set()
        return changed

    def of_kind(self, kind: str) -> list[Record]:
        return [r for r in self.records.values() if r.kind == kind]

    # -- reading -----------------------------------------------------------------------------

    def to_wall(self, monotonic: float) -> float:
        """A monotonic time as a POSIX timestamp on today's wall clock."""
        return self.wall_clock() - (self.clock() - monotonic)

    def isoformat(self, monotonic: float) -> str:
        """A monotonic time as UTC ISO 8601 with ``Z``."""
        stamp = datetime.fromtimestamp(self.to_wall(monotonic), tz=timezone.utc)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# a kernel's process is polled at most this often (its death is seen within this, far inside
# the dead kernel's grace of policy.DEAD_KERNEL_GRACE)
POLL_EVERY = 1.0


class KernelWatcher:
    """Follows the kernels of a MappingKernelManager into an ActivityTracker."""

    def __init__(
        self,
        kernel_manager: Any,
        tracker: ActivityTracker,
        log: Any,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.km = kernel_manager
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
        # guard jupyter_server's IOPub watcher on every (re)start of watching
        original = getattr(kernel_manager, "start_watching_activity", None)
        self._original_start_watching = original
        if original is not None:

            def start_watching_activity(kernel_id: str) -> None:
                original(kernel_id)
                self._guard_watcher(kernel_id)

            kernel_manager.start_watching_activity = start_watching_activity

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
            kernel.execution_state = "starting"

        kernel.observe(on_activity, names=["last_activity"])
        kernel.observe(on_state, names=["execution_state"])
        if hasattr(kernel, "add_restart_callback"):
            kernel.add_restart_callback(on_restart, "restart")
        self._attached[kernel_id] = (kernel, on_activity, on_state, on_restart)
        self._keys[kernel_id] = ("kernel", kernel_id)
        self._overrides[kernel_id] = self._timeout_override(kernel, record.name)

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
        if self._original_start_watching is not None:
            self.km.start_watching_activity = self._original_start_watching

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

    @staticmethod
    async def _is_alive(kernel: Any) -> bool:
        if getattr(kernel, "execution_state", None) == "dead":
            return False
        ready = getattr(kernel, "ready", None)
        if ready is not None and not ready.done():
            # a pending kernel still starting has no process to poll yet
            return True
        return bool(await ensure_async(kernel.is_alive()))

    def pids(self) -> dict[int, tuple[str, str]]:
        """The process id of each local kernel."""
        found = {}
        for kernel_id, (kernel, *_) in list(self._attached.items()):
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            if isinstance(pid, int):
                found[pid] = ("kernel", kernel_id)
        return found

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
            open_connections = connections(kernel_id)
            dead = dead_since.get(kernel_id)
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
                )
            states.append(state)
        return tuple(states)


class TerminalWatcher:
    """Follows jupyter_server_terminals' terminals at the pty into an ActivityTracker."""

    def __init__(
        self,
        terminal_manager: Any,
        tracker: ActivityTracker,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.tm = terminal_manager
        self.tracker = tracker
        capabilities = capabilities or Capabilities(None)
        # without the hook nothing of a terminal is seen: it is never culled
        self.seen = pty_read_hook(terminal_manager, capabilities)
        if not self.seen:
            return
        self._original_hook = terminal_manager.pre_pty_read_hook

        def pre_pty_read_hook(ptywclients: Any) -> None:
            # output of the terminal's programs, which includes the echo of every typed key
            self._original_hook(ptywclients)
            name = getattr(ptywclients, "_idle_ext_name", None)
            if name is None:
                name = self._name_of(ptywclients)
            if name is not None and not getattr(ptywclients, "_idle_ext_stopping", False):
                self.tracker.touch("terminal", name)

        terminal_manager.pre_pty_read_hook = pre_pty_read_hook

    def _name_of(self, ptywclients: Any) -> str | None:
        for name, term in self.tm.terminals.items():
            if term is ptywclients:
                ptywclients._idle_ext_name = name
                return str(name)
        return None

    def sync(self) -> None:
        current = set(self.tm.terminals)
        known = {r.id for r in self.tracker.of_kind("terminal")}
        for name in current - known:
            self.tracker.add("terminal", name, name)
        for name in known - current:
            self.tracker.remove("terminal", name)

    def states(self) -> tuple[TerminalState, ...]:
        return tuple(
            TerminalState(r.id, r.last_activity, r.computing_since, r.computing, self.seen)
            for r in self.tracker.of_kind("terminal")
        )

    def pids(self) -> dict[int, tuple[str, str]]:
        """The process id of each terminal's shell."""
        found = {}
        for name, term in list(self.tm.terminals.items()):
            pid = getattr(getattr(term, "ptyproc", None), "pid", None)
            if isinstance(pid, int):
                found[pid] = ("terminal", str(name))
        return found

    def stopping(self, name: str) -> None:
        """The terminal is being culled: what its shell prints on the way out is not activity."""
        term = self.tm.terminals.get(name)
        if term is not None:
            term._idle_ext_stopping = True

    def close(self) -> None:
        if self.seen:
            self.tm.pre_pty_read_hook = self._original_hook


def snapshot(
    tracker: ActivityTracker,
    kernels: tuple[KernelState, ...],
    terminals: tuple[TerminalState, ...],
) -> Snapshot:
    """Everything the policy needs, read now."""
    sources = tuple(
        SourceState(r.kind, r.id, r.name, r.last_activity, r.busy_since, r.detail)
        for r in tracker.records.values()
        if r.kind not in ("kernel", "terminal")
    )
    last = tracker.last_record
    return Snapshot(
        now=tracker.clock(),
        started=tracker.started,
        last_activity=tracker.last_activity,
        kernels=kernels,
        terminals=terminals,
        sources=sources,
        keepalive_until=tracker.keepalive_until,
        stop_when_done=tracker.stop_when_done,
        last_source=last.describe() if last is not None else None,
    )
