"""Processes this server started, working on the CPU (or a GPU), as activity.

Long runs often leave the kernel: ``nohup python train.py &`` in a terminal that is then closed,
a cell that starts a detached process and returns, a kernel computing in a background thread
while it reports ``idle``. The process is working although nothing the server watches moves.

Which processes are this server's: every process the server starts (kernels, terminals' shells,
jupyter-server-proxy's apps) inherits its environment, and so does everything they start, also
after its parent is gone (nohup, setsid, tmux, a closed terminal: re-parented to PID 1, so a scan
of the server's descendants misses them). At start the extension puts a random id of its own in
``$JUPYTER_IDLE_SERVER_ID``; a process carrying that id is ours. Another server's processes,
even of the same user, carry another id or none, so they never count. A process's environment
is readable only by its own user (or root): the scan reads nothing this server's user could not,
and a process that replaced its environment (``env -i``) is not seen.

The scan runs in a thread, on ``process_check_interval``, and again right before anything would be
culled or the server shut down. A process works while it uses at least ``process_cpu_threshold``
percent of a core (or ``gpu_utilization_threshold`` percent of a GPU), and stops working once
below half of it; ``max_busy_time`` caps it like a busy kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..activity import ActivityTracker
from ..policy import process_id
from . import BaseSource, Context
from .gpus import Gpus, load_nvml

ENV_MARKER = "JUPYTER_IDLE_SERVER_ID"
# a process's command line is read once it is this old (seconds): before, it may be the shell
# that forked it, about to exec the real program
EXEC_SETTLED = 2.0
# a scan taken this recently is fresh enough for a decision; a CPU share is measured over at
# least this long (a scan right after another would measure a blip)
FRESH = 1.0
MIN_WINDOW = 1.0


def mark_environment() -> str:
    """Give this server an id that every process it starts from now on inherits."""
    marker = uuid.uuid4().hex
    os.environ[ENV_MARKER] = marker
    return marker


@dataclass
class Sample:
    """One process of ours at one scan."""

    pid: int
    ppid: int
    cpu_time: float
    at: float
    # percent of one core over the interval since the previous scan; None on the first one
    cpu: float | None = None
    gpu: float | None = None


@dataclass
class Tracked:
    """What the watcher keeps about one of our processes between scans."""

    pid: int
    command: str
    last: Sample
    working: bool = False
    # the kernel or terminal it belongs to, by (kind, id)
    owner: tuple[str, str] | None = None
    # it is (or was) a kernel's or terminal's own process; once that kernel or terminal is gone
    # it only winds down (a kernel shutting down uses CPU), and that is not work
    was_own_process: bool = False
    retired: bool = False
    # started by the server process itself, not through a kernel, terminal or proxied app (an
    # extension's helper: jupyter-lsp probing npm, say): the server's own work, not the user's
    helper: bool = False
    # the monotonic time the current CPU share is measured from
    window_start: float = 0.0


@dataclass(frozen=True)
class JobKernel:
    """A kernel of ours that no kernel manager of this server runs, and what started it."""

    pid: int
    created: float
    connection_file: str
    # its pid, then its parents' up to (not including) the server, a terminal or the first
    # process that is not ours
    chain: tuple[int, ...]
    # the last of the chain is a child of the server itself (a jupyter-scheduler job)
    server_child: bool = False


@dataclass
class ScanResult:
    samples: dict[tuple[int, float], Sample] = field(default_factory=dict)
    commands: dict[tuple[int, float], str] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)
    # ours that are kernels (a ``-f`` connection file on their command line): pid -> the file
    kernels: dict[int, str] = field(default_factory=dict)
    took: float = 0.0


def connection_file(cmdline: list[str]) -> str | None:
    """The connection file of a kernel's command line (``ipykernel_launcher -f FILE``, the form
    every jupyter_client launch takes), or None for any other program."""
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag in ("-f", "--f") and value.endswith(".json"):
            return value
    for word in cmdline:
        if word.startswith("--f=") and word.endswith(".json"):
            return word[4:]
    return None


def short_command(cmdline: list[str], limit: int = 60) -> str:
    """A process's command line for people: the program's base name, then its arguments."""
    if not cmdline:
        return "?"
    words = [os.path.basename(cmdline[0]), *cmdline[1:]]
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Scanner:
    """Finds this server's processes and reads their CPU time (run in a thread)."""

    def __init__(self, marker: str, own_pid: int | None = None) -> None:
        self.marker = marker
        self.own_pid = own_pid if own_pid is not None else os.getpid()
        # (pid, create time) -> ours or not, and the command line of ours: read once per process
        self._ours: dict[tuple[int, float], bool] = {}
        self._commands: dict[tuple[int, float], str] = {}
        self._kernels: dict[tuple[int, float], str | None] = {}

    def _is_ours(self, proc: psutil.Process) -> bool:
        try:
            environ = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            return False
        return bool(environ.get(ENV_MARKER) == self.marker)

    def scan(self) -> ScanResult:
        started = time.monotonic()
        result = ScanResult()
        alive: set[tuple[int, float]] = set()
        for proc in psutil.process_iter(["pid", "ppid", "create_time"]):
            info = proc.info
            pid, ppid, created = info["pid"], info["ppid"] or 0, info["create_time"] or 0.0
            result.parents[pid] = ppid
            key = (pid, created)
            alive.add(key)
            if pid == self.own_pid:
                continue
            ours = self._ours.get(key)
            if ours is None:
                ours = self._ours[key] = self._is_ours(proc)
            if not ours:
                continue
            try:
                times = proc.cpu_times()
                command = self._commands.get(key)
                if command is None:
                    cmdline = proc.cmdline()
                    command = short_command(cmdline)
                    # a process this young may not have exec'd its program yet: read it again
                    if time.time() - created > EXEC_SETTLED:
                        self._commands[key] = command
                        self._kernels[key] = connection_file(cmdline)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            result.commands[key] = command
            kernel_file = self._kernels.get(key)
            if kernel_file is not None:
                result.kernels[pid] = kernel_file
            cpu_time = times.user + times.system
            result.samples[key] = Sample(pid, ppid, cpu_time, time.monotonic())
        for key in set(self._ours) - alive:
            del self._ours[key]
            self._commands.pop(key, None)
            self._kernels.pop(key, None)
        result.took = time.monotonic() - started
        return result


