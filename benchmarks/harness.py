"""The measuring harness: real servers side by side, a kernel websocket client, statistics, the machine.

Every figure the suite reports is measured here or in a benchmark module at run time; nothing is
typed in by hand. Servers are real ``jupyter server`` processes (``tests/servers.py``), kernels are
real ipykernels, and the JupyterHub is the real one of ``tests/hub.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
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

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    # the servers and the Hub are the test suite's own harnesses, reused as they are
    sys.path.insert(0, str(TESTS))

# re-exported for the benchmark modules
from servers import TOKEN, ServerProcess, free_port, wait_until  # noqa: E402, F401

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
    return "met" if ok else "missed"


def noisy_verdict(r: float, goal: float, aa: float) -> str:
    """A ratio's verdict; a miss by no more than two identical setups differ (the A/A ratio of
    the same run) says so, since then the run cannot tell the extension's cost from noise."""
    if within(r, goal):
        return "met"
    if abs(r - 1) <= abs(aa - 1):
        return "missed (within A/A noise)"
    return "missed"


def within(value: float, goal: float, digits: int = 3) -> bool:
    """``value <= goal`` at the precision the table shows (a ratio printed 0.100 meets 0.1)."""
    return not math.isnan(value) and round(value, digits) <= goal


# -- servers -------------------------------------------------------------------------------------


def start_servers(
    ctx: Context, name: str, specs: Sequence[tuple[bool, Sequence[str]]], timeout: float = 120
) -> list[ServerProcess]:
    """Start servers side by side (``(extension, args)`` each) and wait until all answer."""
    servers = []
    for i, (extension, args) in enumerate(specs):
        root = ctx.scratch(f"{name}-{i}") / "root"
        root.mkdir(exist_ok=True)
        servers.append(ServerProcess(root, extension=extension, args=tuple(args)))
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
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "bench",
            "session": self.session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        content = {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        message = {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }
        return msg_id, json.dumps(message)

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
