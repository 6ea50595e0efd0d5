"""The idle policy: from an activity snapshot, the configuration and now to decisions.

Nothing here does I/O or reads a clock: every time is a monotonic second passed in by the caller,
so the rules can be tested in a table without servers, kernels or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .reasons import Clause, Reason, say

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
    # what the last activity was, for people ("notes.md saved", "kernel 3f2a5b1c"), and its kind
    # ("document", "kernel", ...)
    last_source: str | None = None
    last_kind: str | None = None
    # when a user asked to stop the server once nothing works any more
    stop_when_done: float | None = None
    # the next run of each scheduled job, soonest first
    scheduled: tuple[ScheduledRun, ...] = ()


@dataclass(frozen=True)
class Decision:
    """One decision about one thing, why (a ``Reason``, rendered when read), and the deadline it
    hangs on.

    ``action`` is "keep", "cull" (stop an idle kernel or terminal), "remove" (a dead kernel),
    "warn" (the server will shut down soon) or "shutdown". The reason can be read later than the
    decision was made: ``reason_at(now)`` counts its durations ("idle 12 s") to ``now``.
    """

    kind: str
    id: str
    action: str
    why: Reason
    now: float
    deadline: float | None = None
    rule: str = ""
    # the server's: what works and keeps it, in a few words ("kernel busy"), its clock "busy"
    kept_by: str = ""
    # the scheduled runs a shutdown at this decision's deadline cancels, for people
    cancels: str = ""

    def reason_at(self, now: float) -> str:
        return self.why.text(now)

    @property
    def reason(self) -> str:
        return self.reason_at(self.now)

    def since(self, clock: str) -> float | None:
        """When the reason's ``clock`` ("idle", "busy", "age") started counting, if it has it."""
        return dict(self.why.clocks).get(clock)

    @property
    def idle(self) -> float:
        """Seconds idle when decided (0 for something working)."""
        since = self.since("idle")
        return 0.0 if since is None else max(0.0, self.now - since)


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
    # what works right now, whether or not a server rule watches (the usage metric counts it)
    working: Working | None = None


def stop_when_done_delay(config: Any) -> float:
    """Seconds after nothing works any more at which "stop when done" stops the server."""
    return float(config.shutdown_warning or STOP_WHEN_DONE_DELAY)


def kernel_timeout(kernel: KernelState, config: PolicyConfig) -> tuple[float, str]:
    """The idle timeout for a kernel and the option it comes from."""
    if kernel.timeout_override is not None:
        return kernel.timeout_override, "kernelspec cull_idle_timeout"
    return config.cull_idle_timeout, "cull_idle_timeout"


def _idle_rule(
    action: str, rule: str, limit: float, idle_since: float, deadline: float, busy: Reason | None
) -> Reason:
    """idle against a timeout ("idle 12 s of cull_idle_timeout 3600 s"), after what was busy
    past max_busy_time, if anything."""
    says = "idle_over" if action in ("cull", "shutdown") else "idle_of"
    clause = Clause(says, rule=rule, limit=limit)
    clocks: tuple[tuple[str, float], ...] = (("idle", idle_since),)
    if busy is None:
        return Reason((clause,), clocks, deadline)
    return Reason((*busy.clauses, clause), (*clocks, *busy.clocks), deadline)