class ProcessWatcher(BaseSource):
    """Samples this server's processes and records the working ones into an ActivityTracker.

    A working process is a busy source of kind ``process``; when it belongs to a kernel (the
    kernel's own process or one it started) or a terminal, that kernel or terminal is
    ``computing`` too, so it is not culled while it works.
    """

    def __init__(
        self,
        *,
        tracker: ActivityTracker,
        marker: str,
        interval: float,
        cpu_threshold: float,
        gpu_threshold: float,
        owners: Any,
        log: Any,
        nvml: Any = None,
        stopping: Any = set,
        kernels_found: Any = None,
    ) -> None:
        self.tracker = tracker
        self.scanner = Scanner(marker)
        self.interval = interval
        self.cpu_threshold = cpu_threshold
        self.gpu_threshold = gpu_threshold
        # () -> {pid: (kind, id)} of the kernels', terminals' and proxied apps' own processes
        self.owners = owners
        # () -> ids of the kernels and terminals being stopped: their processes wind down
        self.stopping = stopping
        # ({pid: JobKernel}) -> None: told the kernels of ours no kernel manager of this server
        # runs (a job's: papermill, nbconvert, jupyter-scheduler), at each scan
        self.kernels_found = kernels_found
        self.log = log
        self.gpus = Gpus(nvml, log) if gpu_threshold > 0 else None
        self.tracked: dict[tuple[int, float], Tracked] = {}
        self.min_window = MIN_WINDOW
        self.last_scan = 0.0
        self.scans = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    name = "processes"

    def explain(self) -> str:
        use = []
        if self.cpu_threshold > 0:
            use.append(f"CPU >= {self.cpu_threshold:g} % of a core")
        if self.gpus is not None and self.gpus.handles:
            use.append(f"GPU >= {self.gpu_threshold:g} %")
        return (
            f"work of this server's processes ({', '.join(use) or 'no measure on'}, checked "
            f"every {self.interval:g} s)"
        )

    def start(self) -> None:
        """Sample every ``interval`` seconds from now on."""
        self._task = asyncio.ensure_future(self.run())

    async def recheck(self) -> None:
        # a job that started since the last scan must not lose to the scan's phase
        await self.sample(fresh=FRESH)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.close()

    # -- sampling ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                self.log.exception("Scanning this server's processes failed; trying again")
            await asyncio.sleep(self.interval)

    async def sample(self, fresh: float = 0.0) -> None:
        """Scan now, unless a scan ended less than ``fresh`` seconds ago."""
        async with self._lock:
            if fresh and time.monotonic() - self.last_scan < fresh:
                return
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, self._scan)
            self._apply(result)

    def _scan(self) -> ScanResult:
        result = self.scanner.scan()
        if self.gpus is not None and self.gpus.handles:
            used = self.gpus.utilisation()
            for sample in result.samples.values():
                sample.gpu = used.get(sample.pid)
        return result

    def _apply(self, result: ScanResult) -> None:
        self.scans += 1
        self.last_scan = time.monotonic()
        owners = self.owners()
        stopping = self.stopping()
        job_kernels = self._job_kernels(result, owners)
        # a job's kernel and the processes that run it (a scheduler's executor, papermill) are
        # the person's work, not the server's helpers
        jobs = {pid for kernel in job_kernels.values() for pid in kernel.chain}
        for key, sample in result.samples.items():
            tracked = self.tracked.get(key)
            if tracked is None:
                command = result.commands.get(key, "?")
                self.tracked[key] = tracked = Tracked(sample.pid, command, sample)
                if sample.pid not in owners:
                    # a job seen for the first time has no interval yet: take its life so far,
                    # so one that started just before a decision is not missed. A kernel's or
                    # terminal's own process starting up is not work: it is measured from now.
                    created = key[1]
                    lifetime = max(0.1, time.time() - created) if created else None
                    sample.cpu = 100 * sample.cpu_time / lifetime if lifetime else None
            else:
                elapsed = sample.at - tracked.last.at
                if elapsed < self.min_window:
                    continue  # measured a moment ago
                sample.cpu = 100 * max(0.0, sample.cpu_time - tracked.last.cpu_time) / elapsed
                tracked.window_start = tracked.last.at
                tracked.last = sample
            own = owners.get(sample.pid)
            if own is not None and own[1] not in stopping:
                tracked.was_own_process = True
            elif tracked.was_own_process or own is not None:
                tracked.retired = True
            tracked.owner, tracked.helper = _lineage(
                sample.pid, result.parents, owners, self.scanner.own_pid, jobs
            )
            self._update(key, tracked)
        for key in set(self.tracked) - set(result.samples):
            tracked = self.tracked.pop(key)
            if tracked.working:
                self._stopped(key, tracked, "ended")
            self.tracker.remove("process", process_id(*key))

    def _job_kernels(self, result: ScanResult, owners: dict[int, Any]) -> dict[int, JobKernel]:
        """Our kernels that no kernel manager of this server runs, with what started them."""
        found: dict[int, JobKernel] = {}
        if not result.kernels:
            if self.kernels_found is not None:
                self.kernels_found(found)
            return found
        commands = {key[0]: command for key, command in result.commands.items()}
        created = {key[0]: key[1] for key in result.samples}
        for pid, path in result.kernels.items():
            if pid in owners:
                continue  # a kernel of this server's kernel manager
            chain = [pid]
            parent = result.parents.get(pid, 0)
            while parent and parent != self.scanner.own_pid and parent in commands:
                if parent in owners:
                    break  # the terminal (or kernel) it was started from
                chain.append(parent)
                parent = result.parents.get(parent, 0)
            found[pid] = JobKernel(
                pid=pid,
                created=created.get(pid, 0.0),
                connection_file=path,
                chain=tuple(chain),
                server_child=parent == self.scanner.own_pid,
            )
        if self.kernels_found is not None:
            self.kernels_found(found)
        return found

    def _explained(self, tracked: Tracked) -> bool:
        """A kernel's own process executed a cell during the window: its CPU was the cell's."""
        if not tracked.was_own_process or tracked.owner is None or tracked.owner[0] != "kernel":
            return False
        record = self.tracker.records.get(tracked.owner)
        if record is None:
            return False
        if record.busy_since is not None:
            return True
        # the clocks differ (the tracker's is a seam for tests): compare how long ago
        ended_ago = self.tracker.clock() - record.idle_since if record.idle_since else None
        window = time.monotonic() - tracked.window_start
        return ended_ago is not None and ended_ago <= window

    def _update(self, key: tuple[int, float], tracked: Tracked) -> None:
        sample = tracked.last
        cpu, gpu = sample.cpu or 0.0, sample.gpu or 0.0
        if self._explained(tracked):
            cpu = 0.0
        cpu_on = self.cpu_threshold > 0 and cpu >= self.cpu_threshold
        gpu_on = self.gpu_threshold > 0 and gpu >= self.gpu_threshold
        # hysteresis: a working process goes on working until it falls below half a threshold
        cpu_held = self.cpu_threshold > 0 and cpu >= self.cpu_threshold / 2
        gpu_held = self.gpu_threshold > 0 and gpu >= self.gpu_threshold / 2
        working = (
            not tracked.retired
            and not tracked.helper
            and (cpu_on or gpu_on or (tracked.working and (cpu_held or gpu_held)))
        )
        detail = describe_use(cpu, sample.gpu)
        record_id = process_id(*key)
        if working and not tracked.working:
            tracked.working = True
            self.tracker.set_busy("process", record_id, True, name=tracked.command)
            self.log.info(
                "Process %d `%s` is working (%s)%s: the server is not idle.",
                tracked.pid,
                tracked.command,
                detail,
                f", for {tracked.owner[0]} {tracked.owner[1][:8]}" if tracked.owner else "",
            )
        elif not working and tracked.working:
            self._stopped(key, tracked, "stopped working")
        record = self.tracker.records.get(("process", record_id))
        if record is not None:
            record.detail = detail
        self._set_owner_computing(tracked)

    def _stopped(self, key: tuple[int, float], tracked: Tracked, how: str) -> None:
        tracked.working = False
        self.tracker.set_busy("process", process_id(*key), False, name=tracked.command)
        self.log.info("Process %d `%s` %s.", tracked.pid, tracked.command, how)
        self._set_owner_computing(tracked)

    def _set_owner_computing(self, tracked: Tracked) -> None:
        if tracked.owner is None:
            return
        working = [t for t in self.tracked.values() if t.working and t.owner == tracked.owner]
        self.tracker.set_computing(*tracked.owner, working[0].command if working else None)

    # -- reading -----------------------------------------------------------------------------

    def working(self) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.working]

    def close(self) -> None:
        if self.gpus is not None:
            self.gpus.close()


