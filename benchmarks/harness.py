"""The measuring harness: real servers side by side, a kernel websocket client, statistics, the machine.

Every figure the suite reports is measured here or in a benchmark module at run time; nothing is
typed in by hand. Servers are real ``jupyter server`` processes and the JupyterHub is the real one,
both of the test suite's harness (``jupyter_idle_ext.pytest_plugin``); kernels are real ipykernels.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

# re-exported for the benchmark modules
from jupyter_idle_ext.pytest_plugin import (  # noqa: F401
    TOKEN,
    ServerProcess,
    execute_request,
    free_port,
    logged_at,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: ours against the compared setup, with the goal."""

    bench: str
    measure: str
    ours: str
    baseline: str
    compared: str
    ratio: str = ""
    goal: str = ""
    # "met", "missed", "info" (no goal on this line), "skipped" or "error"
    verdict: str = "info"
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every benchmark gets: the mode, a scratch directory, a log."""

    quick: bool
    tmp: Path
    log: Callable[[str], None]
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, bench: str, text: str) -> None:
        """A line of method or finding for the benchmark's section of RESULTS.md."""
        self.notes.setdefault(bench, []).append(text)
        self.log(f"  {text}")

    def scratch(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# -- statistics ----------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else math.nan


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 400 samples is the 396th smallest)."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(data)))
    return data[rank - 1]


def ratio(ours: float, baseline: float) -> float:
    if baseline == 0 or math.isnan(baseline) or math.isnan(ours):
        return math.nan
    return ours / baseline


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def verdict(ok: bool) -> str:
    """For a goal that is a count or a yes/no (every kernel culled, 0 posts): no interval."""
    return "met" if ok else "missed"


# -- confidence ----------------------------------------------------------------------------------

RESAMPLES = 2000


@dataclass
class Estimate:
    """A statistic of the samples, with its bootstrap 95 % interval (percentile method)."""

    value: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(
    a: Sequence[float],
    b: Sequence[float] | None = None,
    stat: Callable[[Sequence[float]], float] = median,
    seed: int = 1,
    combine: Callable[[float, float], float] | None = None,
) -> Estimate:
    """``stat(a)``, or ``stat(a) / stat(b)`` with b (``combine(stat(a), stat(b))`` with
    combine), and its bootstrap 95 % interval: each resample draws len(a) from a (and len(b)
    from b) with replacement."""
    join = combine or ratio
    a = list(a)
    b = None if b is None else list(b)
    if not a or (b is not None and not b):
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = random.Random(seed)

    def value(x: Sequence[float], y: Sequence[float] | None) -> float:
        return stat(x) if y is None else join(stat(x), stat(y))

    draws = [
        value(rng.choices(a, k=len(a)), None if b is None else rng.choices(b, k=len(b)))
        for _ in range(RESAMPLES)
    ]
    # a resample whose baseline is 0 has no ratio: it is as far out as a ratio can be
    draws = sorted(math.inf if math.isnan(d) else d for d in draws)
    low = draws[int(0.025 * len(draws))]
    high = draws[int(0.975 * len(draws)) - 1]
    return Estimate(value(a, b), low, high, min(len(a), len(b or a)))


def needed_samples(est: Estimate, goal: float) -> int:
    """Samples for the interval to clear the goal, if the spread stays as it is (its half-width
    shrinks as 1/sqrt(n))."""
    half = (est.high - est.low) / 2
    gap = abs(est.value - goal)
    if gap == 0 or est.n == 0:
        return 10**6
    return max(est.n + 1, math.ceil(est.n * (half / gap) ** 2))


def judge(est: Estimate, goal: float, aa: Estimate | None = None, digits: int = 3) -> str:
    """ "met" when the whole interval is within the goal (an upper bound), "missed" when it is
    all beyond it (and beyond where two identical setups fall, the A/A's interval), else
    "unresolved": this run cannot tell."""
    if math.isnan(est.value):
        return "error"
    if round(est.high, digits) <= goal:
        return "met"
    if est.low > goal and (aa is None or est.low > aa.high):
        return "missed"
    if est.low > goal:
        return "unresolved (an A/A as far apart)"
    needs = needed_samples(est, goal)
    more = "more than 10,000" if needs > 10_000 else f"about {needs:,}"
    return f"unresolved (needs {more} samples)"


