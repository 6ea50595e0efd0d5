"""Benchmarks 3 and 4: how late kernels are culled and idle servers shut down.

Ours and the built-ins run side by side in the same window, on the same timeouts, with real
kernels; a kernel counts as gone when ``GET /api/kernels`` stops listing it, a server when its
process has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from harness import (
    TOKEN,
    Context,
    KernelChannel,
    Row,
    ServerProcess,
    bootstrap,
    fmt,
    fmt_ratio,
    logged_at,
    median,
    parse_iso,
    ratio,
    start_servers,
    stop_all,
    value_row,
    verdict,
    within,
)

CULL_GOAL = 1.0
SHUTDOWN_GOAL = 2.0
# what our stop may add to jupyter_server's own (benchmark 4's control)
STOP_ADDED_GOAL = 0.5
POLL = 0.1


@dataclass
class CullSetup:
    label: str
    ours: bool
    interval: int
    server: ServerProcess | None = None
    kernels: list[str] = field(default_factory=list)
    last_activity: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)
    # when the server logged its decision to cull each kernel
    decided: dict[str, float] = field(default_factory=dict)

    def args(self, timeout: int) -> tuple[str, ...]:
        if self.ours:
            return (
                f"--IdleExtension.cull_idle_timeout={timeout}",
                f"--IdleExtension.cull_interval={self.interval}",
                "--IdleExtension.server_idle_timeout=0",
            )
        return (
            f"--MappingKernelManager.cull_idle_timeout={timeout}",
            f"--MappingKernelManager.cull_interval={self.interval}",
        )

    def lateness(self, timeout: int) -> list[float]:
        return [
            self.gone[k] - (self.last_activity[k] + timeout) for k in self.kernels if k in self.gone
        ]

    def read_decisions(self) -> None:
        """The time of each 'Culling ... kernel' WARNING in the server's log (ours and the
        built-in both log one before they shut a kernel down)."""
        assert self.server is not None
        pattern = re.compile(
            r"^\[W (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \w+\] Culling .*?\(([0-9a-f-]{36})\)", re.M
        )
        for match in pattern.finditer(self.server.log()):
            # the server logs local time, as this process reads it
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            self.decided.setdefault(match.group(2), stamp)

    def decision_lateness(self, timeout: int) -> list[float]:
        return [
            self.decided[k] - (self.last_activity[k] + timeout)
            for k in self.kernels
            if k in self.decided and k in self.last_activity
        ]

    def shutdown_durations(self) -> list[float]:
        return [
            self.gone[k] - self.decided[k]
            for k in self.kernels
            if k in self.gone and k in self.decided
        ]


async def _poll_kernels(setup: CullSetup, until: float) -> None:
    """Follow the kernel list every POLL seconds (without counting as activity) until every
    kernel is gone; a kernel's gone time is the midpoint between the last listing that showed
    it and the first that did not."""
    from tornado.httpclient import AsyncHTTPClient

    assert setup.server is not None
    client = AsyncHTTPClient()
    url = setup.server.url + "/api/kernels?no_track_activity=1"
    headers = {"Authorization": f"token {TOKEN}"}
    while time.time() < until and len(setup.gone) < len(setup.kernels):
        sent = time.time()
        response = await client.fetch(url, headers=headers, request_timeout=10)
        listed = {m["id"]: m for m in json.loads(response.body)}
        for kernel_id in setup.kernels:
            if kernel_id in listed:
                setup.seen[kernel_id] = sent
                setup.last_activity[kernel_id] = parse_iso(listed[kernel_id]["last_activity"])
            elif kernel_id not in setup.gone and kernel_id in setup.seen:
                setup.gone[kernel_id] = (setup.seen[kernel_id] + sent) / 2
        await asyncio.sleep(max(0.0, POLL - (time.time() - sent)))


def cull_lateness(ctx: Context) -> list[Row]:
    """3. Seconds from a kernel's idle deadline to the kernel being gone, ours vs built-in."""
    bench = "3. Cull lateness"
    if ctx.quick:
        timeout, per_server, stagger, pairs, ours_only = 3, 2, 0.7, (1,), (300,)
    else:
        timeout, per_server, stagger, pairs, ours_only = 5, 5, 1.9, (1, 10, 30), (300,)
    setups = [CullSetup(f"ours, cull_interval={i}", True, i) for i in ours_only]
    for interval in pairs:
        setups += [
            CullSetup(f"ours, cull_interval={interval}", True, interval),
            CullSetup(f"built-in, cull_interval={interval}", False, interval),
        ]
    servers = start_servers(ctx, "cull", [(s.ours, s.args(timeout)) for s in setups])
    flag = ctx.scratch("cull-flag") / "go"
    try:
        for setup, server in zip(setups, servers):
            setup.server = server

        async def hold_then_idle(channel: KernelChannel, hold: float) -> None:
            # busy (so neither culler may take it) until the flag, then `hold` s more
            code = (
                "import os, time\n"
                f"while not os.path.exists({str(flag)!r}):\n"
                "    time.sleep(0.05)\n"
                f"time.sleep({hold})"
            )
            try:
                await channel.execute(code)
            finally:
                channel.close()

        async def run() -> None:
            loop = asyncio.get_running_loop()
            cells = []
            # each kernel gets its cell right after it starts, well within the timeout; the
            # i-th kernel of every server turns idle i * stagger s after the flag, so the
            # deadlines spread over the built-in check's period
            for i in range(per_server):
                for j, setup in enumerate(setups):
                    assert setup.server is not None
                    kernel_id = await loop.run_in_executor(None, setup.server.start_kernel)
                    setup.kernels.append(kernel_id)
                    channel = await KernelChannel(setup.server.url, kernel_id).connect()
                    # the servers' deadlines interleave instead of coinciding: side by side,
                    # seven kernel shutdowns at one instant would compete for two cores
                    hold = i * stagger + j * stagger / len(setups)
                    cells.append(asyncio.ensure_future(hold_then_idle(channel, round(hold, 3))))
            span = per_server * stagger + timeout + max(pairs) + 60
            pollers = [asyncio.ensure_future(_poll_kernels(s, time.time() + span)) for s in setups]
            await asyncio.sleep(1)
            flag.touch()
            await asyncio.gather(*cells, *pollers)

        asyncio.run(run())
        for setup in setups:
            setup.read_decisions()
    finally:
        stop_all(servers)

    by_label = {s.label: s for s in setups}
    rows = []
    for interval in (*ours_only, *pairs):
        ours = by_label[f"ours, cull_interval={interval}"]
        base = by_label.get(f"built-in, cull_interval={interval}")
        ours_late = ours.lateness(timeout)
        ours_med = median(ours_late)
        ours_max = max(ours_late) if ours_late else math.nan
        missing = len(ours.kernels) - len(ours_late)
        values: dict[str, Any] = {
            "interval": interval,
            "timeout": timeout,
            "ours_median_s": ours_med,
            "ours_max_s": ours_max,
            "ours_samples": ours_late,
            "ours_not_culled": missing,
        }
        ok = missing == 0 and within(ours_max, CULL_GOAL, 2)
        if base is not None:
            base_late = base.lateness(timeout)
            base_med = median(base_late)
            values.update(
                {
                    "base_median_s": base_med,
                    "base_max_s": max(base_late) if base_late else math.nan,
                    "base_samples": base_late,
                    "base_not_culled": len(base.kernels) - len(base_late),
                }
            )
            baseline_text = (
                f"{fmt(base_med, 2, 's')} (max {fmt(values['base_max_s'], 2, 's')})"
                if base_late
                else "not culled"
            )
            r = fmt_ratio(ratio(ours_med, base_med))
        else:
            baseline_text = f"not run: its first check comes {interval} s after the first kernel"
            r = ""
        rows.append(
            Row(
                bench,
                f"timeout {timeout} s, cull_interval {interval} s: median lateness [95 % "
                "interval] (max; the goal is on every kernel, so on the max)",
                f"{bootstrap(ours_late).text(2)} s (max {fmt(ours_max, 2, 's')})",
                baseline_text,
                "MappingKernelManager culling",
                r,
                f"ours <= {CULL_GOAL:g} s",
                verdict(ok),
                values,
            )
        )
        for name, setup in (("ours", ours), ("built-in", base)):
            if setup is None:
                continue
            values[f"{name}_decision_s"] = setup.decision_lateness(timeout)
            values[f"{name}_shutdown_s"] = setup.shutdown_durations()
            ctx.note(
                bench,
                f"interval {interval} s, {name}, per kernel in start order: gone "
                f"{_series(setup.lateness(timeout))} s after the deadline = decided "
                f"{_series(setup.decision_lateness(timeout))} s after it (the server's "
                f"'Culling' log line) + shutdown {_series(setup.shutdown_durations())} s",
            )
        if not ok:
            decision = values["ours_decision_s"]
            shutdown = values["ours_shutdown_s"]
            ctx.note(
                f"limit:{bench}",
                f"interval {interval} s: ours decided at most {fmt(max(decision, default=math.nan), 2)} s "
                f"after a deadline; the rest is the kernel's graceful shutdown (shutdown_request, "
                f"then waiting for the process to exit), which took up to "
                f"{fmt(max(shutdown, default=math.nan), 2)} s; the built-in's shutdowns took up to "
                f"{fmt(max(values.get('built-in_shutdown_s') or [math.nan]), 2)} s in the same run",
            )
    ctx.note(
        bench,
        f"{per_server} kernels per server, each busy in a cell until a common start, then idle "
        f"{stagger} s after the previous one (the servers offset by {stagger / len(setups):.2f} s "
        f"from each other); deadline = the kernel's last_activity (from /api/kernels) + {timeout} s; gone = "
        f"the kernel no longer listed (polled every {POLL} s); a graceful kernel shutdown is "
        "included in both",
    )
    return rows


