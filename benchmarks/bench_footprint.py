"""Benchmarks 7 and 8: what the extension adds to a server's start and memory, and how its check
loop and status endpoint scale with the number of kernels."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import math
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
    compare_row,
    cpu_seconds,
    fmt,
    free_port,
    median,
    percentile,
    start_kernels,
    start_servers,
    stop_all,
    value_row,
)

from jupyter_idle_ext.activity import ActivityTracker, snapshot
from jupyter_idle_ext.culler import IdleCuller
from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.policy import Snapshot, decide
from jupyter_idle_ext.sources.kernels import KernelWatcher
from jupyter_idle_ext.status import build_status

START_GOAL_MS = 50.0
RSS_GOAL_MB = 3.0
TICK_GOAL_MS = 5.0
TICK_P99_GOAL_MS = 7.0
STATUS_DOC_GOAL_MS = 10.0
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
    added_ms, added_mb = t_on - t_off, m_on - m_off
    own_ms = median(probe["total"]) * 1000
    ms = {name: [t * 1000 for t in values] for name, values in times.items()}
    start_row = compare_row(
        bench,
        "start to ready (spawn to /api/status 200), median ms",
        ms["on"],
        ms["off"],
        aa=ms["control"],
        unit="ms",
        digits=0,
        goal=START_GOAL_MS,
        added=True,
    )
    rows = [
        start_row,
        value_row(
            bench,
            "time in the extension's own start-up code (import, link, load, start), median ms",
            [t * 1000 for t in probe["total"]],
            unit="ms",
            digits=1,
            goal=START_GOAL_MS,
        ),
        compare_row(
            bench,
            "RSS of the server process when ready, median MB",
            rss["on"],
            rss["off"],
            aa=rss["control"],
            unit="MB",
            digits=1,
            goal=RSS_GOAL_MB,
            added=True,
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
    if start_row.verdict != "met":
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


def sim_kernel(
    kernel_id: str, last_activity: datetime, busy: bool, process: subprocess.Popen[bytes]
) -> Any:
    """A real jupyter_server kernel manager object (ServerKernelManager, the traits its IOPub
    watcher sets) with jupyter_client's LocalProvisioner on a live process: its is_alive costs
    what a local kernel's costs, a waitpid, without an ipykernel behind each."""
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner
    from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

    kernel = ServerKernelManager(kernel_name="python3", owns_kernel=True)
    kernel.provisioner = LocalProvisioner(kernel_id=kernel_id, kernel_spec=None, connection_info={})
    kernel.provisioner.process = process
    kernel.last_activity = last_activity
    kernel.execution_state = "busy" if busy else "idle"
    return kernel


class SimKernelManager:
    """The parts of MappingKernelManager the check path reads."""

    def __init__(self, kernels: dict[str, Any]) -> None:
        self._kernels = kernels
        self._kernel_connections = {k: i % 3 for i, k in enumerate(kernels)}

    def list_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def get_kernel(self, kernel_id: str) -> Any:
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


