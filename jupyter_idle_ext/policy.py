"""The idle policy: from an activity snapshot, the configuration and now to decisions.

Nothing here does I/O or reads a clock: every time is a monotonic second passed in by the caller,
so the rules can be tested in a table without servers, kernels or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# how long after nothing works any more "stop when done" stops the server, when shutdown_warning
# (which it uses otherwise) is 0
STOP_WHEN_DONE_DELAY = 60.0

# how long a dead kernel stays listed before it is removed: a client that started it (a kernel
# that failed to start, say) can still read its model and tell the user why it is gone
DEAD_KERNEL_GRACE = 10.0


@dataclass(frozen=True)
class PolicyConfig:
    """The options the rules read (seconds; 0 disables a rule). Their defaults and meaning are
    in options.py; ``IdleOptions.default_policy()`` builds one from the defaults."""

    cull_idle_timeout: float
    cull_interval: float
    cull_connected: bool
    cull_busy: bool
    max_busy_time: float
    terminal_idle_timeout: float | None
    server_idle_timeout: float
    max_server_age: float
    shutdown_warning: float
    # keep an idle server up for a scheduled run due within this long of its idle shutdown
    scheduled_run_wait: float = 0.0

    @property
    def terminal_timeout(self) -> float:
        """The terminal timeout in force: its own, or the kernels' when it is not set."""
        if self.terminal_idle_timeout is None:
            return self.cull_idle_timeout
        return self.terminal_idle_timeout


@dataclass(frozen=True)
class KernelState:
    """What the activity module knows about one kernel at snapshot time."""

    id: str
    name: str
    last_activity: float
    busy_since: float | None = None
    # open websocket connections; None when they cannot be known (counted as connected)
    connections: int | None = 0
    # when its process was first seen dead, or None while it lives
    dead_since: float | None = None
    # the kernelspec's metadata.cull_idle_timeout, when it has one
    timeout_override: float | None = None
    # since when its process (or one it started) works while it reports idle, and which
    computing_since: float | None = None
    computing: str | None = None
    # the gateway it runs on (its URL), or "" for a kernel of this server
    remote: str = ""
    # since when its activity cannot be followed (fail safe: never culled, keeps the server up
    # to max_busy_time), or None while it is followed
    unobserved_since: float | None = None

    @property
    def alive(self) -> bool:
        return self.dead_since is None


@dataclass(frozen=True)
class TerminalState:
    """What the activity module knows about one terminal at snapshot time."""

    name: str
    last_activity: float
    # since when a program running in it works, and which
    computing_since: float | None = None
    computing: str | None = None
    # False when its input and output cannot be seen: then it is never culled
    seen: bool = True


@dataclass(frozen=True)
class SourceState:
    """Any other source of activity: a document written, an app behind jupyter-server-proxy, a
    source another extension registered."""

    kind: str
    id: str
    name: str
    last_activity: float
    busy_since: float | None = None
    # what it did last, for people: "saved", "input", ...
    detail: str = ""


@dataclass(frozen=True)
class ScheduledRun:
    """The next run of a scheduled job (jupyter-scheduler's job definition), which runs only
    while the server is up."""

    name: str
    # when it is due (monotonic), and the same as a UTC timestamp for people
    due: float
    at: str


# how long after a scheduled run's due time the server waits for the run's kernel to be found
SCHEDULED_RUN_START = 120.0


@dataclass(frozen=True)
class Snapshot:
    """Everything the rules need, read at one instant (``now``) on the monotonic clock."""

    now: float
    started: float
    # the server's last activity, kept also for sources that no longer exist (a culled kernel)
    last_activity: float
    kernels: tuple[KernelState, ...] = ()
    terminals: tuple[TerminalState, ...] = ()
    sources: tuple[SourceState, ...] = ()
    # a user's keep-alive: no idle shutdown before this time
    keepalive_until: float | None = None
    # what the last activity was, for people ("notes.md saved", "kernel 3f2a5b1c")
    last_source: str | None = None
    # when a user asked to stop the server once nothing works any more
    stop_when_done: float | None = None
    # the next run of each scheduled job, soonest first
    scheduled: tuple[ScheduledRun, ...] = ()