def compare_row(
    bench: str,
    measure: str,
    ours: Sequence[float],
    base: Sequence[float],
    *,
    compared: str = "extension off",
    aa: Sequence[float] | None = None,
    unit: str = "",
    digits: int = 2,
    goal: float | None = None,
    stat: Callable[[Sequence[float]], float] = median,
    added: bool = False,
) -> Row:
    """Ours against the compared setup: the statistic of each, the ratio with its interval, and
    the A/A ratio (a second setup like the compared one, over the first) with its own. With
    ``added``, the difference (ours minus theirs, in ``unit``) instead of the ratio."""
    combine = (lambda x, y: x - y) if added else None
    r = bootstrap(ours, base, stat, combine=combine)
    text = f"added {r.text(digits)} {unit}" if added else r.text()
    aa_est = None
    if aa is not None:
        aa_est = bootstrap(aa, base, stat, seed=2, combine=combine)
        text += f" (A/A {aa_est.text(digits if added else 3)})"
    row = Row(
        bench,
        measure,
        fmt(stat(ours), digits, unit),
        fmt(stat(base), digits, unit),
        compared,
        text,
        "" if goal is None else (f"added <= {goal:g} {unit}" if added else f"ratio <= {goal:g}"),
        "info" if goal is None else judge(r, goal, aa_est, digits=digits if added else 3),
    )
    row.values.update(
        ours=list(ours),
        base=list(base),
        aa=None if aa is None else list(aa),
        ratio=r.__dict__,
        aa_ratio=None if aa_est is None else aa_est.__dict__,
    )
    return row


def value_row(
    bench: str,
    measure: str,
    samples: Sequence[float],
    *,
    unit: str = "",
    digits: int = 2,
    goal: float | None = None,
    stat: Callable[[Sequence[float]], float] = median,
    compared: str = "",
    baseline: str = "",
) -> Row:
    """A figure of ours alone against an absolute goal (an upper bound), with its interval."""
    est = bootstrap(samples, None, stat)
    interval = f"{fmt(est.value, digits, unit)} [{fmt(est.low, digits)}, {fmt(est.high, digits)}]"
    row = Row(
        bench,
        measure,
        interval,
        baseline,
        compared,
        "",
        "" if goal is None else f"<= {goal:g} {unit}".strip(),
        "info" if goal is None else judge(est, goal, digits=digits),
    )
    row.values.update(samples=list(samples), estimate=est.__dict__)
    return row


def within(value: float, goal: float, digits: int = 3) -> bool:
    """``value <= goal`` at the precision the table shows (a ratio printed 0.100 meets 0.1)."""
    return not math.isnan(value) and round(value, digits) <= goal


# -- servers -------------------------------------------------------------------------------------


def start_servers(
    ctx: Context, name: str, specs: Sequence[tuple[Any, ...]], timeout: float = 120
) -> list[ServerProcess]:
    """Start servers side by side (``(extension, args)`` each, or ``(extension, args,
    launcher)`` for a script run instead of jupyter_server) and wait until all answer."""
    servers = []
    for i, (extension, args, *launcher) in enumerate(specs):
        root = ctx.scratch(f"{name}-{i}") / "root"
        root.mkdir(exist_ok=True)
        servers.append(
            ServerProcess(
                root,
                extension=extension,
                args=tuple(args),
                launcher=launcher[0] if launcher else None,
            )
        )
    try:
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: Iterable[ServerProcess]) -> None:
    for server in servers:
        try:
            server.stop()
        except Exception as e:  # a benchmark must not leave the others without a cleanup
            print(f"could not stop server on port {server.port}: {e}", file=sys.stderr)