def _simulated_loop(
    ctx: Context, count: int, reps: int, process: subprocess.Popen[bytes]
) -> dict[str, list[float]]:
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    kernels = {
        f"k{i:05d}": sim_kernel(
            f"k{i:05d}",
            now - timedelta(seconds=rng.uniform(0, 1800)),
            busy=rng.random() < 0.1,
            process=process,
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
            # as the loop checks at a deadline (a wake-up's check polls every kernel)
            plan = loop.run_until_complete(culler.check(poll_all=False))
            assert not any(d.action == "cull" for d in plan.kernels), "nothing is due"

        check_times = _timed(check, reps)

        def check_polling_all() -> None:
            # every kernel due for its poll, as once a second
            watcher._polled.clear()
            watcher._due_at = -math.inf
            check()

        polling_times = _timed(check_polling_all, max(10, reps // 5))
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
    plain = sim_kernel("plain", now, busy=False, process=process)
    sets = 2000 if ctx.quick else 20000

    def set_many(target: Any) -> None:
        for _ in range(sets):
            target.last_activity = datetime.now(timezone.utc)

    observed = median(_timed(lambda: set_many(kernel), 5)) / sets
    bare = median(_timed(lambda: set_many(plain), 5)) / sets
    culler.close()
    watcher.detach_all()
    return {
        "decide": decide_times,
        "check": check_times,
        "check_polling": polling_times,
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
        # the server's CPU per request, in batches: what a tab's polling costs
        cpu: dict[str, list[float]] = {"cpu /api/idle": [], "cpu /api/kernels": []}
        batch = 20
        for _ in range(max(3, reps // batch)):
            for path in ("/api/idle", "/api/kernels"):
                before = cpu_seconds(server.proc.pid)
                for _ in range(batch):
                    get(path)
                cpu[f"cpu {path}"].append((cpu_seconds(server.proc.pid) - before) / batch)
        conn.close()
        return {**times, **cpu}
    finally:
        stop_all([server])


def loop_scale(ctx: Context) -> list[Row]:
    """8. The policy, the whole check and the status document for 100, 1,000 and 5,000
    simulated kernels per tick; the status endpoint with 50 real kernels."""
    bench = "8. Scale of the loop"
    counts = (100, 1000) if ctx.quick else (100, 1000, 5000)
    process = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
    try:
        sims = {
            count: _simulated_loop(
                ctx, count, (30 if ctx.quick else 300) if count <= 1000 else 60, process
            )
            for count in counts
        }
    finally:
        process.kill()
        process.wait()
    real_kernels = 3 if ctx.quick else 50
    status = _status_latency(ctx, real_kernels, 40 if ctx.quick else 400)

    def ms(values: list[float]) -> list[float]:
        return [v * 1000 for v in values]

    rows = []
    for count, sim in sims.items():
        at_goal = count == 1000
        rows.append(
            value_row(
                bench,
                f"whole check (refresh, snapshot, decide, act) for {count:,} kernels, median",
                ms(sim["check"]),
                unit="ms",
                goal=TICK_GOAL_MS if at_goal else None,
            )
        )
        if at_goal:
            rows.append(
                value_row(
                    bench,
                    f"whole check for {count:,} kernels, p99",
                    ms(sim["check"]),
                    unit="ms",
                    goal=TICK_P99_GOAL_MS,
                    stat=lambda v: percentile(v, 99),
                )
            )
        rows.append(
            value_row(
                bench,
                f"whole check for {count:,} kernels when every kernel is due for its poll "
                "(once a second at most), median",
                ms(sim["check_polling"]),
                unit="ms",
            )
        )
        rows.append(
            value_row(
                bench,
                f"status document for {count:,} kernels (no HTTP), median",
                ms(sim["status"]),
                unit="ms",
                goal=STATUS_DOC_GOAL_MS if at_goal else None,
            )
        )
        parts = {k: median(sim[k]) * 1000 for k in ("refresh", "snapshot", "decide")}
        ctx.note(
            bench,
            f"{count:,} kernels, a tick's parts, medians: refresh (a waitpid of each kernel due for its poll) "
            f"{fmt(parts['refresh'], 2)} ms, snapshot (the kernel states that changed rebuilt) "
            f"{fmt(parts['snapshot'], 2)} ms, decide {fmt(parts['decide'], 2)} ms; the whole "
            f"check per kernel {fmt(median(sim['check']) / count * 1e6, 2)} µs; "
            f"{len(sim['check'])} ticks",
        )
    per_message = sims[1000]["per_message_us"][0]
    idle_ms, kernels_ms = ms(status["/api/idle"]), ms(status["/api/kernels"])
    rows.append(
        Row(
            bench,
            "cost added per kernel message (our trait observers, in-process), median",
            fmt(per_message, 2, "µs"),
            "",
            "",
            "",
            "",
            "info",
            {"per_message_us": per_message},
        )
    )
    p99 = value_row(
        bench,
        f"GET /api/idle with {real_kernels} real kernels, p99",
        idle_ms,
        unit="ms",
        goal=STATUS_P99_GOAL_MS,
        stat=lambda v: percentile(v, 99),
        compared="GET /api/kernels, same server",
        baseline=f"{fmt(percentile(kernels_ms, 99), 2, 'ms')} (median {fmt(median(kernels_ms), 2)})",
    )
    p99.values["kernels_ms"] = kernels_ms
    rows.append(p99)
    # the frontend reads api/idle every 30 s (every 5 s in the last minute before a stop)
    polls_per_hour = 3600 / 30
    per_hour = [v * polls_per_hour for v in status["cpu /api/idle"]]
    rows.append(
        compare_row(
            bench,
            f"an open tab's polling of api/idle (every 30 s, {real_kernels} kernels): server "
            "CPU s per hour, against GET /api/kernels as often",
            per_hour,
            [v * polls_per_hour for v in status["cpu /api/kernels"]],
            compared="GET /api/kernels, same server",
            unit="s",
            digits=3,
        )
    )
    ctx.note(
        bench,
        f"frontend polling: {fmt(median(status['cpu /api/idle']) * 1e3, 2)} ms of server CPU "
        f"per GET /api/idle with {real_kernels} kernels (GET /api/kernels: "
        f"{fmt(median(status['cpu /api/kernels']) * 1e3, 2)} ms), {polls_per_hour:.0f} reads "
        "an hour per open tab; JupyterLab itself polls /api/kernels, /api/sessions and "
        "/api/terminals every 10 s",
    )
    per_kernel = {count: median(sim["check"]) / count * 1e6 for count, sim in sims.items()}
    ctx.note(
        bench,
        "growth: the whole check per kernel is "
        + ", ".join(f"{fmt(v, 2)} µs at {c:,}" for c, v in per_kernel.items())
        + " (linear when these stay level)",
    )
    if any(r.verdict != "met" for r in rows if r.goal):
        ctx.note(
            f"limit:{bench}",
            "at 1,000 kernels: "
            + "; ".join(f"{r.measure}: {r.ours} ({r.verdict})" for r in rows if r.goal)
            + ". The p99 of an in-process tick includes Python's garbage collector passes "
            "over every object of the process",
        )
    ctx.note(
        bench,
        "simulated kernels: real jupyter_server ServerKernelManager objects with jupyter_client's "
        "LocalProvisioner on one live process (so is_alive is the real waitpid), 10% busy, "
        "idle 0-1800 s, a third with a tab open, behind a stand-in kernel manager; "
        "IdleCuller.check() ticks back to back with no culls due, as at deadlines (where each "
        "kernel's process is polled at most once a second, so about one tick a second polls "
        "them all; the row 'when every kernel is due' times only such ticks, as is every "
        "check that a wake-up asks for); "
        "the status document is built from the loop's last check as GET api/idle builds it; "
        "the per-message figure is setting a kernel's last_activity trait with our observers "
        "attached minus without",
    )
    ctx.note(
        bench,
        f"status endpoint: one server with the extension and {real_kernels} real ipykernels; "
        f"{len(idle_ms)} requests each of /api/idle and /api/kernels, alternating, over one "
        "keep-alive HTTP connection",
    )
    return rows
