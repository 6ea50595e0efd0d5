"""Benchmarks 7 and 8: what the extension adds to a server's start and memory, and how its check
loop and status endpoint scale with the number of kernels."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
from harness import (
    TOKEN,
    Context,
    Row,
    ServerProcess,
    fmt,
    fmt_ratio,
    free_port,
    median,
    percentile,
    ratio,
    start_kernels,
    start_servers,
    stop_all,
    verdict,
    within,
)
from traitlets import HasTraits, Instance, Unicode

from jupyter_idle_ext.activity import ActivityTracker, KernelWatcher, snapshot
from jupyter_idle_ext.culler import IdleCuller
from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.policy import Snapshot, decide
from jupyter_idle_ext.status import build_status

START_GOAL_MS = 50.0
RSS_GOAL_MB = 3.0
TICK_GOAL_MS = 5.0
STATUS_P99_GOAL_MS = 50.0


# -- 7. footprint -----------------------------------------------------------------------------


def _ready(server: ServerProcess) -> bool:
    req = urllib.request.Request(server.url + "/api/status?no_track_activity=1")
    req.add_header("Authorization", f"token {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _start_once(ctx: Context, name: str, extension: bool) -> tuple[float, float]:
    """Spawn a server; return (seconds from spawn to /api/status 200, RSS in MB when ready)."""
    root = ctx.scratch(name) / "root"
    root.mkdir(exist_ok=True)
    server = ServerProcess(root, extension=extension)
    try:
        deadline = time.monotonic() + 120
        while not _ready(server):
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready within 120 s")
            time.sleep(0.01)
        elapsed = time.monotonic() - server.started
        rss = psutil.Process(server.proc.pid).memory_info().rss / 2**20
        if extension and "culling kernels idle for" not in server.log():
            time.sleep(0.5)  # the start-up line is written as the loop starts; give it a moment
            if "culling kernels idle for" not in server.log():
                raise RuntimeError("the extension did not start:\n" + server.log()[-2000:])
        return elapsed, rss
    finally:
        server.stop()


def _probe(ctx: Context, runs: int) -> dict[str, list[float]]:
    """Seconds spent in the extension's own start-up code per phase (startup_probe.py)."""
    probe = Path(__file__).resolve().parent / "startup_probe.py"
    phases: dict[str, list[float]] = {}
    for i in range(runs):
        root = ctx.scratch(f"probe-{i}")
        out = subprocess.run(
            [
                sys.executable,
                str(probe),
                "--no-browser",
                "--allow-root",
                f"--port={free_port()}",
                "--ip=127.0.0.1",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={TOKEN}",
                "--ServerApp.jpserver_extensions={'jupyter_idle_ext': True}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"startup probe failed ({out.returncode}): {out.stderr[-2000:]}")
        for phase, seconds in json.loads(lines[-1]).items():
            phases.setdefault(phase, []).append(seconds)
    phases["total"] = [sum(values) for values in zip(*phases.values())]
    return phases


def footprint(ctx: Context) -> list[Row]:
    """7. Server start-to-ready time and RSS with and without the extension, alternating."""
    bench = "7. Footprint"
    rounds = 1 if ctx.quick else 6
    # ours, without, and a second "without" as the A/A control
    setups = [("on", True), ("off", False), ("control", False)]
    times: dict[str, list[float]] = {name: [] for name, _ in setups}
    rss: dict[str, list[float]] = {name: [] for name, _ in setups}
    # a first start warms the disk cache and is not counted, so no setup starts cold
    _start_once(ctx, "footprint-warmup", True)
    for i in range(rounds):
        # rotate the order, so no setup always starts right after another's exit
        for name, extension in setups[i % 3 :] + setups[: i % 3]:
            elapsed, memory = _start_once(ctx, f"footprint-{i}-{name}", extension)
            times[name].append(elapsed)
            rss[name].append(memory)
    probe = _probe(ctx, 1 if ctx.quick else 5)
    t_on, t_off = median(times["on"]) * 1000, median(times["off"]) * 1000
    t_control = median(times["control"]) * 1000
    m_on, m_off = median(rss["on"]), median(rss["off"])
    m_control = median(rss["control"])
    added_ms, added_mb = t_on - t_off, m_on - m_off
    own_ms = median(probe["total"]) * 1000
    rows = [
        Row(
            bench,
            "start to ready (spawn to /api/status 200), median ms",
            fmt(t_on, 0, "ms"),
            fmt(t_off, 0, "ms"),
            "extension off",
            f"{fmt_ratio(ratio(t_on, t_off))} (A/A {fmt_ratio(ratio(t_control, t_off))})",
            f"added <= {START_GOAL_MS:g} ms",
            verdict(within(added_ms, START_GOAL_MS, 0)),
            {"ours_ms": t_on, "base_ms": t_off, "control_ms": t_control, "added_ms": added_ms},
        ),
        Row(
            bench,
            "time in the extension's own start-up code (import, link, load, start), median ms",
            fmt(own_ms, 1, "ms"),
            "",
            "",
            "",
            f"<= {START_GOAL_MS:g} ms",
            verdict(within(own_ms, START_GOAL_MS, 1)),
            {k: median(v) * 1000 for k, v in probe.items()},
        ),
        Row(
            bench,
            "RSS of the server process when ready, median MB",
            fmt(m_on, 1, "MB"),
            fmt(m_off, 1, "MB"),
            "extension off",
            f"{fmt_ratio(ratio(m_on, m_off))} (A/A {fmt_ratio(ratio(m_control, m_off))})",
            f"added <= {RSS_GOAL_MB:g} MB",
            verdict(within(added_mb, RSS_GOAL_MB, 1)),
            {"ours_mb": m_on, "base_mb": m_off, "control_mb": m_control, "added_mb": added_mb},
        ),
    ]

    def samples(values: list[float], scale: float = 1000, digits: int = 0) -> str:
        return ", ".join(fmt(v * scale, digits) for v in values)

    ctx.note(
        bench,
        f"{rounds} starts per setup after one uncounted warm-up start, the order rotating "
        f"(ours, off, a second off as the A/A control); added start time {fmt(added_ms, 0)} ms "
        f"(ours {samples(times['on'])}; off {samples(times['off'])}; control "
        f"{samples(times['control'])} ms); added RSS {fmt(added_mb, 2)} MB (ours "
        f"{samples(rss['on'], 1, 1)}; off {samples(rss['off'], 1, 1)} MB). All load the same "
        "other server extensions installed in the environment (jupyterlab, jupyter_lsp, "
        "notebook_shim, jupyter_server_terminals).",
    )
    ctx.note(
        bench,
        "the extension's own start-up code, timed inside real servers by "
        "benchmarks/startup_probe.py (wraps the hooks jupyter_server calls; medians of "
        f"{len(probe['total'])} starts): "
        + ", ".join(
            f"{phase} {fmt(median(values) * 1000, 1)} ms"
            for phase, values in probe.items()
            if phase != "total"
        ),
    )
    if not within(added_ms, START_GOAL_MS, 0):
        spread = (percentile(times["off"], 90) - percentile(times["off"], 10)) * 1000
        ctx.note(
            f"limit:{bench}",
            f"start to ready: {fmt(added_ms, 0)} ms added end to end, while two setups without "
            f"the extension differ by {fmt(t_control - t_off, 0)} ms and one setup's starts "
            f"spread over {fmt(spread, 0)} ms (10th to 90th percentile) on this machine; the "
            f"extension's own start-up code takes {fmt(own_ms, 1)} ms (the row below it)",
        )
    return rows


# -- 8. scale of the loop -----------------------------------------------------------------------


class SimKernel(HasTraits):
    """A kernel as KernelWatcher sees one: the traits jupyter_server's watcher keeps."""

    last_activity = Instance(datetime)
    execution_state = Unicode("idle")

    def __init__(self, name: str, last_activity: datetime, busy: bool) -> None:
        super().__init__(last_activity=last_activity, execution_state="busy" if busy else "idle")
        self.kernel_name = name
        self.kernel_spec = None

    def is_alive(self) -> bool:
        return True


class SimKernelManager:
    """The parts of MappingKernelManager the check path reads."""

    def __init__(self, kernels: dict[str, SimKernel]) -> None:
        self._kernels = kernels
        self._kernel_connections = {k: i % 3 for i, k in enumerate(kernels)}

    def list_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def get_kernel(self, kernel_id: str) -> SimKernel:
        return self._kernels[kernel_id]

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    async def shutdown_kernel(self, kernel_id: str, now: bool = False) -> None:
        self._kernels.pop(kernel_id, None)


def _timed(function: Any, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def _simulated_loop(ctx: Context, count: int, reps: int) -> dict[str, list[float]]:
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    kernels = {
        f"k{i:05d}": SimKernel(
            "python3", now - timedelta(seconds=rng.uniform(0, 1800)), busy=rng.random() < 0.1
        )
        for i in range(count)
    }
    km = SimKernelManager(kernels)
    tracker = ActivityTracker()
    log = logging.getLogger("bench.loop")
    log.setLevel(logging.CRITICAL)
    watcher = KernelWatcher(km, tracker, log)
    config = IdleOptions.default_policy()

    async def stop_server(reason: str) -> None:
        raise AssertionError(f"the simulated server must not shut down: {reason}")

    culler = IdleCuller(
        tracker=tracker,
        config=config,
        kernels=watcher,
        terminals=None,
        kernel_manager=km,
        terminal_manager=None,
        stop_server=stop_server,
        log=log,
    )
    watcher.sync()
    states = watcher.states()
    snap: Snapshot = snapshot(tracker, states, ())
    decide_times = _timed(lambda: decide(snap, config), reps)

    loop = asyncio.new_event_loop()
    try:

        def check() -> None:
            plan = loop.run_until_complete(culler.check())
            assert not any(d.action == "cull" for d in plan.kernels), "nothing is due"

        check_times = _timed(check, reps)
        # where a tick goes: polling the kernels, reading them into a snapshot, the policy
        refresh_times = _timed(lambda: loop.run_until_complete(watcher.refresh()), reps)
        snapshot_times = _timed(culler.take_snapshot, reps)
    finally:
        loop.close()
    assert len(km.list_kernel_ids()) == count
    # the status document from the loop's last check, as GET api/idle builds it
    assert culler.snapshot is not None and culler.plan is not None
    status_times = _timed(
        lambda: build_status(
            tracker=tracker,
            snapshot=culler.snapshot,
            plan=culler.plan,
            now=tracker.clock(),
            config=config,
            reporter=None,
            hub_note="",
            keepalive_cap=3600,
        ),
        max(5, reps // 5),
    )

    # per kernel message: the cost our trait observers add to jupyter_server's IOPub watcher
    kernel = next(iter(kernels.values()))
    plain = SimKernel("python3", now, busy=False)
    sets = 2000 if ctx.quick else 20000

    def set_many(target: SimKernel) -> None:
        for _ in range(sets):
            target.last_activity = datetime.now(timezone.utc)

    observed = median(_timed(lambda: set_many(kernel), 5)) / sets
    bare = median(_timed(lambda: set_many(plain), 5)) / sets
    culler.close()
    return {
        "decide": decide_times,
        "check": check_times,
        "refresh": refresh_times,
        "snapshot": snapshot_times,
        "status": status_times,
        "per_message_us": [(observed - bare) * 1e6],
    }


def _status_latency(ctx: Context, kernels: int, reps: int) -> dict[str, list[float]]:
    (server,) = start_servers(ctx, "status", [(True, ())])
    try:
        ids = start_kernels(server, kernels)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"Authorization": f"token {TOKEN}"}
        times: dict[str, list[float]] = {"/api/idle": [], "/api/kernels": []}

        def get(path: str) -> Any:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (path, response.status, body[:200])
            return body

        # every kernel must be in the document we time
        wait_deadline = time.monotonic() + 60
        while len(json.loads(get("/api/idle"))["kernels"]) < len(ids):
            if time.monotonic() > wait_deadline:
                raise RuntimeError("the status document never listed every kernel")
            time.sleep(0.2)
        for _ in range(10):
            get("/api/idle")
            get("/api/kernels")
        for _ in range(reps):
            for path in times:
                start = time.perf_counter()
                get(path)
                times[path].append(time.perf_counter() - start)
        conn.close()
        return times
    finally:
        stop_all([server])


def loop_scale(ctx: Context) -> list[Row]:
    """8. The policy and the check for 1,000 simulated kernels per tick; the status endpoint with
    50 real kernels."""
    bench = "8. Scale of the loop"
    count = 1000
    reps = 30 if ctx.quick else 300
    sim = _simulated_loop(ctx, count, reps)
    real_kernels = 3 if ctx.quick else 50
    status = _status_latency(ctx, real_kernels, 40 if ctx.quick else 400)

    decide_ms = [t * 1000 for t in sim["decide"]]
    check_ms = [t * 1000 for t in sim["check"]]
    build_ms = [t * 1000 for t in sim["status"]]
    idle_ms = [t * 1000 for t in status["/api/idle"]]
    kernels_ms = [t * 1000 for t in status["/api/kernels"]]
    per_message = sim["per_message_us"][0]
    rows = [
        Row(
            bench,
            f"policy (decide) for {count:,} kernels, per tick: median (p99)",
            f"{fmt(median(decide_ms), 2, 'ms')} ({fmt(percentile(decide_ms, 99), 2)})",
            "",
            "",
            "",
            f"< {TICK_GOAL_MS:g} ms",
            verdict(within(median(decide_ms), TICK_GOAL_MS, 2)),
            {"median_ms": median(decide_ms), "p99_ms": percentile(decide_ms, 99)},
        ),
        Row(
            bench,
            f"whole check (refresh, snapshot, decide, act) for {count:,} kernels: median (p99)",
            f"{fmt(median(check_ms), 2, 'ms')} ({fmt(percentile(check_ms, 99), 2)})",
            "",
            "",
            "",
            f"< {TICK_GOAL_MS:g} ms",
            verdict(within(median(check_ms), TICK_GOAL_MS, 2)),
            {"median_ms": median(check_ms), "p99_ms": percentile(check_ms, 99)},
        ),
        Row(
            bench,
            f"status document for {count:,} kernels (no HTTP), median",
            fmt(median(build_ms), 2, "ms"),
            "",
            "",
            "",
            "",
            "info",
            {"median_ms": median(build_ms)},
        ),
        Row(
            bench,
            "cost added per kernel message (our trait observers), median",
            fmt(per_message, 2, "µs"),
            "",
            "",
            "",
            "",
            "info",
            {"per_message_us": per_message},
        ),
        Row(
            bench,
            f"GET /api/idle with {real_kernels} real kernels: p99 (median)",
            f"{fmt(percentile(idle_ms, 99), 2, 'ms')} ({fmt(median(idle_ms), 2)})",
            f"{fmt(percentile(kernels_ms, 99), 2, 'ms')} ({fmt(median(kernels_ms), 2)})",
            "GET /api/kernels, same server",
            fmt_ratio(ratio(percentile(idle_ms, 99), percentile(kernels_ms, 99))),
            f"p99 < {STATUS_P99_GOAL_MS:g} ms",
            verdict(percentile(idle_ms, 99) < STATUS_P99_GOAL_MS),
            {
                "p99_ms": percentile(idle_ms, 99),
                "median_ms": median(idle_ms),
                "kernels_p99_ms": percentile(kernels_ms, 99),
                "kernels_median_ms": median(kernels_ms),
            },
        ),
    ]
    parts = {k: median(sim[k]) * 1000 for k in ("refresh", "snapshot", "decide")}
    breakdown = (
        f"a tick's parts, medians: refresh (is_alive of each kernel) "
        f"{fmt(parts['refresh'], 2)} ms, snapshot (a KernelState per kernel) "
        f"{fmt(parts['snapshot'], 2)} ms, decide (a Decision with its reason string per kernel) "
        f"{fmt(parts['decide'], 2)} ms; per kernel {fmt(median(check_ms) / count * 1000, 1)} µs"
    )
    ctx.note(bench, breakdown)
    if not within(median(check_ms), TICK_GOAL_MS, 2):
        ctx.note(
            f"limit:{bench}",
            "the check is linear in the number of kernels, at about "
            f"{fmt(median(check_ms) / count * 1000, 1)} µs per kernel per tick: {breakdown}. "
            "Every tick rebuilds every KernelState and formats a reason string for every kept "
            "kernel, which only the status document reads; a tick runs at each deadline and "
            "at least every cull_interval (or the shortest timeout), not per message",
        )
    ctx.note(
        bench,
        f"{count:,} simulated kernel records (10% busy, idle 0-1800 s, a third with a tab "
        f"open) behind a stand-in kernel manager; {reps} ticks of the policy alone and of "
        "IdleCuller.check() (is_alive of every kernel, snapshot, decide, no culls due); the "
        "per-message figure is setting a kernel's last_activity trait with our observers "
        "attached minus without",
    )
    ctx.note(
        bench,
        f"status endpoint: one server with the extension and {real_kernels} real ipykernels; "
        f"{len(idle_ms)} requests each of /api/idle and /api/kernels, alternating, over one "
        "keep-alive HTTP connection",
    )
    return rows