def make(context: Context) -> ProcessWatcher | None:
    """The source when process_check_interval is on (the environment was marked at load)."""
    options = context.options
    if context.marker is None:
        return None
    gpu = options.gpu_utilization_threshold
    watcher = ProcessWatcher(
        tracker=context.tracker,
        marker=context.marker,
        interval=options.process_check_interval,
        cpu_threshold=options.process_cpu_threshold,
        gpu_threshold=gpu,
        owners=context.owners,
        log=context.log,
        nvml=load_nvml() if gpu > 0 else None,
        stopping=context.stopping,
        kernels_found=getattr(context.made.get("jobs"), "found", None),
    )
    watcher.start()
    return watcher


def describe_use(cpu: float, gpu: float | None) -> str:
    text = f"{round(cpu)} % CPU"
    if gpu:
        text += f", {round(gpu)} % GPU"
    return text


def _lineage(
    pid: int,
    parents: dict[int, int],
    owners: dict[int, tuple[str, str]],
    server: int,
    jobs: set[int] | frozenset[int] = frozenset(),
) -> tuple[tuple[str, str] | None, bool]:
    """The kernel, terminal or app whose process this is or which started it, if any; and
    whether the server process itself started it otherwise (a helper of the server's: a
    language server, say). A job's kernel and what runs it (``jobs``) are never helpers."""
    if pid in jobs:
        return None, False
    seen = 0
    while pid and seen < 64:
        owner = owners.get(pid)
        if owner is not None:
            return owner, False
        if pid == server:
            # a server that is PID 1 (a container without an init) also adopts every orphan:
            # a nohup job there cannot be told from a helper, so it counts (never kill work)
            return None, server != 1
        pid = parents.get(pid, 0)
        seen += 1
    # its parent is gone (nohup, setsid, tmux): a job
    return None, False
