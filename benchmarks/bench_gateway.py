"""Benchmark 11: what following kernels the server does not run costs.

- The execute round trip of a kernel on a real Jupyter Enterprise Gateway (from .venv-gateway),
  through three servers started with ``--gateway-url``: ours, one without the extension, and a
  second one without it (the A/A control); requests alternate between them batch by batch.
- Following a job's kernel: our reading of each IOPub message (``JobKernels._message``) against
  what any IOPub client pays to read it (``Session.feed_identities`` and ``deserialize``).
"""

from __future__ import annotations

import logging
import time

from harness import Context, Row, compare_row, fmt, percentile, start_servers, stop_all

from jupyter_idle_ext.pytest_plugin import Gateway, KernelSocket

ROUND_TRIP_GOAL = 1.02
TRIVIAL_CELL = "x = 1"


def gateway_round_trip(ctx: Context) -> list[Row]:
    bench = "11. Kernels the server does not run"
    gateway = Gateway(ctx.scratch("gateway"))
    rows = []
    try:
        args = (f"--gateway-url={gateway.url}",)
        servers = start_servers(
            ctx, "gateway", [(True, args), (False, args), (False, args)], timeout=120
        )
        try:
            # one kernel at a time, each answering before the next starts: Enterprise Gateway
            # picks a kernel's ports before the kernel binds them, so a kernel launched in that
            # moment can be given a port of the one before it and die at every restart
            sockets = []
            for server in servers:
                sockets.append(KernelSocket(server.url, server.start_kernel()))
                sockets[-1].kernel_info()
            batches, batch, warmup = (2, 10, 3) if ctx.quick else (15, 20, 20)
            for tab in sockets:
                for _ in range(warmup):
                    tab.execute(TRIVIAL_CELL)
            times: list[list[float]] = [[] for _ in sockets]
            for b in range(batches):
                for side in [(b + i) % len(sockets) for i in range(len(sockets))]:
                    for _ in range(batch):
                        start = time.perf_counter()
                        reply = sockets[side].execute(TRIVIAL_CELL)
                        times[side].append((time.perf_counter() - start) * 1000)
                        assert reply["content"]["status"] == "ok", reply
            for tab in sockets:
                tab.close()
            label = "execute round trip through Enterprise Gateway, median ms"
            rows.append(
                compare_row(
                    bench, label, times[0], times[1], aa=times[2], unit="ms", goal=ROUND_TRIP_GOAL
                )
            )
            ctx.note(
                bench,
                f"{len(times[0])} round trips per server in batches of {batch}, the three "
                f"servers in turn, one Enterprise Gateway behind them; p90 "
                f"{fmt(percentile(times[0], 90))} ms (ours), {fmt(percentile(times[1], 90))} ms "
                f"(off), {fmt(percentile(times[2], 90))} ms (second server off)",
            )
        finally:
            stop_all(servers)
    finally:
        gateway.stop()
    rows.append(_job_kernel_messages(ctx, bench))
    return rows


def _job_kernel_messages(ctx: Context, bench: str) -> Row:
    """Our cost per IOPub message of a followed job kernel, against reading the message."""
    from jupyter_client.session import Session

    from jupyter_idle_ext.activity import ActivityTracker
    from jupyter_idle_ext.sources.jobs import Followed, JobKernels
    from jupyter_idle_ext.sources.processes import JobKernel

    session = Session(key=b"bench-key")
    parent = session.msg("execute_request", {"code": "x = 1"})
    messages = []
    for msg_type, content in (
        ("status", {"execution_state": "busy"}),
        ("execute_input", {"code": "x = 1", "execution_count": 1}),
        ("stream", {"name": "stdout", "text": "progress 42 %\n"}),
        ("status", {"execution_state": "idle"}),
    ):
        msg = session.msg(msg_type, content, parent=parent["header"])
        messages.append(session.serialize(msg))
    tracker = ActivityTracker()
    jobs = JobKernels(tracker, logging.getLogger("bench.jobs"), lambda t: t != "status")
    kernel = JobKernel(pid=1, created=0.0, connection_file="-", chain=(1,))
    followed = Followed(kernel, "papermill `bench.ipynb`", None)
    key = ("job", "1@0.00")
    tracker.add(*key, followed.name)
    rounds = 200 if ctx.quick else 5_000

    def per_message(read: bool) -> list[float]:
        samples = []
        for _ in range(rounds):
            # the same messages again: forget their signatures (replay protection), both sides
            session.digest_history.clear()
            start = time.perf_counter()
            for parts in messages:
                if read:
                    _, message_parts = session.feed_identities(parts)
                    session.deserialize(message_parts, content=True)
                else:
                    jobs._message(followed, key, session, parts)
            samples.append((time.perf_counter() - start) * 1e6 / len(messages))
        return samples

    ours, base, control = per_message(False), per_message(True), per_message(True)
    ctx.note(
        bench,
        f"a followed job kernel: {rounds:,} rounds of a cell's 4 IOPub messages (status busy, "
        "execute_input, a line of output, status idle); 'off' is what reading them costs any "
        "IOPub client",
    )
    return compare_row(
        bench,
        "a job kernel's IOPub message, followed, median µs",
        ours,
        base,
        compared="reading the message",
        aa=control,
        unit="µs",
    )