@dataclass(frozen=True)
class Decision:
    """One decision about one thing, with the reason a person can read and the deadline it hangs on.

    ``action`` is "keep", "cull" (stop an idle kernel or terminal), "remove" (a dead kernel),
    "warn" (the server will shut down soon) or "shutdown". The reason is formatted only when
    someone reads it, and can be read later than the decision was made: ``reason_at(now)`` counts
    its durations ("idle 12 s") to ``now`` from the times in ``clocks``.
    """

    kind: str
    id: str
    action: str
    # a str.format template: positional fields from ``args``, named ones from ``clocks``
    # ({idle} is "12 s" of idle time) and {left} (the time to the deadline)
    template: str
    now: float
    deadline: float | None = None
    rule: str = ""
    args: tuple[Any, ...] = ()
    clocks: tuple[tuple[str, float], ...] = ()
    # the server's: what works and keeps it, in a few words ("kernel busy"), its clock "busy"
    kept_by: str = ""
    # the scheduled runs a shutdown at this decision's deadline cancels, for people
    cancels: str = ""

    def reason_at(self, now: float) -> str:
        values = {name: _seconds(max(0.0, now - since)) for name, since in self.clocks}
        if self.deadline is not None:
            values["left"] = _seconds(max(0.0, self.deadline - now))
        return self.template.format(*self.args, **values)

    @property
    def reason(self) -> str:
        return self.reason_at(self.now)

    @property
    def idle(self) -> float:
        """Seconds idle when decided (0 for something working)."""
        for name, since in self.clocks:
            if name == "idle":
                return max(0.0, self.now - since)
        return 0.0


@dataclass(frozen=True)
class Plan:
    """All decisions of one check, and when the next check must happen at the latest."""

    kernels: tuple[Decision, ...]
    terminals: tuple[Decision, ...]
    server: Decision
    next_check: float
    # when the server will shut down (monotonic), or None while something keeps it
    shutdown_at: float | None = None
    warn_at: float | None = None
    # the last activity to report to the Hub (now while something works)
    reported_activity: float = 0.0


def stop_when_done_delay(config: Any) -> float:
    """Seconds after nothing works any more at which "stop when done" stops the server."""
    return float(config.shutdown_warning or STOP_WHEN_DONE_DELAY)


