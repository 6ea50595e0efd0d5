"""Actions: the check loop that turns the policy's decisions into culls, warnings and the shutdown.

One check reads the activity snapshot, asks the policy, carries out what it decided and sleeps
until the earliest deadline (never longer than ``cull_interval``). A failing kernel or terminal is
logged and the loop goes on; only the shutdown ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Callable

from jupyter_core.utils import ensure_async

from .activity import ActivityTracker, snapshot
from .metrics import KERNELS_CULLED, SERVER_STOPS, TERMINALS_CULLED, server_labels
from .policy import (
    Decision,
    Plan,
    PolicyConfig,
    Snapshot,
    decide,
)
from .shutdown import exit_promptly
from .sources import Source
from .sources.kernels import KernelWatcher
from .sources.terminals import TerminalWatcher

# how long a kernel gets to honour a shutdown_request before it is killed
KERNEL_STOP_TIMEOUT = 30.0


def _stops_something(plan: Plan) -> bool:
    return (
        plan.server.action == "shutdown"
        or any(d.action == "cull" for d in plan.kernels)
        or any(d.action == "cull" for d in plan.terminals)
    )


def _describe_seconds(value: float | None, off: str = "off") -> str:
    if value is None or value <= 0:
        return off
    return f"{value:g} s"


class IdleCuller:
    """Runs the checks and carries out their decisions."""

    def __init__(
        self,
        *,
        tracker: ActivityTracker,
        config: PolicyConfig,
        kernels: KernelWatcher,
        terminals: TerminalWatcher | None,
        kernel_manager: Any,
        terminal_manager: Any,
        stop_server: Callable[[str], Awaitable[None]],
        log: Any,
        shutdown_grace: float = 30.0,
        emit: Callable[[dict[str, Any]], None] = lambda event: None,
        sources: Sequence[Source] | None = None,
        unsaved: Callable[[], str] = lambda: "",
    ) -> None:
        self.tracker = tracker
        self.config = config
        self.kernels = kernels
        self.terminals = terminals
        self.km = kernel_manager
        self.tm = terminal_manager
        self.stop_server = stop_server
        self.log = log
        self.shutdown_grace = shutdown_grace
        self.emit = emit
        # "2 documents unsaved: they will be saved before the stop", or "", for the warning
        self.unsaved = unsaved
        self.stopping = False
        # every source: refreshed before each check, and asked to look again right before
        # anything is stopped (the process source samples then)
        self.sources: Sequence[Source] = (
            sources if sources is not None else [s for s in (kernels, terminals) if s is not None]
        )
        # (rule, deadline) of the shutdown we have warned about
        self._warned: tuple[str, float] | None = None
        # culls under way, by (kind, id): a kernel slow to stop must not hold up the others
        self._culls: dict[tuple[str, str], asyncio.Task[None]] = {}
        # what the last check saw and decided, for every reader; set when it is published
        self.snapshot: Snapshot | None = None
        self.plan: Plan | None = None
        self.generation = -1
        # the config the published plan was decided with
        self._decided_with: PolicyConfig | None = None
        # what a reader was told since the last check: (tracker generation, snapshot, plan)
        self._view: tuple[int, Snapshot, Plan] | None = None
        # a warning in force is cancelled by the first activity, at once
        tracker.listen(self._on_activity)

    def _on_activity(self, now: float, before: float) -> None:
        if self._warned is not None:
            self.tracker.changed.set()

    def describe(self) -> str:
        """The effective policy in one line, for the start-up log."""
        c = self.config
        busy = "culled" if c.cull_busy else "kept"
        if not c.cull_busy and c.max_busy_time > 0:
            busy += f" up to max_busy_time {c.max_busy_time:g} s"
        return (
            f"culling kernels idle for {_describe_seconds(c.cull_idle_timeout)} "
            f"(connected: {'culled' if c.cull_connected else 'kept'}, busy: {busy}), "
            f"terminals idle for {_describe_seconds(c.terminal_timeout)}; "
            f"shutting the server down after {_describe_seconds(c.server_idle_timeout)} "
            f"without activity, at age {_describe_seconds(c.max_server_age)}, "
            f"warning {_describe_seconds(c.shutdown_warning)} before; "
            f"checking at least every {c.cull_interval:g} s"
        )

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        woken = True
        while True:
            # cleared before the snapshot: a wake-up that arrives during the check (a kernel
            # started meanwhile) makes the next check come at once instead of being lost
            self.tracker.changed.clear()
            next_check = self.tracker.clock() + self.config.cull_interval
            try:
                plan = await self.check(poll_all=woken)
                next_check = plan.next_check
            except Exception:
                self.log.exception("A check failed; the next one is at most cull_interval away")
            if self.stopping:
                return
            delay = max(0.05, next_check - self.tracker.clock())
            try:
                await asyncio.wait_for(self.tracker.changed.wait(), delay)
                woken = True
            except asyncio.TimeoutError:
                woken = False  # a deadline's check: kernels polled a moment ago are not again

    def take_snapshot(self) -> Snapshot:
        terminals = self.terminals.states() if self.terminals else ()
        return snapshot(self.tracker, self.kernels.states(), terminals)

    async def check(self, poll_all: bool = True) -> Plan:
        """One check: snapshot, decide, act, and publish the snapshot and plan for the readers.
        Without ``poll_all`` (a check at a deadline), a kernel whose process was polled within
        the last second is not polled again."""
        for source in self.sources:
            await source.refresh(poll_all)
        # what the snapshot includes: nothing can happen between these two lines
        generation, snap = self.tracker.generation, self.take_snapshot()
        # the last check's keeps carry over for the kernels that did not change (policy.decide)
        previous = None
        if (
            self.snapshot is not None
            and self.plan is not None
            and self._decided_with is self.config
        ):
            previous = self.snapshot, self.plan
        plan = decide(snap, self.config, previous)
        if _stops_something(plan) or (plan.server.action == "warn" and self._warned is None):
            # what started since a source last looked must not lose to its phase (and a new
            # warning names what the stop would cancel as it is now)
            for source in self.sources:
                await source.recheck()
            generation, snap = self.tracker.generation, self.take_snapshot()
            plan = decide(snap, self.config, previous)
        self.snapshot, self.plan, self.generation = snap, plan, generation
        self._decided_with = self.config
        for decision in plan.kernels:
            if decision.action in ("cull", "remove"):
                self._start_cull(decision, self._act_on_kernel)
        for decision in plan.terminals:
            if decision.action == "cull":
                self._start_cull(decision, self._cull_terminal)
        await self._act_on_server(plan.server)
        return plan

    def current(self) -> tuple[Snapshot, Plan] | None:
        """The loop's decisions as of now, for a reader (None before the first check).

        While nothing happened since the last check, its published snapshot and plan; else the
        policy's decisions on a snapshot taken now, with the last plan's keeps carried over as the
        loop carries them. A reader never runs a check, acts or publishes: the loop acts on the
        same pure decisions at its next check, at the latest at the earliest deadline it planned
        (activity only moves deadlines later; what could move one earlier wakes the loop)."""
        if self.plan is None or self.snapshot is None:
            return None
        generation = self.tracker.generation
        if self.generation == generation:
            return self.snapshot, self.plan  # nothing happened since: still the truth
        if self._view is not None and self._view[0] == generation:
            return self._view[1], self._view[2]
        snap = self.take_snapshot()
        previous = (self.snapshot, self.plan) if self._decided_with is self.config else None
        plan = decide(snap, self.config, previous)
        self._view = (generation, snap, plan)
        return snap, plan

    def stopping_ids(self) -> set[str]:
        """Ids of the kernels and terminals being stopped right now."""
        return {id for _, id in self._culls}

    def _start_cull(self, decision: Decision, act: Callable[[Decision], Awaitable[None]]) -> None:
        key = (decision.kind, decision.id)
        if key in self._culls:
            return  # still stopping from an earlier check

        def done(task: asyncio.Task[None]) -> None:
            self._culls.pop(key, None)
            if not task.cancelled() and task.exception() is not None:
                self.log.error("Culling %s %s failed: %s", *key, task.exception())
            # what could not be stopped is tried again at the next check

        self._culls[key] = task = asyncio.ensure_future(act(decision))
        task.add_done_callback(done)

    def seconds_to_shutdown(self) -> float:
        """Seconds until the server shuts down, or -1 while nothing will, counted to now, from
        the same snapshot and plan as the status (``current``)."""
        current = self.current()
        if current is None or current[1].server.deadline is None:
            return -1.0
        return max(0.0, current[1].server.deadline - self.tracker.clock())

    def kept_by(self) -> tuple[str, str]:
        """What keeps the server up right now, for the usage metric: (kernel, process, job or
        extension while it works, or keepalive; "") or, while nothing works, ("idle", the kind
        of the last activity: document, app, kernel, terminal, ..., or "none"). From the same
        snapshot and plan as the status (``current``)."""
        current = self.current()
        if current is None:
            return "idle", "none"
        snap, plan = current
        if plan.working is not None:
            return plan.working.kind, ""
        if snap.keepalive_until is not None and snap.keepalive_until > snap.now:
            return "keepalive", ""
        return "idle", snap.last_kind or "none"

    def idle_seconds(self) -> float:
        """Seconds since the last activity as the Hub sees it (0 while something works), as of
        now, from the same snapshot and plan as the status (``current``)."""
        current = self.current()
        if current is None:
            return 0.0
        snap, plan = current
        if plan.reported_activity >= snap.now:
            return 0.0
        return max(0.0, self.tracker.clock() - snap.last_activity)

    async def reported_activity(self) -> float:
        """The server's last activity as the Hub should see it (now while something works)."""
        current = self.current()
        if current is None:
            return self.tracker.last_activity
        snap, plan = current
        if plan.reported_activity >= snap.now:
            return self.tracker.clock()  # working: "now" is now, not the check's now
        return max(plan.reported_activity, self.tracker.last_activity)

    # -- kernels and terminals ---------------------------------------------------------------

    async def _act_on_kernel(self, decision: Decision) -> None:
        kernel_id = decision.id
        try:
            kernel = self.km.get_kernel(kernel_id)
        except KeyError:
            return
        name = getattr(kernel, "kernel_name", "")
        state = self.kernels.state(kernel_id)
        connections = state.connections if state is not None else None
        remote = state.remote if state is not None else ""
        where = f" on the gateway {remote}" if remote else ""
        if decision.action == "remove":
            self.log.warning("Removing dead kernel '%s' (%s)%s.", name, kernel_id, where)
        else:
            self.log.warning(
                "Culling %s%s kernel '%s' (%s)%s with %s connections: %s.",
                "busy" if state is not None and state.busy_since is not None else "idle",
                " remote" if remote else "",
                name,
                kernel_id,
                where,
                "unknown" if connections is None else connections,
                decision.reason,
            )
        await self.stop_kernel(kernel_id, dead=decision.action == "remove")
        self.kernels.sync()
        rule = decision.rule or "dead"
        KERNELS_CULLED.labels(rule).inc()
        self.emit(
            {
                "action": "kernel_removed" if decision.action == "remove" else "kernel_culled",
                "kind": "kernel",
                "id": kernel_id,
                "name": name,
                **({"remote": remote} if remote else {}),
                "reason": decision.reason,
                "rule": rule,
                "idle_seconds": round(decision.idle, 1),
            }
        )

    async def stop_kernel(self, kernel_id: str, dead: bool = False) -> None:
        """Stop a kernel: politely first, then by force. Never raises: a kernel that cannot be
        stopped now is logged and tried again at the next check."""
        try:
            await asyncio.wait_for(
                ensure_async(self.km.shutdown_kernel(kernel_id, now=dead)), KERNEL_STOP_TIMEOUT
            )
            return
        except KeyError:
            return
        except Exception as e:
            if dead:
                self.log.warning(
                    "Could not clean up dead kernel %s (%s); removing it.", kernel_id, e
                )
                if kernel_id in self.km:
                    self.km.remove_kernel(kernel_id)
                return
            self.log.warning(
                "Kernel %s did not shut down cleanly (%s); stopping it now.", kernel_id, e
            )
        try:
            if kernel_id in self.km:
                await ensure_async(self.km.shutdown_kernel(kernel_id, now=True))
        except Exception as e:
            self.log.error(
                "Could not stop kernel %s: %s; trying again at the next check.", kernel_id, e
            )

    async def _cull_terminal(self, decision: Decision) -> None:
        self.log.warning("Culling terminal '%s': %s.", decision.id, decision.reason)
        if self.terminals is not None:
            self.terminals.stopping(decision.id)
        try:
            await self.tm.terminate(decision.id, force=True)
        except Exception as e:
            self.log.error("Could not stop terminal %s: %s", decision.id, e)
        self.tracker.remove("terminal", decision.id)
        TERMINALS_CULLED.labels(decision.rule).inc()
        self.emit(
            {
                "action": "terminal_culled",
                "kind": "terminal",
                "id": decision.id,
                "reason": decision.reason,
                "rule": decision.rule,
                "idle_seconds": round(decision.idle, 1),
            }
        )

    # -- the server --------------------------------------------------------------------------

    async def _act_on_server(self, decision: Decision) -> None:
        if decision.action == "shutdown":
            await self.shutdown(decision)
            return
        if decision.action == "warn" and decision.deadline is not None:
            warned = self._warned
            at = self.tracker.isoformat(decision.deadline)
            left = round(decision.deadline - self.tracker.clock())
            # warned again for another rule or an earlier time; a later time under the same
            # rule (stop when done, where each save pushes the deadline a little) is logged only
            if warned is None or warned[0] != decision.rule or decision.deadline < warned[1] - 1:
                unsaved = self.unsaved()
                self.log.warning(
                    "The server will shut down at %s (in %d s): %s%s%s.",
                    at,
                    left,
                    decision.rule,
                    f"; {decision.cancels}" if decision.cancels else "",
                    f"; {unsaved}" if unsaved else "",
                )
                self._server_event("shutdown_warned", decision, at=at)
                self._warned = (decision.rule, decision.deadline)
            elif decision.deadline > warned[1] + 1:
                self.log.info("The shutdown moved to %s (in %d s): %s.", at, left, decision.rule)
                self._warned = (decision.rule, decision.deadline)
        elif self._warned is not None:
            self.log.warning("Shutdown cancelled: %s.", decision.reason)
            self._server_event("shutdown_cancelled", decision)
            self._warned = None

    def _server_event(self, action: str, decision: Decision, **extra: Any) -> None:
        self.emit(
            {
                "action": action,
                "kind": "server",
                "id": "",
                "reason": decision.reason,
                "rule": decision.rule,
                "idle_seconds": round(decision.idle, 1),
                **extra,
            }
        )

    async def shutdown(self, decision: Decision) -> None:
        """Stop the server; the process exits 0 within ``shutdown_grace`` whatever holds it up."""
        if self.stopping:
            return
        self.stopping = True
        self.log.warning(
            "Shutting down the server: %s%s.",
            decision.reason,
            f"; {decision.cancels}" if decision.cancels else "",
        )
        self._server_event("shutdown_started", decision)
        SERVER_STOPS.labels(decision.rule or "", *server_labels()).inc()
        exit_promptly(asyncio.get_running_loop(), self.shutdown_grace, self.log)
        await self.stop_server(decision.reason)

    def close(self) -> None:
        self.stopping = True
        for task in self._culls.values():
            task.cancel()