def _series(values: list[float]) -> str:
    return ", ".join(fmt(v, 2) for v in values)


# -- 4. shutdown -------------------------------------------------------------------------------


def _get(server: ServerProcess, path: str) -> Any:
    req = urllib.request.Request(server.url + path)
    req.add_header("Authorization", f"token {TOKEN}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


class Poller(threading.Thread):
    """A client polling the REST API like an open JupyterLab tab (counted as API activity by
    jupyter_server), and a watch on the server process's exit."""

    def __init__(self, server: ServerProcess, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.every = every
        self.stop = threading.Event()
        self.requests = 0
        self.exited_at: float | None = None

    def run(self) -> None:
        next_poll = 0.0
        while not self.stop.is_set():
            if self.server.proc.poll() is not None:
                self.exited_at = time.time()
                return
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.every
                for path in ("/api/contents?content=1", "/api/sessions", "/api/kernels"):
                    try:
                        _get(self.server, path)
                        self.requests += 1
                    except (OSError, ValueError):
                        pass
            time.sleep(0.02)


class StopTrigger(threading.Thread):
    """Stops a control server without the extension the moment ours decides to shut down
    (its log line), through jupyter_server's own /api/shutdown: the same ``_cleanup()`` of
    kernels and extensions, then the event loop stopped, as ``ServerApp.stop()``."""

    def __init__(self, ours: ServerProcess, control: ServerProcess, until: float) -> None:
        super().__init__(daemon=True)
        self.ours, self.control, self.until = ours, control, until
        self.triggered_at: float | None = None

    def run(self) -> None:
        while time.time() < self.until and self.ours.running:
            if "Shutting down the server" in self.ours.log():
                self.triggered_at = time.time()
                req = urllib.request.Request(self.control.url + "/api/shutdown", method="POST")
                req.add_header("Authorization", f"token {TOKEN}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(req, data=b"", timeout=10).close()
                return
            time.sleep(0.02)


def shutdown_lateness(ctx: Context) -> list[Row]:
    """4. Seconds from server_idle_timeout to process exit with a polling client, ours vs the
    built-in shutdown_no_activity_timeout (run side by side), and ours' stop against a control
    server without the extension stopped the same way at the same moment."""
    bench = "4. Shutdown lateness"
    timeout = 4 if ctx.quick else 30
    pairs = 1 if ctx.quick else 5
    # the pairs reach their deadlines this far apart, so no two stops compete for the CPU
    stagger = 0 if ctx.quick else 4.0
    run_builtin = not ctx.quick
    ours_args = (f"--IdleExtension.server_idle_timeout={timeout}",)
    builtin_args = (
        f"--ServerApp.shutdown_no_activity_timeout={timeout}",
        # the built-ins at their best: the kernel is culled, so only the polling can block
        "--MappingKernelManager.cull_idle_timeout=10",
        "--MappingKernelManager.cull_interval=2",
        "--MappingKernelManager.cull_connected=True",
    )
    specs = (
        [(True, ours_args)] * pairs
        + [(False, ())] * pairs
        + ([(False, builtin_args)] if run_builtin else [])
    )
    servers = start_servers(ctx, "shutdown", specs)
    ours_servers, controls = servers[:pairs], servers[pairs : 2 * pairs]
    started = time.time()
    pollers: list[Poller] = []
    triggers: list[StopTrigger] = []
    try:
        kernels = [s.start_kernel() for s in servers]

        async def execute(indexes: list[int]) -> None:
            channels = [await KernelChannel(servers[i].url, kernels[i]).connect() for i in indexes]
            await asyncio.gather(*(c.execute("x = 1") for c in channels))
            for channel in channels:
                channel.close()

        # pair i (and the built-in with the first) executes its cell stagger * i after pair 0
        first = [0, pairs] + ([2 * pairs] if run_builtin else [])
        asyncio.run(execute(first))
        executed = time.time()
        for i in range(1, pairs):
            time.sleep(max(0.0, executed + stagger * i - time.time()))
            asyncio.run(execute([i, pairs + i]))
        pollers = [Poller(s) for s in servers]
        for poller in pollers:
            poller.start()
        end = executed + (3 * timeout if run_builtin else timeout + 20) + stagger * pairs
        triggers = [StopTrigger(o, c, end) for o, c in zip(ours_servers, controls)]
        for trigger in triggers:
            trigger.start()
        last_activity: dict[int, float] = {}
        while time.time() < end:
            for i, server in enumerate(ours_servers):
                if pollers[i].exited_at is None and server.running:
                    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                        last_activity[i] = parse_iso(_get(server, "/api/idle")["last_activity"])
            if not run_builtin and all(p.exited_at is not None for p in pollers[: 2 * pairs]):
                break
            time.sleep(0.5)
        builtin_running = run_builtin and servers[-1].running
        builtin_kernels = len(_get(servers[-1], "/api/kernels")) if builtin_running else None
        for trigger in triggers:
            trigger.join(5)
    finally:
        for poller in pollers:
            poller.stop.set()
        stop_all(servers)

    lateness = []
    codes = []
    decided: list[float] = []
    stopping: list[float] = []
    control_stop: list[float] = []
    added: list[float] = []
    for i in range(pairs):
        exited = pollers[i].exited_at
        if exited is None or i not in last_activity:
            continue
        deadline = last_activity[i] + timeout
        lateness.append(exited - deadline)
        codes.append(servers[i].proc.returncode)
        when = logged_at(servers[i].log(), "Shutting down the server", monotonic=False)
        if when is None:
            continue
        decided.append(when - deadline)
        stopping.append(exited - when)
        control_exit, triggered = pollers[pairs + i].exited_at, triggers[i].triggered_at
        if control_exit is not None and triggered is not None:
            control_stop.append(control_exit - triggered)
            added.append(stopping[-1] - control_stop[-1])
    complete = len(lateness) == pairs and set(codes) == {0}
    values: dict[str, Any] = {
        "timeout": timeout,
        "exit_codes": codes,
        "poll_requests": [p.requests for p in pollers],
        "ours_decision_s": decided,
        "ours_stopping_s": stopping,
        "control_stop_s": control_stop,
    }
    if run_builtin:
        window = 3 * timeout
        # ServerApp checks every 60 s from start; those after the timeout had passed count
        checks = [
            t
            for t in range(60, int(time.time() - started) + 1, 60)
            if started + t > executed + timeout and started + t <= executed + window
        ]
        values.update(
            {
                "builtin_running_after_3x": builtin_running,
                "builtin_kernels_left": builtin_kernels,
                "builtin_checks_in_window": len(checks),
            }
        )
        baseline = (
            f"no shutdown within 3x the timeout ({window} s)"
            if builtin_running
            else "shut down within 3x the timeout"
        )
        ctx.note(
            bench,
            f"built-in (shutdown_no_activity_timeout={timeout}, kernels culled after 10 s): still "
            f"running {window} s after the last execution with {builtin_kernels} kernels left; "
            f"{len(checks)} of its 60-s checks fell between the timeout and the end of the window",
        )
    else:
        baseline = "not run in quick mode (its check runs every 60 s)"
    late = value_row(
        bench,
        f"server_idle_timeout {timeout} s, client polling every 1 s: deadline to exit, median",
        lateness,
        unit="s",
        goal=SHUTDOWN_GOAL,
        compared="shutdown_no_activity_timeout",
        baseline=baseline,
    )
    if not complete:
        late.verdict = "missed"
    late.values.update(values)
    control_row = value_row(
        bench,
        "stopping (decision to exit), ours",
        stopping,
        unit="s",
        compared="a server without it, stopped by /api/shutdown at that moment",
        baseline=f"{fmt(median(control_stop), 2, 's')}",
    )
    added_row = value_row(
        bench,
        "stopping: ours minus the control, per pair, median",
        added,
        unit="s",
        goal=STOP_ADDED_GOAL,
    )
    rows = [late, control_row, added_row]
    ctx.note(
        bench,
        f"{pairs} servers with jupyter_idle_ext, each beside a control server without it"
        f"{' and the built-in' if run_builtin else ''}, pair i executing its cell "
        f"{stagger:g} s after pair i-1; then a client polled /api/contents, /api/sessions and "
        "/api/kernels of every server every second until it exited; deadline = last_activity "
        f"of GET /api/idle + timeout; lateness per server {_series(lateness)} s = decided "
        f"{_series(decided)} s after the deadline (the 'Shutting down the server' log line) + "
        f"stopping {_series(stopping)} s (kernels shut down, extensions stopped, the process "
        f"exits); the control, POSTed /api/shutdown (the same cleanup of kernels and "
        f"extensions, then the loop stopped) as soon as ours logged its decision, took "
        f"{_series(control_stop)} s from that moment to exit; exit codes {codes}",
    )
    if late.verdict != "met" or added_row.verdict != "met":
        ctx.note(
            f"limit:{bench}",
            f"ours decided at most {fmt(max(decided, default=math.nan), 2)} s after the "
            f"deadline and took {_series(stopping)} s to stop, against {_series(control_stop)} s "
            "for a server without the extension stopped at the same moment",
        )
    return rows
