"""Benchmarks 1 and 2: what the extension costs on the kernel message path.

Two real servers run side by side, one with jupyter_idle_ext and one without, each with one real
ipykernel; requests alternate between them batch by batch (A B A B ...), so both see the same
machine at the same moments.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
from harness import (
    Context,
    KernelChannel,
    Row,
    bootstrap,
    compare_row,
    cpu_seconds,
    fmt,
    fmt_ratio,
    judge,
    median,
    percentile,
    ratio,
    start_servers,
    stop_all,
)

ROUND_TRIP_GOAL = 1.02
FLOOD_GOAL = 1.03
TRIVIAL_CELL = "x = 1"


async def _round_trips(
    channels: list[KernelChannel], batches: int, batch: int, warmup: int
) -> list[list[float]]:
    for channel in channels:
        for _ in range(warmup):
            await channel.execute(TRIVIAL_CELL)
    times: list[list[float]] = [[] for _ in channels]
    for b in range(batches):
        # rotate the order, so no server always runs right after the same other one
        for side in _rotation(len(channels), b):
            channel = channels[side]
            for _ in range(batch):
                reply = await channel.execute(TRIVIAL_CELL)
                assert reply.status == "ok", reply
                times[side].append(reply.elapsed)
    return times


def _rotation(count: int, round_: int) -> list[int]:
    return [(round_ + i) % count for i in range(count)]


#: the setups of 1 and 2: ours, the server without the extension, and a second server without it
#: (the A/A control: how far two identical servers differ on this machine during this run)
SETUPS = [(True, ()), (False, ()), (False, ())]


def round_trip(ctx: Context) -> list[Row]:
    """1. execute_request round trips over the kernel websocket, extension on vs off."""
    bench = "1. Execute round trip"
    servers = start_servers(ctx, "roundtrip", SETUPS)
    rows = []
    try:
        kernels = [s.start_kernel() for s in servers]

        async def measure(quickack: bool, batches: int, batch: int) -> list[list[float]]:
            channels = [
                await KernelChannel(s.url, k, quickack=quickack).connect()
                for s, k in zip(servers, kernels)
            ]
            try:
                return await _round_trips(channels, batches, batch, 5 if ctx.quick else 20)
            finally:
                for channel in channels:
                    channel.close()

        for quickack, label, (batches, batch) in (
            (False, "median ms, client with delayed ACKs (as a browser)", (15, 20)),
            (True, "median ms, client with TCP_QUICKACK (server's own time)", (50, 20)),
        ):
            if ctx.quick:
                batches, batch = 2, 10
            ours_t, base_t, control_t = asyncio.run(measure(quickack, batches, batch))
            ms = [[t * 1000 for t in side] for side in (ours_t, base_t, control_t)]
            row = compare_row(bench, label, ms[0], ms[1], aa=ms[2], unit="ms", goal=ROUND_TRIP_GOAL)
            rows.append(row)
            ctx.note(
                bench,
                f"{label}: {len(ours_t)} round trips per server in batches of {batch}, the three "
                f"servers in turn; p90 {fmt(percentile(ms[0], 90))} ms (ours), "
                f"{fmt(percentile(ms[1], 90))} ms (off), "
                f"{fmt(percentile(ms[2], 90))} ms (second server off)",
            )
            if row.verdict != "met":
                ctx.note(
                    f"limit:{bench}",
                    f"{label}: ratio and 95 % interval {row.ratio}. Per execute_request the "
                    "extension runs its trait observers on the kernel's status and "
                    "last_activity (2. measures their CPU inside the server)",
                )
    finally:
        stop_all(servers)
    return rows


def flood_cells(quick: bool) -> dict[str, tuple[str, str]]:
    """The flooding cells: (label, code) by key."""
    flushed = 2_000 if quick else 10_000
    return {
        "lines": ("print 100,000 short lines", "for i in range(100_000):\n    print(i)"),
        "display": (
            "one 20 MB display_data",
            "from IPython.display import display\n"
            "display({'text/plain': 'x' * 20_000_000}, raw=True)",
        ),
        "flushed": (
            f"{flushed:,} lines flushed one by one ({flushed:,} IOPub messages)",
            f"for i in range({flushed}):\n    print(i, flush=True)",
        ),
    }


def _probe(server: Any) -> dict[str, int]:
    """message_probe.py's totals so far."""
    status, body = server.request("GET", "/bench/message-probe", track=False)
    assert status == 200, (status, body)
    return dict(body)