def _literal(text: str) -> str:
    """Text put into a reason template as it is (a job's name may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")


def _seconds(value: float) -> str:
    return f"{round(value)} s"


def kernel_timeout(kernel: KernelState, config: PolicyConfig) -> tuple[float, str]:
    """The idle timeout for a kernel and the option it comes from."""
    if kernel.timeout_override is not None:
        return kernel.timeout_override, "kernelspec cull_idle_timeout"
    return config.cull_idle_timeout, "cull_idle_timeout"


def decide_kernel(kernel: KernelState, config: PolicyConfig, now: float) -> Decision:
    """Cull, remove or keep one kernel."""
    kid = kernel.id
    if kernel.dead_since is not None:
        removal = kernel.dead_since + DEAD_KERNEL_GRACE
        if now >= removal:
            return Decision("kernel", kid, "remove", "kernel process is dead", now, removal, "dead")
        return Decision(
            "kernel", kid, "keep", "kernel process is dead; removed in {left}", now, removal
        )
    timeout, option = kernel_timeout(kernel, config)
    idle = (("idle", kernel.last_activity),)
    if kernel.unobserved_since is not None:
        # unknown means working, never idle since the start
        return Decision("kernel", kid, "keep", "its activity cannot be seen: never culled", now)
    if timeout <= 0:
        return Decision(
            "kernel", kid, "keep", "{0} is 0: never culled", now, args=(option,), clocks=idle
        )
    if not config.cull_connected and kernel.connections != 0:
        # unknown connections (None) count as connected: never cull more than asked
        if kernel.connections is None:
            template = "connections unknown and cull_connected is off"
        else:
            template = "{0} connection(s) open and cull_connected is off"
        return Decision(
            "kernel", kid, "keep", template, now, args=(kernel.connections,), clocks=idle
        )
    deadline = kernel.last_activity + timeout
    past_cap = ""
    clocks: tuple[tuple[str, float], ...] = idle
    # executing a cell, or computing outside one (a thread, a process it started)
    busy_since, busy = kernel.busy_since, "busy"
    if busy_since is None and kernel.computing_since is not None:
        busy_since, busy = kernel.computing_since, f"computing ({kernel.computing})"
    if busy_since is not None and not config.cull_busy:
        cap = config.max_busy_time
        if cap <= 0 or now - busy_since < cap:
            # a busy kernel is working, however silent; only the cap can end that
            return Decision(
                "kernel",
                kid,
                "keep",
                "{0} for {busy}",
                now,
                busy_since + cap if cap > 0 else None,
                args=(busy,),
                clocks=(("busy", busy_since),),
            )
        deadline = max(deadline, busy_since + cap)
        past_cap = "{2} {busy} >= max_busy_time {3}, "
        clocks = (*idle, ("busy", busy_since))
    args = (option, _seconds(timeout), busy, _seconds(config.max_busy_time))
    if now >= deadline:
        rule = "max_busy_time" if past_cap else option
        template = past_cap + "idle {idle} >= {0} {1}"
        return Decision("kernel", kid, "cull", template, now, deadline, rule, args, clocks)
    template = past_cap + "idle {idle} of {0} {1}"
    return Decision("kernel", kid, "keep", template, now, deadline, "", args, clocks)


def decide_terminal(terminal: TerminalState, config: PolicyConfig, now: float) -> Decision:
    """Cull or keep one terminal."""
    name = terminal.name
    timeout = config.terminal_timeout
    option = (
        "terminal_idle_timeout" if config.terminal_idle_timeout is not None else "cull_idle_timeout"
    )
    idle = (("idle", terminal.last_activity),)
    args = (option, _seconds(timeout), terminal.computing)
    if timeout <= 0:
        return Decision(
            "terminal", name, "keep", "{0} is 0: never culled", now, args=args, clocks=idle
        )
    if not terminal.seen:
        return Decision("terminal", name, "keep", "its activity cannot be seen: never culled", now)
    deadline = terminal.last_activity + timeout
    if terminal.computing_since is not None:
        cap = config.max_busy_time
        if cap <= 0 or now - terminal.computing_since < cap:
            # a silent program in it works (culling would kill it)
            return Decision(
                "terminal",
                name,
                "keep",
                "running {2} for {busy}",
                now,
                terminal.computing_since + cap if cap > 0 else None,
                args=args,
                clocks=(("busy", terminal.computing_since),),
            )
        deadline = max(deadline, terminal.computing_since + cap)
    if now >= deadline:
        return Decision(
            "terminal", name, "cull", "idle {idle} >= {0} {1}", now, deadline, option, args, idle
        )
    return Decision(
        "terminal", name, "keep", "idle {idle} of {0} {1}", now, deadline, "", args, idle
    )


def working(snapshot: Snapshot, config: PolicyConfig) -> tuple[str, float, str] | None:
    """What keeps the server working right now, as (template, since, what), or None; the
    template's {busy} is the time since then, ``what`` says it in a few words for an indicator
    ("kernel busy", "process `python train.py` working")."""
    now = snapshot.now
    cap = config.max_busy_time

    def capped(since: float) -> bool:
        return cap > 0 and now - since >= cap

    for kernel in snapshot.kernels:
        if not kernel.alive:
            continue
        unseen = kernel.unobserved_since
        if unseen is not None and not capped(unseen):
            what = f"kernel {kernel.id} whose activity cannot be seen, for {{busy}}"
            return what, unseen, "kernel not observable"
        if kernel.busy_since is not None and not capped(kernel.busy_since):
            return f"kernel {kernel.id} busy for {{busy}}", kernel.busy_since, "kernel busy"
        if kernel.computing_since is not None and not capped(kernel.computing_since):
            what = f"kernel {kernel.id} computing ({kernel.computing})"
            return what + " for {busy}", kernel.computing_since, "kernel computing"
    for source in snapshot.sources:
        if source.busy_since is None:
            continue
        # a process is capped like a kernel; another extension's source says when it is done
        if source.kind == "process":
            if capped(source.busy_since):
                continue
            pid = source.id.split("@")[0]
            what = f"process {pid} `{source.name}` at {source.detail}"
            return what + " for {busy}", source.busy_since, f"process `{source.name}` working"
        if source.kind == "job":
            if capped(source.busy_since):
                continue
            detail = f", {source.detail}" if source.detail else ""
            return f"{source.name}{detail} busy for {{busy}}", source.busy_since, "job running"
        return f"{source.name} busy for {{busy}}", source.busy_since, f"{source.name} busy"
    return None


def reported_activity(snapshot: Snapshot, config: PolicyConfig) -> float:
    """The last activity to tell the Hub: now while something works or a keep-alive is in force
    (so the Hub's own culler respects it too), else the last activity."""
    keepalive = snapshot.keepalive_until is not None and snapshot.keepalive_until > snapshot.now
    if keepalive or working(snapshot, config) is not None:
        return snapshot.now
    return snapshot.last_activity


def decide_server(snapshot: Snapshot, config: PolicyConfig) -> Decision:
    """Shut the server down, warn that it will, or keep it, with the rule that decides."""
    now = snapshot.now
    idle = (("idle", snapshot.last_activity),)
    last = f", last activity: {snapshot.last_source}" if snapshot.last_source else ""
    stop_when_done = snapshot.stop_when_done
    watching = config.server_idle_timeout > 0 or stop_when_done is not None
    busy = working(snapshot, config) if watching else None
    # (deadline, rule, template when it fires)
    candidates: list[tuple[float, str, str]] = []
    if config.max_server_age > 0:
        candidates.append(
            (
                snapshot.started + config.max_server_age,
                "max_server_age",
                "age {age} >= max_server_age {0}",
            )
        )
    if config.server_idle_timeout > 0 and busy is None:
        deadline = snapshot.last_activity + config.server_idle_timeout
        if snapshot.keepalive_until is not None and snapshot.keepalive_until > deadline:
            candidates.append(
                (
                    snapshot.keepalive_until,
                    "keepalive",
                    "keep-alive ended, idle {idle} >= server_idle_timeout {1}",
                )
            )
        else:
            candidates.append(
                (deadline, "server_idle_timeout", "idle {idle} >= server_idle_timeout {1}{2}")
            )
    waiting_for = ""
    if config.server_idle_timeout > 0 and busy is None and config.scheduled_run_wait > 0:
        # a run due soon after the idle shutdown would be lost: wait for it, within the bound
        idle_deadline = snapshot.last_activity + config.server_idle_timeout
        for run in snapshot.scheduled:
            due_soon = run.due <= idle_deadline + config.scheduled_run_wait
            if now <= run.due + SCHEDULED_RUN_START and due_soon:
                waiting_for = run.name
                candidates = [
                    c for c in candidates if c[1] not in ("server_idle_timeout", "keepalive")
                ]
                candidates.append(
                    (
                        max(idle_deadline, run.due + SCHEDULED_RUN_START),
                        "scheduled_run_wait",
                        f"the scheduled run of {_literal(run.name)} did not start, "
                        "idle {idle} >= server_idle_timeout {1}",
                    )
                )
                break
    if stop_when_done is not None and busy is None:
        # nothing works any more: stop a short while after it ended (or after the request)
        done = max(stop_when_done, snapshot.last_activity) + stop_when_done_delay(config)
        if snapshot.keepalive_until is not None and snapshot.keepalive_until > done:
            done = snapshot.keepalive_until
        candidates.append((done, "stop_when_done", "stop when done: nothing worked for {idle}"))
    args: tuple[Any, ...] = (
        _seconds(config.max_server_age),
        _seconds(config.server_idle_timeout),
        last,
    )
    clocks: tuple[tuple[str, float], ...] = (*idle, ("age", snapshot.started))
    kept_by = ""
    if busy is not None:
        # braces in names (a process's command line) must not be read as fields
        template, since, kept_by = busy
        keep = template.replace("{", "{{").replace("}", "}}").replace("{{busy}}", "{busy}")
        if stop_when_done is not None:
            keep += "; stops when it is done"
        clocks = (*clocks, ("busy", since))
    elif config.server_idle_timeout <= 0:
        keep = "server_idle_timeout is 0"
    else:
        keep = ""
    if not candidates:
        return Decision(
            "server",
            "",
            "keep",
            keep or "no shutdown rule is on",
            now,
            args=args,
            clocks=clocks,
            kept_by=kept_by,
        )
    deadline, rule, fired = min(candidates)
    lost = [r for r in snapshot.scheduled if r.due > deadline]
    cancels = "; ".join(f"{r.name} at {r.at} will not run" for r in lost[:3])
    if now >= deadline:
        return Decision(
            "server", "", "shutdown", fired, now, deadline, rule, args, clocks, cancels=cancels
        )
    if config.shutdown_warning > 0 and now >= deadline - config.shutdown_warning:
        return Decision(
            "server",
            "",
            "warn",
            "shutting down in {left}: " + rule + (f"; {_literal(cancels)}" if cancels else ""),
            now,
            deadline,
            rule,
            args,
            clocks,
            cancels=cancels,
        )
    if rule == "stop_when_done":
        template = "stop when done: nothing works, shutting down in {left}"
    elif rule == "scheduled_run_wait":
        template = f"waiting for the scheduled run of {_literal(waiting_for)}, shutting down in {{left}} at the latest"
    elif rule == "keepalive":
        template = "keep-alive in force, idle {idle}"
    elif rule == "server_idle_timeout":
        template = "idle {idle} of server_idle_timeout {1}{2}"
    else:
        template = (keep + "; " if keep else "") + "shuts down at max_server_age"
    return Decision(
        "server", "", "keep", template, now, deadline, rule, args, clocks, kept_by, cancels
    )


def horizon(config: PolicyConfig, kernels: tuple[KernelState, ...] = ()) -> float:
    """The shortest time in which a deadline can appear that no current record foretells.

    A kernel that turns idle, a new terminal or the end of a busy period creates a deadline at
    least this far ahead, so checking at least this often acts on time without a wake-up per
    message.
    """
    spans = [config.cull_idle_timeout, config.terminal_timeout, config.max_busy_time]
    spans += [k.timeout_override for k in kernels if k.timeout_override is not None]
    if config.server_idle_timeout > 0:
        spans.append(config.server_idle_timeout - config.shutdown_warning)
    positive = [s for s in spans if s > 0]
    return min([config.cull_interval, *positive])


def decide(
    snapshot: Snapshot, config: PolicyConfig, previous: tuple[Snapshot, Plan] | None = None
) -> Plan:
    """Decide about every kernel, terminal and the server, and when to look again.

    ``previous`` is an earlier check's snapshot and plan under the same ``config``: a kernel
    whose state is the very object it was then (the watcher rebuilds a state only when
    something about the kernel changed) keeps an earlier "keep" until that decision's deadline,
    since the rules change a kernel's decision only at its deadline. Such a decision's ``now``
    is the earlier check's; readers count durations with ``reason_at``.
    """
    now = snapshot.now
    if previous is None:
        kernels = tuple(decide_kernel(k, config, now) for k in snapshot.kernels)
    else:
        kept = {
            id(state): d
            for state, d in zip(previous[0].kernels, previous[1].kernels)
            if d.action == "keep"
        }
        decisions = []
        for k in snapshot.kernels:
            d = kept.get(id(k))
            if d is None or (d.deadline is not None and now >= d.deadline):
                d = decide_kernel(k, config, now)
            decisions.append(d)
        kernels = tuple(decisions)
    terminals = tuple(decide_terminal(t, config, now) for t in snapshot.terminals)
    server = decide_server(snapshot, config)
    upcoming = [
        d.deadline for d in (*kernels, *terminals) if d.action == "keep" and d.deadline is not None
    ]
    shutdown_at = server.deadline if server.action != "shutdown" else now
    warn_at = None
    if server.deadline is not None and server.action != "shutdown":
        upcoming.append(server.deadline)
        if config.shutdown_warning > 0:
            warn_at = server.deadline - config.shutdown_warning
            upcoming.append(warn_at)
    next_check = min([now + horizon(config, snapshot.kernels), *[u for u in upcoming if u > now]])
    return Plan(
        kernels,
        terminals,
        server,
        next_check,
        shutdown_at,
        warn_at,
        reported_activity(snapshot, config),
    )
