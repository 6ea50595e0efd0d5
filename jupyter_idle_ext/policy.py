"""The idle policy: from an activity snapshot, the configuration and now to decisions.

Nothing here does I/O or reads a clock: every time is a monotonic second passed in by the caller,
so the rules can be tested in a table without servers, kernels or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    connections: int = 0
    # when its process was first seen dead, or None while it lives
    dead_since: float | None = None
    # the kernelspec's metadata.cull_idle_timeout, when it has one
    timeout_override: float | None = None
    # since when its process (or one it started) works while it reports idle, and which
    computing_since: float | None = None
    computing: str | None = None

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


@dataclass(frozen=True)
class Decision:
    """One decision about one thing, with the reason a person can read and the deadline it hangs on.

    ``action`` is "keep", "cull" (stop an idle kernel or terminal), "remove" (a dead kernel),
    "warn" (the server will shut down soon) or "shutdown".
    """

    kind: str
    id: str
    action: str
    reason: str
    deadline: float | None = None
    idle: float = 0.0
    rule: str = ""


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


def _seconds(value: float) -> str:
    return f"{round(value)} s"


def kernel_timeout(kernel: KernelState, config: PolicyConfig) -> tuple[float, str]:
    """The idle timeout for a kernel and the option it comes from."""
    if kernel.timeout_override is not None:
        return kernel.timeout_override, "kernelspec cull_idle_timeout"
    return config.cull_idle_timeout, "cull_idle_timeout"


def decide_kernel(kernel: KernelState, config: PolicyConfig, now: float) -> Decision:
    """Cull, remove or keep one kernel."""
    if kernel.dead_since is not None:
        removal = kernel.dead_since + DEAD_KERNEL_GRACE
        if now >= removal:
            return Decision(
                "kernel", kernel.id, "remove", "kernel process is dead", removal, rule="dead"
            )
        return Decision(
            "kernel",
            kernel.id,
            "keep",
            f"kernel process is dead; removed in {_seconds(removal - now)}",
            deadline=removal,
        )
    timeout, option = kernel_timeout(kernel, config)
    idle = max(0.0, now - kernel.last_activity)
    if timeout <= 0:
        return Decision("kernel", kernel.id, "keep", f"{option} is 0: never culled", idle=idle)
    if kernel.connections and not config.cull_connected:
        return Decision(
            "kernel",
            kernel.id,
            "keep",
            f"{kernel.connections} connection(s) open and cull_connected is off",
            idle=idle,
        )
    deadline = kernel.last_activity + timeout
    past_cap = ""
    # executing a cell, or computing outside one (a thread, a process it started)
    busy_since, busy = kernel.busy_since, "busy"
    if busy_since is None and kernel.computing_since is not None:
        busy_since, busy = kernel.computing_since, f"computing ({kernel.computing})"
    if busy_since is not None and not config.cull_busy:
        busy_for = now - busy_since
        cap = config.max_busy_time
        if cap <= 0 or busy_for < cap:
            # a busy kernel is working, however silent; only the cap can end that
            return Decision(
                "kernel",
                kernel.id,
                "keep",
                f"{busy} for {_seconds(busy_for)}",
                deadline=busy_since + cap if cap > 0 else None,
                idle=0.0,
            )
        deadline = max(deadline, busy_since + cap)
        past_cap = f"{busy} {_seconds(busy_for)} >= max_busy_time {_seconds(cap)}, "
    if now >= deadline:
        return Decision(
            "kernel",
            kernel.id,
            "cull",
            f"{past_cap}idle {_seconds(idle)} >= {option} {_seconds(timeout)}",
            deadline=deadline,
            idle=idle,
            rule="max_busy_time" if past_cap else option,
        )
    return Decision(
        "kernel",
        kernel.id,
        "keep",
        f"{past_cap}idle {_seconds(idle)} of {option} {_seconds(timeout)}",
        deadline=deadline,
        idle=idle,
    )


def decide_terminal(terminal: TerminalState, config: PolicyConfig, now: float) -> Decision:
    """Cull or keep one terminal."""
    timeout = config.terminal_timeout
    option = (
        "terminal_idle_timeout"
        if config.terminal_idle_timeout is not None
        else ("cull_idle_timeout")
    )
    idle = max(0.0, now - terminal.last_activity)
    if timeout <= 0:
        return Decision(
            "terminal", terminal.name, "keep", f"{option} is 0: never culled", idle=idle
        )
    deadline = terminal.last_activity + timeout
    if terminal.computing_since is not None:
        busy_for = now - terminal.computing_since
        cap = config.max_busy_time
        if cap <= 0 or busy_for < cap:
            # a silent program in it works (culling would kill it)
            return Decision(
                "terminal",
                terminal.name,
                "keep",
                f"running {terminal.computing} for {_seconds(busy_for)}",
                deadline=terminal.computing_since + cap if cap > 0 else None,
                idle=0.0,
            )
        deadline = max(deadline, terminal.computing_since + cap)
    if now >= deadline:
        return Decision(
            "terminal",
            terminal.name,
            "cull",
            f"idle {_seconds(idle)} >= {option} {_seconds(timeout)}",
            deadline=deadline,
            idle=idle,
            rule=option,
        )
    return Decision(
        "terminal",
        terminal.name,
        "keep",
        f"idle {_seconds(idle)} of {option} {_seconds(timeout)}",
        deadline=deadline,
        idle=idle,
    )


def _busy_reason(snapshot: Snapshot, config: PolicyConfig) -> str | None:
    """Why the server is working right now, or None when nothing is."""
    now = snapshot.now
    cap = config.max_busy_time

    def capped(since: float) -> bool:
        return cap > 0 and now - since >= cap

    for kernel in snapshot.kernels:
        if not kernel.alive:
            continue
        if kernel.busy_since is not None and not capped(kernel.busy_since):
            return f"kernel {kernel.id} busy for {_seconds(now - kernel.busy_since)}"
        if kernel.computing_since is not None and not capped(kernel.computing_since):
            return (
                f"kernel {kernel.id} computing ({kernel.computing}) for "
                f"{_seconds(now - kernel.computing_since)}"
            )
    for source in snapshot.sources:
        if source.busy_since is None:
            continue
        # a process is capped like a kernel; another extension's source says when it is done
        if source.kind == "process" and capped(source.busy_since):
            continue
        busy_for = _seconds(now - source.busy_since)
        if source.kind == "process":
            pid = source.id.split("@")[0]
            return f"process {pid} `{source.name}` at {source.detail} for {busy_for}"
        return f"{source.name} busy for {busy_for}"
    return None


def reported_activity(snapshot: Snapshot, config: PolicyConfig) -> float:
    """The last activity to tell the Hub: now while something works or a keep-alive is in force
    (so the Hub's own culler respects it too), else the last activity."""
    keepalive = snapshot.keepalive_until is not None and snapshot.keepalive_until > snapshot.now
    if keepalive or _busy_reason(snapshot, config):
        return snapshot.now
    return snapshot.last_activity


def decide_server(snapshot: Snapshot, config: PolicyConfig) -> Decision:
    """Shut the server down, warn that it will, or keep it, with the rule that decides."""
    now = snapshot.now
    idle = max(0.0, now - snapshot.last_activity)
    last = f", last activity: {snapshot.last_source}" if snapshot.last_source else ""
    candidates: list[tuple[float, str, str]] = []
    keep_reason = ""
    if config.max_server_age > 0:
        age = now - snapshot.started
        candidates.append(
            (
                snapshot.started + config.max_server_age,
                "max_server_age",
                f"age {_seconds(age)} >= max_server_age {_seconds(config.max_server_age)}",
            )
        )
    if config.server_idle_timeout > 0:
        busy = _busy_reason(snapshot, config)
        if busy is not None:
            keep_reason = busy
        else:
            timeout = _seconds(config.server_idle_timeout)
            deadline = snapshot.last_activity + config.server_idle_timeout
            rule, reason = (
                "server_idle_timeout",
                f"idle {_seconds(idle)} >= server_idle_timeout {timeout}{last}",
            )
            if snapshot.keepalive_until is not None and snapshot.keepalive_until > deadline:
                deadline = snapshot.keepalive_until
                rule = "keepalive"
                reason = f"keep-alive ended, idle {_seconds(idle)} >= server_idle_timeout {timeout}"
            candidates.append((deadline, rule, reason))
    else:
        keep_reason = "server_idle_timeout is 0"
    if not candidates:
        return Decision("server", "", "keep", keep_reason or "no shutdown rule is on", idle=idle)
    deadline, rule, reason = min(candidates)
    if now >= deadline:
        return Decision("server", "", "shutdown", reason, deadline=deadline, idle=idle, rule=rule)
    if config.shutdown_warning > 0 and now >= deadline - config.shutdown_warning:
        return Decision(
            "server",
            "",
            "warn",
            f"shutting down in {_seconds(deadline - now)}: {rule}",
            deadline=deadline,
            idle=idle,
            rule=rule,
        )
    if rule == "keepalive":
        reason = f"keep-alive in force, idle {_seconds(idle)}"
    elif rule == "server_idle_timeout":
        timeout = _seconds(config.server_idle_timeout)
        reason = f"idle {_seconds(idle)} of server_idle_timeout {timeout}{last}"
    else:
        reason = (keep_reason + "; " if keep_reason else "") + "shuts down at max_server_age"
    return Decision("server", "", "keep", reason, deadline=deadline, idle=idle, rule=rule)


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


def decide(snapshot: Snapshot, config: PolicyConfig) -> Plan:
    """Decide about every kernel, terminal and the server, and when to look again."""
    now = snapshot.now
    kernels = tuple(decide_kernel(k, config, now) for k in snapshot.kernels)
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
    return Plan(kernels, terminals, server, next_check, shutdown_at, warn_at)