def decide_kernel(kernel: KernelState, config: PolicyConfig, now: float) -> Decision:
    """Cull, remove or keep one kernel."""
    kid = kernel.id
    if kernel.dead_since is not None:
        removal = kernel.dead_since + DEAD_KERNEL_GRACE
        if now >= removal:
            return Decision("kernel", kid, "remove", say("dead"), now, removal, "dead")
        why = Reason((Clause("dead_removed_in"),), deadline=removal)
        return Decision("kernel", kid, "keep", why, now, removal)
    timeout, option = kernel_timeout(kernel, config)
    idle = (("idle", kernel.last_activity),)
    if kernel.unobserved_since is not None:
        # unknown means working, never idle since the start
        return Decision("kernel", kid, "keep", say("unobserved"), now)
    if timeout <= 0:
        why = Reason((Clause("never_culled", rule=option),), idle)
        return Decision("kernel", kid, "keep", why, now)
    if not config.cull_connected and kernel.connections != 0:
        # unknown connections (None) count as connected: never cull more than asked
        if kernel.connections is None:
            clause = Clause("connections_unknown")
        else:
            clause = Clause("connected", count=kernel.connections)
        return Decision("kernel", kid, "keep", Reason((clause,), idle), now)
    deadline = kernel.last_activity + timeout
    past_cap = None
    # executing a cell, or computing outside one (a thread, a process it started)
    busy_since, busy = kernel.busy_since, "busy"
    if busy_since is None and kernel.computing_since is not None:
        busy_since, busy = kernel.computing_since, f"computing ({kernel.computing})"
    if busy_since is not None and not config.cull_busy:
        cap = config.max_busy_time
        if cap <= 0 or now - busy_since < cap:
            # a busy kernel is working, however silent; only the cap can end that
            until = busy_since + cap if cap > 0 else None
            why = Reason((Clause("busy_for", subject=busy),), (("busy", busy_since),), until)
            return Decision("kernel", kid, "keep", why, now, until)
        deadline = max(deadline, busy_since + cap)
        over = Clause("busy_over", subject=busy, limit=cap)
        past_cap = Reason((over,), (("busy", busy_since),))
    action = "cull" if now >= deadline else "keep"
    rule = ("max_busy_time" if past_cap else option) if action == "cull" else ""
    why = _idle_rule(action, option, timeout, kernel.last_activity, deadline, past_cap)
    return Decision("kernel", kid, action, why, now, deadline, rule)


def decide_terminal(terminal: TerminalState, config: PolicyConfig, now: float) -> Decision:
    """Cull or keep one terminal."""
    name = terminal.name
    timeout = config.terminal_timeout
    option = (
        "terminal_idle_timeout" if config.terminal_idle_timeout is not None else "cull_idle_timeout"
    )
    if timeout <= 0:
        why = Reason((Clause("never_culled", rule=option),), (("idle", terminal.last_activity),))
        return Decision("terminal", name, "keep", why, now)
    if not terminal.seen:
        return Decision("terminal", name, "keep", say("unobserved"), now)
    deadline = terminal.last_activity + timeout
    if terminal.computing_since is not None:
        cap = config.max_busy_time
        if cap <= 0 or now - terminal.computing_since < cap:
            # a silent program in it works (culling would kill it)
            until = terminal.computing_since + cap if cap > 0 else None
            clause = Clause("running_for", subject=terminal.computing or "")
            why = Reason((clause,), (("busy", terminal.computing_since),), until)
            return Decision("terminal", name, "keep", why, now, until)
        deadline = max(deadline, terminal.computing_since + cap)
    action = "cull" if now >= deadline else "keep"
    why = _idle_rule(action, option, timeout, terminal.last_activity, deadline, None)
    return Decision(
        "terminal", name, action, why, now, deadline, option if action == "cull" else ""
    )


def process_id(pid: int, created: float) -> str:
    """The id of a process's record: "81@1700000000.12" (pid and start time, as a pid alone is
    reused); ``process_subject`` reads it."""
    return f"{pid}@{created:.2f}"


def process_subject(source: SourceState) -> str:
    """A process source for people: "process 81 `python train.py`"."""
    return f"process {source.id.split('@')[0]} `{source.name}`"


def describe_source(source: SourceState) -> Reason:
    """What a source did or does, for people: "notes.md saved 12 s ago", "rstudio: input 5 s
    ago", "process 81 `python train.py` at 50 % CPU for 12 s"."""
    if source.busy_since is not None:
        clause = Clause("busy_for", subject=_busy_subject(source))
        return Reason((clause,), (("busy", source.busy_since),))
    if source.kind == "process":
        clause = Clause("stopped_working", subject=process_subject(source), detail=source.detail)
    elif source.kind == "document":
        clause = Clause("did", subject=source.name, detail=source.detail)
    else:
        clause = Clause("active", subject=source.name, detail=source.detail or "active")
    return Reason((clause,), (("idle", source.last_activity),))