def start_kernels(server: ServerProcess, count: int, workers: int = 4) -> list[str]:
    """Start ``count`` kernels on a server, a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda _: server.start_kernel(), range(count)))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads, in nanosecond resolution.

    ``/proc/PID/task/*/schedstat`` (time on CPU per thread) rather than ``utime + stime``,
    whose 10 ms ticks are as coarse as what is measured. Threads that ended are not counted,
    so this is read around work that starts and ends no thread (psutil's figure is printed next
    to it by the flood benchmark as a cross-check).
    """
    total = 0
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def parse_iso(value: str) -> float:
    """An ISO 8601 timestamp (``Z`` or offset) as a POSIX time."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- the kernel websocket ------------------------------------------------------------------------


@dataclass
class Reply:
    """One request's round trip: send to (execute_reply and status idle) on the client."""

    elapsed: float
    status: str
    messages: int
    received_bytes: int


class KernelChannel:
    """A client of ``/api/kernels/{id}/channels`` speaking the Jupyter protocol in JSON frames,
    as JupyterLab does without the v1 subprotocol."""

    def __init__(
        self, base_url: str, kernel_id: str, token: str = TOKEN, *, quickack: bool = False
    ) -> None:
        self.url = (
            base_url.replace("http://", "ws://", 1)
            + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        )
        self.token = token
        self.session = uuid.uuid4().hex
        self.conn: Any = None
        # jupyter_server's kernel websocket leaves Nagle on, so a frame that follows an
        # unacknowledged one waits for the client's delayed ACK (~40 ms on Linux); a client that
        # acknowledges at once sees the server's own processing time
        self.quickack = quickack
        self._socket: Any = None

    async def connect(self) -> KernelChannel:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(
            self.url, headers={"Authorization": f"token {self.token}"}, request_timeout=60
        )
        self.conn = await websocket_connect(request, max_message_size=512 * 1024 * 1024)
        self._socket = self.conn.protocol.stream.socket
        return self

    async def _read(self, timeout: float) -> Any:
        if self.quickack:
            # quick-ACK mode does not stick: Linux may leave it after any segment
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return await asyncio.wait_for(self.conn.read_message(), timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _message(self, code: str) -> tuple[str, str]:
        message = execute_request(code, user="bench", session=self.session, store_history=False)
        return message["header"]["msg_id"], json.dumps(message)

    async def execute(self, code: str, timeout: float = 300) -> Reply:
        """Send an execute_request; return once its execute_reply and its idle status arrived
        (IOPub and shell are not ordered with each other, so both are waited for)."""
        assert self.conn is not None, "connect() first"
        msg_id, raw_message = self._message(code)
        start = time.perf_counter()
        await self.conn.write_message(raw_message)
        deadline = start + timeout
        status = ""
        idle = False
        messages = 0
        received = 0
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no execute_reply within {timeout} s for {code[:40]!r}")
            raw = await self._read(remaining)
            if raw is None:
                raise ConnectionError("kernel websocket closed before the execute_reply")
            received += len(raw)
            if msg_id not in raw:  # a nudge or another client's message: skip without parsing
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            messages += 1
            msg_type = msg.get("msg_type") or msg["header"]["msg_type"]
            if msg_type == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
            elif msg_type == "execute_reply":
                status = msg["content"].get("status", "")
            if idle and status:
                return Reply(time.perf_counter() - start, status, messages, received)


# -- the machine ---------------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the run ran on: CPU, cores, memory, software versions, date, load."""
    import psutil

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "jupyter_server": _version("jupyter_server"),
        "jupyterhub": _version("jupyterhub"),
        "ipykernel": _version("ipykernel"),
        "jupyter_client": _version("jupyter_client"),
        "tornado": _version("tornado"),
        "jupyter_idle_ext": f"{_version('jupyter-idle-ext')} ({_git_commit()})",
        "load_start": os.getloadavg(),
        # CPU in use by other processes before this run started anything
        "cpu_busy_start": psutil.cpu_percent(interval=3),
    }
