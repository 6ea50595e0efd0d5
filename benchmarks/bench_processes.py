"""Benchmark 9: what the process source costs: one scan of the machine's processes, the event-loop
lag while scans run in their thread, the CPU the sampler adds to an idle server per hour, and the
idle CPU shares ``process_cpu_threshold`` has to stay above.

The scans are ``ProcessWatcher._scan``, the function the extension runs in the loop's executor
thread, over real processes: ``sleep`` processes started here, some carrying the marker
(``$JUPYTER_IDLE_SERVER_ID``) as a server's children do, besides whatever else runs on the
machine. The idle figures come from real ``jupyter server`` processes side by side, each with one
real ipykernel and one terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from harness import (
    Context,
    Row,
    ServerProcess,
    compare_row,
    fmt,
    median,
    percentile,
    start_servers,
    stop_all,
    value_row,
    wait_until,
)

from jupyter_idle_ext.activity import ActivityTracker
from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.sources.processes import ENV_MARKER, ProcessWatcher

BENCH = "9. Processes"
SCAN_P99_GOAL_MS = 100.0
LAG_GOAL_MS = 10.0
#: the ticker's sleep: how late it wakes up is the loop's lag
TICK = 0.005
#: % of a core under which a process starting up counts as settled
QUIET = 5.0
#: one in this many of the started processes carries the marker
MARKED_EVERY = 10

DEFAULT_INTERVAL = float(IdleOptions.class_traits()["process_check_interval"].default_value)
DEFAULT_THRESHOLD = float(IdleOptions.class_traits()["process_cpu_threshold"].default_value)


def _p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


# -- processes to scan ----------------------------------------------------------------------------


def _spawn(count: int, marker: str) -> list[subprocess.Popen[bytes]]:
    """``count`` sleeping processes; every MARKED_EVERY-th carries this server's marker."""
    plain = {k: v for k, v in os.environ.items() if k != ENV_MARKER}
    marked = {**plain, ENV_MARKER: marker}
    procs = []
    try:
        for i in range(count):
            procs.append(
                subprocess.Popen(
                    ["sleep", "600"],  # ends by itself should the cleanup below never run
                    env=marked if i % MARKED_EVERY == 0 else plain,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    except BaseException:
        _reap(procs)
        raise
    return procs


def _reap(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(5)


def _watcher(marker: str, interval: float = DEFAULT_INTERVAL) -> ProcessWatcher:
    """A watcher as the extension builds one, with no kernels or terminals of its own."""
    log = logging.getLogger("bench.processes")
    log.setLevel(logging.CRITICAL)
    return ProcessWatcher(
        tracker=ActivityTracker(),
        marker=marker,
        interval=interval,
        cpu_threshold=DEFAULT_THRESHOLD,
        gpu_threshold=0,
        owners=dict,
        log=log,
    )


def _scan_times(marker: str, reps: int, cold: int) -> dict[str, list[float]]:
    """Milliseconds per ``_scan`` (the thread's part) and per ``_apply`` (the loop's part) of
    one long-lived watcher, and of the first scan of fresh watchers (every process's environment
    read once)."""
    first = []
    for _ in range(cold):
        fresh = _watcher(marker)
        start = time.perf_counter()
        fresh._scan()
        first.append((time.perf_counter() - start) * 1000)
    watcher = _watcher(marker)
    watcher.min_window = 0.0  # every scan is applied, as scans 15 s apart are
    watcher._apply(watcher._scan())
    scans, applies, seen, ours = [], [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        result = watcher._scan()
        scanned = time.perf_counter()
        watcher._apply(result)
        applies.append((time.perf_counter() - scanned) * 1000)
        scans.append((scanned - start) * 1000)
        seen.append(float(len(result.parents)))
        ours.append(float(len(result.samples)))
    return {"first": first, "scan": scans, "apply": applies, "seen": seen, "ours": ours}


async def _ticks(duration: float) -> list[float]:
    """How late (ms) each ``asyncio.sleep(TICK)`` wakes up, for ``duration`` seconds."""
    lags = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append((time.perf_counter() - start - TICK) * 1000)
    return lags


async def _lag(marker: str, chunks: int, chunk: float) -> tuple[list[float], list[float], int]:
    """The ticker alone and the ticker while the watcher scans back to back through
    ``ProcessWatcher.run`` (the scan in the default executor's thread, the apply on the loop),
    in alternating chunks; returns (lags with scans, lags without, scans done)."""
    watcher = _watcher(marker, interval=0.0)
    # one thread, as the default executor has for scans one after another (it starts another
    # only when none is free), so a no-op sent to it waits for a scan cut short below
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    # the executor's thread exists before the first measured chunk, as in a running server
    await watcher.sample()
    scanning: list[float] = []
    quiet: list[float] = []
    scans = 0
    for i in range(2 * chunks):
        if i % 2 == 0:
            before = watcher.scans
            task = asyncio.create_task(watcher.run())
            try:
                scanning += await _ticks(chunk)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            scans += watcher.scans - before
            # a scan cancelled in the middle goes on in its thread: let it end first
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        else:
            quiet += await _ticks(chunk)
    return scanning, quiet, scans


# -- CPU of processes ------------------------------------------------------------------------------


def _thread_times(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process (``/proc/PID/task/*/schedstat``, nanoseconds)."""
    times: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return times
    for task in tasks:
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return times


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a thread that ended in between loses only its last
    part (``harness.cpu_seconds`` differences would lose its whole life)."""
    return sum(t - before.get(tid, 0.0) for tid, t in after.items())


def _psutil_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _kernel_pid(server: ServerProcess, kernel_id: str) -> int:
    def find() -> int:
        for child in psutil.Process(server.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(kernel_id in part for part in child.cmdline()):
                    return int(child.pid)
        return 0

    return int(wait_until(find, 30))


def _shell_pid(server: ServerProcess) -> int:
    def find() -> int:
        for child in psutil.Process(server.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if child.name() == "bash":
                    return int(child.pid)
        return 0

    return int(wait_until(find, 30))


def _open(server: ServerProcess) -> tuple[str, int, int]:
    """One kernel and one terminal on the server: (kernel id, kernel pid, shell pid)."""
    kernel_id = server.start_kernel()
    status, model = server.request("POST", "/api/terminals")
    assert status in (200, 201), (status, model)
    return kernel_id, _kernel_pid(server, kernel_id), _shell_pid(server)


def _settle(pids: Sequence[int], timeout: float = 60, step: float = 0.5) -> float:
    """Wait until every process has used under QUIET of a core over two steps in a row (a
    kernel with no client stays "starting" in api/kernels, so its CPU tells when it is up);
    return the seconds waited."""
    start = time.monotonic()
    before = {pid: _thread_times(pid) for pid in pids}
    quiet_steps = 0
    while quiet_steps < 2:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the processes did not go quiet within {timeout:g} s")
        time.sleep(step)
        after = {pid: _thread_times(pid) for pid in pids}
        busy = any(_used(before[pid], after[pid]) / step * 100 >= QUIET for pid in pids)
        quiet_steps = 0 if busy else quiet_steps + 1
        before = after
    return time.monotonic() - start


def _readings(pids: dict[str, int], seconds: int) -> tuple[list[float], dict[str, list[float]]]:
    """Read every process's CPU once a second for ``seconds`` s: (times, CPU seconds so far)."""
    start = time.monotonic()
    at: list[float] = []
    threads: dict[str, list[dict[int, float]]] = {name: [] for name in pids}
    for k in range(seconds + 1):
        time.sleep(max(0.0, start + k - time.monotonic()))
        at.append(time.monotonic())
        for name, pid in pids.items():
            threads[name].append(_thread_times(pid))
    # summed second by second, so a thread that ended loses at most its last second (see _used)
    so_far: dict[str, list[float]] = {}
    for name, reads in threads.items():
        total, cumulative = 0.0, [0.0]
        for before, after in zip(reads, reads[1:]):
            total += _used(before, after)
            cumulative.append(total)
        so_far[name] = cumulative
    return at, so_far


def _windows(at: list[float], so_far: list[float], length: int) -> list[float]:
    """CPU share (% of one core) in consecutive windows of ``length`` readings."""
    shares = []
    for i in range(0, len(at) - length, length):
        used = so_far[i + length] - so_far[i]
        shares.append(100 * used / (at[i + length] - at[i]))
    return shares


# -- the benchmark ---------------------------------------------------------------------------------


def process_scan(ctx: Context) -> list[Row]:
    """9. One scan at 300 processes, the loop's lag while scans run, the sampler's CPU per hour on
    an idle server, the idle CPU of a kernel, a shell and the server."""
    rows: list[Row] = []
    started = time.monotonic()
    rows += _scan_rows(ctx)
    rows += _idle_rows(ctx)
    ctx.note(BENCH, f"the whole benchmark took {time.monotonic() - started:.0f} s")
    return rows


def _scan_rows(ctx: Context) -> list[Row]:
    count = 50 if ctx.quick else 300
    reps, cold = (30, 3) if ctx.quick else (300, 20)
    chunks, chunk = (2, 0.5) if ctx.quick else (10, 1.0)
    marker = uuid.uuid4().hex
    quick = "; quick: 300 in a full run" if ctx.quick else ""
    marked = len(range(0, count, MARKED_EVERY))
    procs = _spawn(count, marker)
    try:
        wait_until(lambda: _alive(procs), 30, 0.05)
        times = _scan_times(marker, reps, cold)
        scanning, quiet, scans = asyncio.run(_lag(marker, chunks, chunk))
    finally:
        _reap(procs)
    seen = median(times["seen"])
    what = f"{count} processes started ({marked} marked as ours{quick}) and the machine's own"
    rows = [
        value_row(
            BENCH,
            f"one scan (ProcessWatcher._scan, the thread's part) of {what}: median",
            times["scan"],
            unit="ms",
        ),
        value_row(
            BENCH,
            f"one scan of {what}: p99",
            times["scan"],
            unit="ms",
            goal=SCAN_P99_GOAL_MS,
            stat=_p99,
        ),
        value_row(
            BENCH,
            f"first scan of a new watcher (every process's environment read once) of {what}: "
            "median",
            times["first"],
            unit="ms",
        ),
        value_row(
            BENCH,
            f"event-loop lag of a {TICK * 1000:g} ms asyncio.sleep while the watcher scans {what} "
            "back to back: max",
            scanning,
            unit="ms",
            goal=LAG_GOAL_MS,
            stat=max,
            compared="same ticker, no scans",
            baseline=fmt(max(quiet), 2, "ms"),
        ),
        value_row(
            BENCH,
            f"event-loop lag while the watcher scans {what} back to back: p99",
            scanning,
            unit="ms",
            goal=LAG_GOAL_MS,
            stat=_p99,
            compared="same ticker, no scans",
            baseline=fmt(_p99(quiet), 2, "ms"),
        ),
    ]
    ctx.note(
        BENCH,
        f"scans: {count} `sleep` processes started, one in {MARKED_EVERY} with "
        f"${ENV_MARKER} set to the watcher's id as a server's children have it; a scan saw "
        f"{seen:.0f} processes in all, {median(times['ours']):.0f} of them ours; {reps} scans of "
        f"one watcher (its cache of which processes are ours warm) and {cold} first scans of fresh "
        f"watchers, timed in this process's main thread; p99 of the scans "
        f"{fmt(_p99(times['scan']), 2)} ms, max {fmt(max(times['scan']), 2)} ms; "
        f"{fmt(median(times['scan']) / seen * 1000, 1)} µs per process seen. The part on the "
        f"loop (ProcessWatcher._apply of a scan's result) takes {fmt(median(times['apply']), 3)} "
        f"ms (median; p99 {fmt(_p99(times['apply']), 3)} ms)",
    )
    ctx.note(
        BENCH,
        f"loop lag: {chunks} chunks of {chunk:g} s of a ticker awaiting asyncio.sleep("
        f"{TICK:g}) while ProcessWatcher.run() scans with no pause between scans (the scan in the "
        "loop's default executor, the apply on the loop, as in the server but back to back "
        "instead of every "
        f"{DEFAULT_INTERVAL:g} s, so every tick overlaps a scan), alternating with {chunks} "
        f"chunks of the ticker alone; {scans} scans, {len(scanning)} ticks with scans and "
        f"{len(quiet)} without. Lag with scans: median {fmt(median(scanning), 3)} ms, p99 "
        f"{fmt(_p99(scanning), 2)} ms, max {fmt(max(scanning), 2)} ms; without: median "
        f"{fmt(median(quiet), 3)} ms, p99 {fmt(_p99(quiet), 2)} ms, max {fmt(max(quiet), 2)} ms",
    )
    return rows


def _alive(procs: Sequence[subprocess.Popen[bytes]]) -> bool:
    """Every process has exec'd ``sleep`` (so the scan sees what it will keep seeing)."""
    for proc in procs:
        try:
            if psutil.Process(proc.pid).name() != "sleep":
                return False
        except psutil.Error:
            return False
    return True


def _idle_rows(ctx: Context) -> list[Row]:
    # quick: a short interval, so the few seconds measured hold a scan per window
    interval = 2 if ctx.quick else int(DEFAULT_INTERVAL)
    windows = 2 if ctx.quick else 4
    settle = 0 if ctx.quick else 5
    shell_arg = "--ServerApp.terminado_settings={'shell_command': ['bash']}"
    setups = [
        (True, (f"--IdleExtension.process_check_interval={interval}", shell_arg)),
        (True, ("--IdleExtension.process_check_interval=0", shell_arg)),
        (False, (shell_arg,)),
    ]
    names = ("sampler", "no sampler", "off")
    servers = start_servers(ctx, "processes", setups)
    try:
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            opened = list(pool.map(_open, servers))
        pids = {name: s.proc.pid for name, s in zip(names, servers)}
        _, kernel_pid, shell_pid = opened[0]
        pids["kernel"], pids["shell"] = kernel_pid, shell_pid
        everything = [p for _, k_pid, s_pid in opened for p in (k_pid, s_pid)]
        waited = _settle([*pids.values(), *everything])
        time.sleep(settle)
        machine_procs = len(psutil.pids())
        ps_before = {name: _psutil_seconds(pid) for name, pid in pids.items()}
        at, so_far = _readings(pids, windows * interval)
        ps_used = {name: _psutil_seconds(pid) - ps_before[name] for name, pid in pids.items()}
        assert all(s.running for s in servers), "a server stopped during the idle windows"
    finally:
        stop_all(servers)

    span = at[-1] - at[0]
    per_hour = {
        name: [share / 100 * 3600 for share in _windows(at, so_far[name], interval)]
        for name in names
    }
    added = [a - b for a, b in zip(per_hour["sampler"], per_hour["no sampler"])]
    every = f"a scan every {interval} s" + (
        f" (quick; {DEFAULT_INTERVAL:g} s, the default, in a full run)" if ctx.quick else ""
    )
    rows = [
        compare_row(
            BENCH,
            f"CPU of an idle server per hour ({every}), per {interval} s window",
            per_hour["sampler"],
            per_hour["no sampler"],
            compared="extension, process_check_interval=0",
            unit="s/h",
            digits=3,
        ),
        compare_row(
            BENCH,
            f"CPU of an idle server per hour, the extension with {every}, per {interval} s window",
            per_hour["sampler"],
            per_hour["off"],
            unit="s/h",
            digits=3,
        ),
        value_row(
            BENCH,
            f"CPU the sampler adds to an idle server per hour ({every}), paired windows",
            added,
            unit="s/h",
            digits=3,
        ),
    ]
    per_scan_ms = median(added) / (3600 / interval) * 1000
    at_default = per_scan_ms / 1000 * 3600 / DEFAULT_INTERVAL
    ctx.note(
        BENCH,
        f"idle CPU: three servers side by side, each with one idle ipykernel and one idle bash "
        f"terminal: ours scanning every {interval} s, ours with process_check_interval=0, and "
        f"one without the extension; once every server, kernel and shell used under {QUIET:g} "
        f"% of a core over two 0.5 s steps in a row ({waited:.1f} s after they were opened) "
        f"and {settle} s more, "
        f"{windows} windows of {interval} s (the scan interval, so each window holds one "
        f"periodic scan), every server's threads read from /proc/PID/task/*/schedstat once a "
        f"second; {machine_procs} processes on the machine. Added by the sampler: "
        f"{fmt(median(added), 3)} CPU s per hour (median of paired windows), "
        f"{fmt(per_scan_ms, 2)} ms per scan, so {fmt(at_default, 3)} s per hour at the default "
        f"{DEFAULT_INTERVAL:g} s. Over the {span:.0f} s: ours "
        f"{fmt(so_far['sampler'][-1] * 1000, 1)} ms, without the sampler "
        f"{fmt(so_far['no sampler'][-1] * 1000, 1)} ms, without the extension "
        f"{fmt(so_far['off'][-1] * 1000, 1)} ms (psutil's utime+stime in 10 ms ticks: "
        f"{fmt(ps_used['sampler'] * 1000, 0)}, {fmt(ps_used['no sampler'] * 1000, 0)}, "
        f"{fmt(ps_used['off'] * 1000, 0)} ms)",
    )

    labels = {
        "kernel": "an idle ipykernel process",
        "shell": "an idle bash in a terminal",
        "sampler": "the idle server process (ours, scanning)",
    }
    maxima = {}
    for name, label in labels.items():
        shares = _windows(at, so_far[name], 1)
        maxima[name] = max(shares)
        for stat_name, stat in (("median", median), ("max", max)):
            rows.append(
                value_row(
                    BENCH,
                    f"CPU share of {label}, % of one core per 1 s window: {stat_name}",
                    shares,
                    unit="%",
                    digits=3,
                    stat=stat,
                )
            )
    worst = max(maxima, key=lambda name: maxima[name])
    ctx.note(
        BENCH,
        f"idle CPU shares for process_cpu_threshold (default {DEFAULT_THRESHOLD:g} % of a core, "
        f"a working process stops below half of it): over {len(at) - 1} windows of 1 s (the "
        "shortest window the watcher measures a share over; it normally measures over the "
        f"{DEFAULT_INTERVAL:g} s between scans) the highest was {fmt(maxima[worst], 3)} % "
        f"({labels[worst]}), "
        + ", ".join(
            f"{labels[name]} {fmt(maxima[name], 3)} % at most, "
            + (
                f"{DEFAULT_THRESHOLD / maxima[name]:,.0f} times below"
                if maxima[name] > 0
                else "nothing measurable"
            )
            for name in labels
        )
        + f" the threshold (half of it, where a working process stops, is "
        f"{DEFAULT_THRESHOLD / 2 / max(maxima[worst], 1e-9):,.0f} times the highest). The "
        "server's own process is never one of the watched ones (the scan skips it); it is "
        "here for comparison",
    )
    return rows