class Working(NamedTuple):
    """What keeps the server working: named for a reason (``subject``: "kernel 3f2a5b1c busy"),
    since when, in a few words for an indicator (``what``: "kernel busy", "process `python
    train.py` working"), and its kind for the usage metric (kernel, process, job, extension)."""

    subject: str
    since: float
    what: str
    kind: str


def _busy_subject(source: SourceState) -> str:
    """A busy source named for a reason: "process 81 `python train.py` at 50 % CPU"."""
    if source.kind == "process":
        return f"{process_subject(source)} at {source.detail}"
    if source.kind == "job" and source.detail:
        return f"{source.name}, {source.detail} busy"
    return f"{source.name} busy"


def working(snapshot: Snapshot, config: PolicyConfig) -> Working | None:
    """What keeps the server working right now, or None."""
    now = snapshot.now
    cap = config.max_busy_time

    def capped(since: float) -> bool:
        return cap > 0 and now - since >= cap

    for kernel in snapshot.kernels:
        if not kernel.alive:
            continue
        unseen = kernel.unobserved_since
        if unseen is not None and not capped(unseen):
            subject = f"kernel {kernel.id} whose activity cannot be seen"
            return Working(subject, unseen, "kernel not observable", "kernel")
        if kernel.busy_since is not None and not capped(kernel.busy_since):
            return Working(f"kernel {kernel.id} busy", kernel.busy_since, "kernel busy", "kernel")
        if kernel.computing_since is not None and not capped(kernel.computing_since):
            subject = f"kernel {kernel.id} computing ({kernel.computing})"
            return Working(subject, kernel.computing_since, "kernel computing", "kernel")
    for source in snapshot.sources:
        if source.busy_since is None:
            continue
        subject = _busy_subject(source)
        # a process is capped like a kernel; another extension's source says when it is done
        if source.kind in ("process", "job") and capped(source.busy_since):
            continue
        if source.kind == "process":
            what = f"process `{source.name}` working"
            return Working(subject, source.busy_since, what, "process")
        if source.kind == "job":
            return Working(subject, source.busy_since, "job running", "job")
        return Working(subject, source.busy_since, f"{source.name} busy", "extension")
    return None


def reported_activity(snapshot: Snapshot, busy: Working | None) -> float:
    """The last activity to tell the Hub: now while something works (``busy``) or a keep-alive is
    in force (so the Hub's own culler respects it too), else the last activity."""
    keepalive = snapshot.keepalive_until is not None and snapshot.keepalive_until > snapshot.now
    if keepalive or busy is not None:
        return snapshot.now
    return snapshot.last_activity


