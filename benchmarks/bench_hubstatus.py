"""Benchmark 12: ``jupyter idle hub-status`` on a large hub.

A stand-in Hub API and stand-in servers, in one tornado process apart from the command: the Hub
pages ``GET /hub/api/users`` at 200 users (JupyterHub's default ``api_page_max_limit``), each user
has one running server, and every twentieth server (5 %) never answers. The command is run as an
admin runs it (``python -m jupyter_idle_ext.cli hub-status --json``) at 100, 1,000 and 10,000
servers; each run must list every server, the silent ones as "not answering". Goal: the whole
listing of 10,000 servers in <= 60 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import Context, Row, fmt, median, value_row

from jupyter_idle_ext.pytest_plugin import free_port

HERE = Path(__file__).resolve().parent
PAGE = 200
HANG_EVERY = 20
GOAL_SECONDS = 60.0
# what a server's api/idle answers: an idle server that stops in 40 min
STATUS = {
    "last_activity": "2026-01-01T10:00:00.000Z",
    "idle_seconds": 1200.0,
    "keepalive": None,
    "server": {
        "action": None,
        "rule": "server_idle_timeout",
        "reason": "idle 20 min, shutdown in 40 min",
        "kept_by": None,
        "seconds_to_shutdown": 2400.0,
        "shutdown_at": "2026-01-01T11:00:00.000Z",
        "warning": None,
    },
}


def serve(port: int, count: int) -> None:
    """The stand-in Hub and servers (run in a process of its own)."""
    from tornado import web

    users = [f"user{i:05d}" for i in range(count)]

    class Users(web.RequestHandler):
        def get(self) -> None:
            offset = int(self.get_argument("offset", "0"))
            items = [
                {
                    "name": name,
                    "servers": {
                        "": {
                            "ready": True,
                            "url": f"/user/{name}/",
                            "last_activity": "2026-01-01T10:00:00.000Z",
                        }
                    },
                }
                for name in users[offset : offset + PAGE]
            ]
            following = offset + PAGE if offset + PAGE < count else None
            self.write(
                {
                    "items": items,
                    "_pagination": {
                        "offset": offset,
                        "limit": PAGE,
                        "total": count,
                        "next": None if following is None else {"offset": following},
                    },
                }
            )

    class Status(web.RequestHandler):
        async def get(self, name: str) -> None:
            if int(name[4:]) % HANG_EVERY == HANG_EVERY - 1:
                await asyncio.sleep(3600)  # a server that does not answer
            self.write(STATUS)

    async def main() -> None:
        app = web.Application([(r"/hub/api/users", Users), (r"/user/([^/]+)/api/idle", Status)])
        app.listen(port, "127.0.0.1", backlog=1024)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _listing(url: str, count: int) -> float:
    """One run of the command; its time, after checking it listed every server."""
    command = [
        sys.executable,
        "-m",
        "jupyter_idle_ext.cli",
        "hub-status",
        "--hub-url",
        f"{url}/hub/api",
        "--token",
        "stand-in",
        "--json",
    ]
    began = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    silent = [r for r in rows if r["state"].startswith("not answering")]
    assert len(rows) == count, (len(rows), count)
    assert len(silent) == count // HANG_EVERY, (len(silent), count)
    assert all(r["state"] == "ok" for r in rows if r not in silent)
    return took


def hub_status_scale(ctx: Context) -> list[Row]:
    bench = "12. hub-status at scale"
    sizes, runs = ((100, 400), 2) if ctx.quick else ((100, 1000, 10000), 3)
    rows: list[Row] = []
    times: dict[int, list[float]] = {}
    for count in sizes:
        port = free_port()
        standin = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", str(port), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert standin.stdout is not None and standin.stdout.readline().strip() == "ready"
            times[count] = [_listing(f"http://127.0.0.1:{port}", count) for _ in range(runs)]
        finally:
            standin.kill()
            standin.wait()
        ctx.log(f"  {count} servers: {', '.join(fmt(t, 1) for t in times[count])} s")
        goal: Any = GOAL_SECONDS if count == 10000 else None
        rows.append(
            value_row(
                bench,
                f"whole listing of {count:,} servers, {count // HANG_EVERY:,} not answering, "
                "median s",
                times[count],
                unit="s",
                digits=1,
                goal=goal,
                compared="one run of `jupyter idle hub-status --json`",
            )
        )
    medians = [median(times[count]) for count in sizes]
    growth = "; ".join(
        f"{a:,} to {b:,} servers: {fmt(1000 * (tb - ta) / (b - a), 2)} s more per 1,000"
        for (a, ta), (b, tb) in zip(zip(sizes, medians), zip(sizes[1:], medians[1:]))
    )
    ctx.note(
        bench,
        "A stand-in Hub API (pages of 200 users) and stand-in servers in one tornado process; "
        f"every {HANG_EVERY}th server never answers and costs its 5 s timeout once, "
        "100 servers read at once, so one timeout is the floor of any listing. Growth: "
        f"{growth}.",
    )
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(int(sys.argv[2]), int(sys.argv[3]))