def output_flood(ctx: Context) -> list[Row]:
    """2. Server CPU seconds and wall time until idle for output floods, extension on vs off."""
    reps = (
        {"lines": 3, "display": 3, "flushed": 1}
        if ctx.quick
        else {"lines": 12, "display": 12, "flushed": 10}
    )
    bench = "2. Output flood"
    cells = flood_cells(ctx.quick)
    probe = Path(__file__).resolve().parent / "message_probe.py"
    servers = start_servers(ctx, "flood", [*SETUPS, (True, (), probe)])
    rows = []
    try:
        kernels = [s.start_kernel() for s in servers]
        procs = [psutil.Process(s.proc.pid) for s in servers]

        async def measure() -> dict[str, dict[int, dict[str, list[float]]]]:
            channels = [
                await KernelChannel(s.url, k, quickack=True).connect()
                for s, k in zip(servers, kernels)
            ]
            results: dict[str, dict[int, dict[str, list[float]]]] = {}
            try:
                for channel in channels:  # warm every kernel's output path
                    await channel.execute("print('warm')")
                for key, (_, code) in cells.items():
                    per_side: dict[int, dict[str, list[float]]] = {
                        side: {
                            "cpu": [],
                            "wall": [],
                            "psutil": [],
                            "bytes": [],
                            "messages": [],
                            "probe_ns": [],
                            "iopub": [],
                        }
                        for side in range(len(servers))
                    }
                    for rep in range(reps[key]):
                        for side in _rotation(len(servers), rep):
                            server, channel, proc = servers[side], channels[side], procs[side]
                            probe_before = _probe(server) if side == 3 else None
                            before = cpu_seconds(server.proc.pid)
                            before_ps = sum(proc.cpu_times()[:2])
                            reply = await channel.execute(code)
                            assert reply.status == "ok", reply
                            if probe_before is not None:
                                # messages may still arrive after the idle status
                                await asyncio.sleep(0.2)
                                probe_after = _probe(server)
                                per_side[side]["probe_ns"].append(
                                    probe_after["cpu_ns"] - probe_before["cpu_ns"]
                                )
                                per_side[side]["iopub"].append(
                                    probe_after["iopub"] - probe_before["iopub"]
                                )
                            per_side[side]["cpu"].append(cpu_seconds(server.proc.pid) - before)
                            per_side[side]["psutil"].append(sum(proc.cpu_times()[:2]) - before_ps)
                            per_side[side]["wall"].append(reply.elapsed)
                            per_side[side]["bytes"].append(reply.received_bytes)
                            per_side[side]["messages"].append(reply.messages)
                    results[key] = per_side
            finally:
                for channel in channels:
                    channel.close()
            return results

        results = asyncio.run(measure())
        for key, (label, _) in cells.items():
            ours, base, control, probed = (results[key][side] for side in range(4))
            cpu = [[v * 1000 for v in side["cpu"]] for side in (ours, base, control)]
            row = compare_row(
                bench,
                f"{label}: server CPU, median ms",
                cpu[0],
                cpu[1],
                aa=cpu[2],
                unit="ms",
                digits=1,
                goal=FLOOD_GOAL,
            )
            rows.append(row)
            rows.append(
                compare_row(
                    bench,
                    f"{label}: wall time until idle, median s",
                    ours["wall"],
                    base["wall"],
                    aa=control["wall"],
                    unit="s",
                    digits=3,
                )
            )
            # the extension's own CPU per cell inside the probed server, over the CPU of the
            # server without it for the same cell: the share the extension adds
            own_ms = [v / 1e6 for v in probed["probe_ns"]]
            share = bootstrap(own_ms, cpu[1])
            goal_share = FLOOD_GOAL - 1
            own_row = Row(
                bench,
                f"{label}: the extension's own CPU inside the server (message_probe.py), "
                "% of the CPU of the server without it",
                f"{fmt(median(own_ms), 3, 'ms')} per cell, "
                f"{fmt(median(probed['iopub']), 0)} IOPub messages",
                fmt(median(cpu[1]), 1, "ms"),
                "extension off",
                f"{share.value * 100:.2f} % [{share.low * 100:.2f}, {share.high * 100:.2f}]",
                f"<= {goal_share * 100:.0f} %",
                judge(share, goal_share),
                {"own_ms": own_ms, "iopub": probed["iopub"], "share": share.__dict__},
            )
            rows.append(own_row)
            per_message = [ns / max(1, n) for ns, n in zip(probed["probe_ns"], probed["iopub"])]
            ctx.note(
                bench,
                f"{label}: {len(ours['cpu'])} samples per setup, the four servers in turn "
                "(ours, off, a second off for the A/A, ours under message_probe.py), rotating "
                f"the order; {median(ours['messages']):.0f} messages for the cell reached the "
                "client (past 1,000 messages/s jupyter_server's iopub_msg_rate_limit stops "
                "forwarding output, though it still receives every message from the kernel: "
                f"{fmt(median(probed['iopub']), 0)} here); "
                f"{median(ours['bytes']) / 1e6:.2f} MB received by the client per cell; the "
                f"extension's observers took {fmt(median(per_message), 0)} ns of CPU per IOPub "
                "message inside the server; the CPU ratio from psutil's utime+stime (10 ms "
                "ticks) is "
                f"{fmt_ratio(ratio(median(ours['psutil']), median(base['psutil'])))}",
            )
            if row.verdict != "met":
                ctx.note(
                    f"limit:{bench}",
                    f"{label}: whole-process CPU ratio {row.ratio}: {row.verdict}. The "
                    f"extension's own CPU inside the server, measured around its callbacks, is "
                    f"{own_row.ratio} of the server's CPU for the cell ({own_row.verdict} "
                    f"against {own_row.goal}): that row is the verdict on our cost per message",
                )
    finally:
        stop_all(servers)
    return rows