def decide_server(snapshot: Snapshot, config: PolicyConfig, busy: Working | None) -> Decision:
    """Shut the server down, warn that it will, or keep it, with the rule that decides;
    ``busy`` is what works (``working``)."""
    now = snapshot.now
    limit = config.server_idle_timeout
    last: tuple[Clause, ...] = ()
    if snapshot.last_source:
        last = (Clause("last_activity", subject=snapshot.last_source),)
    stop_when_done = snapshot.stop_when_done
    watching = limit > 0 or stop_when_done is not None
    if not watching:
        busy = None
    # (deadline, rule, what it says when it fires)
    candidates: list[tuple[float, str, tuple[Clause, ...]]] = []
    fired: tuple[Clause, ...]
    if config.max_server_age > 0:
        fired = (Clause("age_over", limit=config.max_server_age),)
        candidates.append((snapshot.started + config.max_server_age, "max_server_age", fired))
    if limit > 0 and busy is None:
        deadline = snapshot.last_activity + limit
        if snapshot.keepalive_until is not None and snapshot.keepalive_until > deadline:
            fired = (Clause("keepalive_ended", limit=limit),)
            candidates.append((snapshot.keepalive_until, "keepalive", fired))
        else:
            fired = (Clause("idle_over", rule="server_idle_timeout", limit=limit), *last)
            candidates.append((deadline, "server_idle_timeout", fired))
    waiting_for = ""
    if limit > 0 and busy is None and config.scheduled_run_wait > 0:
        # a run due soon after the idle shutdown would be lost: wait for it, within the bound
        idle_deadline = snapshot.last_activity + limit
        for run in snapshot.scheduled:
            due_soon = run.due <= idle_deadline + config.scheduled_run_wait
            if now <= run.due + SCHEDULED_RUN_START and due_soon:
                waiting_for = run.name
                candidates = [
                    c for c in candidates if c[1] not in ("server_idle_timeout", "keepalive")
                ]
                fired = (
                    Clause("run_missed", subject=run.name),
                    Clause("idle_over", rule="server_idle_timeout", limit=limit),
                )
                latest = max(idle_deadline, run.due + SCHEDULED_RUN_START)
                candidates.append((latest, "scheduled_run_wait", fired))
                break
    if stop_when_done is not None and busy is None:
        # nothing works any more: stop a short while after it ended (or after the request)
        done = max(stop_when_done, snapshot.last_activity) + stop_when_done_delay(config)
        if snapshot.keepalive_until is not None and snapshot.keepalive_until > done:
            done = snapshot.keepalive_until
        candidates.append((done, "stop_when_done", (Clause("nothing_worked"),)))
    clocks: tuple[tuple[str, float], ...] = (
        ("idle", snapshot.last_activity),
        ("age", snapshot.started),
    )
    kept_by = ""
    keep: tuple[Clause, ...] = ()
    if busy is not None:
        kept_by = busy.what
        keep = (Clause("busy_for", subject=busy.subject),)
        if stop_when_done is not None:
            keep += (Clause("stops_when_done"),)
        clocks = (*clocks, ("busy", busy.since))
    elif limit <= 0:
        keep = (Clause("off", rule="server_idle_timeout"),)
    if not candidates:
        # (with no rule on, server_idle_timeout is 0, which ``keep`` says)
        why = Reason(keep, clocks)
        return Decision("server", "", "keep", why, now, kept_by=kept_by)
    deadline, rule, fired = min(candidates, key=lambda c: (c[0], c[1]))
    lost = [r for r in snapshot.scheduled if r.due > deadline]
    will_not_run = tuple(Clause("will_not_run", subject=r.name, at=r.at) for r in lost[:3])
    cancels = Reason(will_not_run).text(now) if will_not_run else ""

    def decision(action: str, *said: Clause) -> Decision:
        why = Reason(said, clocks, deadline)
        # what works is named while it keeps the server, not once a rule stops it anyway
        working_now = kept_by if action == "keep" else ""
        return Decision("server", "", action, why, now, deadline, rule, working_now, cancels)

    if now >= deadline:
        return decision("shutdown", *fired)
    if config.shutdown_warning > 0 and now >= deadline - config.shutdown_warning:
        return decision("warn", Clause("shutting_down_in", rule=rule), *will_not_run)
    if rule == "stop_when_done":
        return decision("keep", Clause("nothing_works"))
    if rule == "scheduled_run_wait":
        return decision("keep", Clause("waiting_for_run", subject=waiting_for))
    if rule == "keepalive":
        return decision("keep", Clause("keepalive"))
    if rule == "server_idle_timeout":
        return decision("keep", Clause("idle_of", rule=rule, limit=limit), *last)
    return decision("keep", *keep, Clause("age_limit"))


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
    busy = working(snapshot, config)
    server = decide_server(snapshot, config, busy)
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
        reported_activity(snapshot, busy),
        busy,
    )
