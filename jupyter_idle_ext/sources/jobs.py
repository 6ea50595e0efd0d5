"""Kernels that this server's processes start: notebook jobs (jupyter-scheduler, papermill,
``jupyter nbconvert --execute``, ``jupyter execute``, any nbclient or jupyter_client script).

They run outside the server's kernel manager, so no IOPub watcher of the server sees them, and a
job whose cell waits on a query uses no CPU. The process source finds them at each scan (a
process of ours with a ``-f`` connection file on its command line that no kernel manager of this
server runs) and tells this source, which follows each one as a client would, read-only: it
subscribes to the kernel's IOPub with the key from the connection file (readable by the server's
own user, as the kernel is), and sends one ``kernel_info_request`` when it starts following:
a kernel busy with a cell answers only after it, so no answer within a second means busy. From
then on the busy periods of execution requests are the job's work (``kernel_info`` and
``comm_info`` bursts are not); ``max_busy_time`` caps it as it caps a busy kernel.

A job is named by what started it: "job `nightly` running `report.ipynb`" (jupyter-scheduler,
from its job record), "papermill `train.ipynb`", "nbconvert `report.ipynb`". At the stop, each
jupyter-scheduler job still running is stopped through the scheduler (its record says STOPPED),
and every job kernel and the processes that ran it are ended: none is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import psutil

from ..activity import ActivityTracker
from ..policy import SCHEDULED_RUN_START, ScheduledRun, process_id
from ..shutdown import end_processes
from . import BaseSource, Context
from .processes import JobKernel

# a kernel that answers kernel_info within this is not executing anything
PROBE_TIMEOUT = 1.0
# how long a job's processes get to end after SIGTERM at the stop, before SIGKILL
STOP_TIMEOUT = 3.0
# how often the scheduled runs ahead are read from jupyter-scheduler's database
SCHEDULES_EVERY = 30.0
# a scheduled run's job may be created this long before the run's due time and still be that run
RUN_START_SLACK = 60.0
# what names the notebook a job runs: the program, and where its notebook is in its arguments
RUNNERS = {
    "papermill": "papermill",
    "jupyter-nbconvert": "nbconvert",
    "jupyter-execute": "jupyter execute",
    "jupyter-papermill": "papermill",
}


def describe_job(cmdlines: list[list[str]]) -> str:
    """A job in a few words, from the command lines of its kernel's parents (nearest first)."""
    for words in cmdlines:
        if not words:
            continue
        program, rest = os.path.basename(words[0]), words[1:]
        if program.startswith("python"):
            if rest[:1] == ["-m"] and len(rest) > 1:
                program, rest = rest[1].replace("_", "-"), rest[2:]
            elif rest and not rest[0].startswith("-"):
                program, rest = os.path.basename(rest[0]), rest[1:]
        if program == "jupyter" and rest and not rest[0].startswith("-"):
            program, rest = f"jupyter-{rest[0]}", rest[1:]
        runner = RUNNERS.get(program)
        if runner is None:
            continue
        notebooks = [w for w in rest if w.endswith(".ipynb")]
        return f"{runner} `{notebooks[0]}`" if notebooks else runner
    parent = " ".join(cmdlines[0]) if cmdlines and cmdlines[0] else "?"
    return f"kernel started by `{parent[:60]}`"


@dataclass
class Followed:
    """One job kernel being followed."""

    kernel: JobKernel
    name: str
    process: psutil.Process | None
    task: asyncio.Task[None] | None = None
    # the job's processes (its kernel's parents below the server), to end at the stop
    runners: list[psutil.Process] = field(default_factory=list)
    # jupyter-scheduler's id of the job, when the scheduler runs it
    job_id: str | None = None


class JobKernels(BaseSource):
    """Follows the kernels of jobs this server's processes started."""

    name = "jobs"

    def __init__(
        self,
        tracker: ActivityTracker,
        log: Any,
        track: Callable[[str | None], bool],
        scheduler: Any = None,
    ) -> None:
        self.tracker = tracker
        self.log = log
        # jupyter_server's rule for what a message's type says (kernel_info is not activity)
        self.track = track
        # jupyter-scheduler's scheduler in this server, when it runs here
        self.scheduler = scheduler
        self.followed: dict[int, Followed] = {}
        self._schedules_read: float | None = None
        # per job definition: the earliest run read and not known to have started (wall clock),
        # and when a kernel of one of its jobs was last found
        self._due: dict[str, float] = {}
        self._runs_started: dict[str, float] = {}
        # jupyter-scheduler's jobs in progress with no kernel found yet: job id -> name
        self.starting: dict[str, str] = {}

    def explain(self) -> str:
        text = "notebook jobs' kernels while busy (jupyter-scheduler, papermill, nbconvert)"
        if self.scheduler is not None:
            text += "; jupyter-scheduler's scheduled runs are named before a stop cancels them"
        return text

    # -- scheduled runs -------------------------------------------------------------------------

    async def refresh(self, every: bool) -> None:
        """Read the scheduled runs ahead, at most every SCHEDULES_EVERY seconds."""
        now = self.tracker.clock()
        if self._schedules_read is not None and now - self._schedules_read < SCHEDULES_EVERY:
            return
        await self.recheck()

    async def recheck(self) -> None:
        """Read the scheduled runs ahead now: the server is about to warn or stop."""
        if self.scheduler is None:
            return
        self._schedules_read = self.tracker.clock()
        loop = asyncio.get_running_loop()
        try:
            runs = await loop.run_in_executor(None, self._next_runs)
        except Exception as e:
            self.log.warning("Could not read jupyter-scheduler's job definitions: %s", e)
            return
        self.tracker.set_scheduled(runs)

    def _next_runs(self) -> tuple[ScheduledRun, ...]:
        from jupyter_scheduler.orm import JobDefinition
        from jupyter_scheduler.utils import compute_next_run_time

        with self.scheduler.db_session() as session:
            definitions = [
                (d.job_definition_id, d.name, d.schedule, d.timezone)
                for d in session.query(JobDefinition).filter(JobDefinition.active.is_(True))
                if d.schedule
            ]
        now = self.tracker.wall_clock()
        runs = []
        for id, name, schedule, zone in definitions:
            due_walls = [compute_next_run_time(schedule, zone) / 1000]
            # the next run time skips a run as soon as it is due: a run due and not yet started
            # (its job's kernel not found) stays ahead until it starts, within the policy's bound
            earlier = self._due.get(id)
            if (
                earlier is not None
                and earlier < due_walls[0]
                and now - earlier <= SCHEDULED_RUN_START
                and self._runs_started.get(id, 0.0) < earlier - RUN_START_SLACK
            ):
                due_walls.insert(0, earlier)
            self._due[id] = due_walls[0]
            for due_wall in due_walls:
                due = self.tracker.clock() + (due_wall - now)
                at = datetime.fromtimestamp(due_wall, tz=timezone.utc).isoformat(
                    timespec="milliseconds"
                )
                runs.append(ScheduledRun(f"`{name}`", due, at.replace("+00:00", "Z")))
        return tuple(sorted(runs, key=lambda r: r.due))

    # -- what the process scan finds ----------------------------------------------------------

    def found(self, kernels: dict[int, JobKernel]) -> None:
        """The job kernels alive at this scan (called by the process source)."""
        for pid in set(self.followed) - set(kernels):
            self._forget(pid, "ended")
        for pid, kernel in kernels.items():
            known = self.followed.get(pid)
            if known is not None and known.kernel.created == kernel.created:
                continue
            if known is not None:
                self._forget(pid, "ended")
            self._follow(kernel)
        self._jobs_starting()

    def _jobs_starting(self) -> None:
        """jupyter-scheduler's jobs whose kernel has not been found yet: a job is work from its
        creation, not only once its kernel runs. The scheduler starts the job's executor
        process at once, but the job's record says IN_PROGRESS only once that process has
        started Python and imported nbconvert (seconds, longer on a loaded machine); until then
        the record has no start time (and the status STOPPED, the column's default), and its
        executor is a live child process of this server."""
        if self.scheduler is None:
            return
        try:
            from jupyter_scheduler.models import Status
            from jupyter_scheduler.orm import Job

            with self.scheduler.db_session() as session:
                jobs = session.query(Job).filter(
                    Job.end_time.is_(None),
                    Job.status.in_(
                        [Status.IN_PROGRESS, Status.CREATED, Status.QUEUED, Status.STOPPED]
                    ),
                )
                now_ms = datetime.now(timezone.utc).timestamp() * 1000
                running = {
                    job.job_id: f"job `{job.name}` running `{job.input_filename}`"
                    for job in jobs
                    if job.status == Status.IN_PROGRESS
                    or (
                        job.start_time is None
                        and (
                            self._executor_alive(job.pid)
                            # recorded, its executor not yet started (the pid comes after)
                            or (job.pid is None and now_ms - (job.create_time or 0) < 60_000)
                        )
                    )
                }
        except Exception as e:
            self.log.debug("Could not read jupyter-scheduler's jobs: %s", e)
            return
        with_kernel = {f.job_id for f in self.followed.values() if f.job_id}
        starting = {id: name for id, name in running.items() if id not in with_kernel}
        for job_id in set(self.starting) - set(starting):
            key = ("job", f"starting-{job_id}")
            self.tracker.set_busy(*key, False)
            self.tracker.remove(*key)
            del self.starting[job_id]
        for job_id, name in starting.items():
            if job_id not in self.starting:
                self.starting[job_id] = name
                self.tracker.set_busy("job", f"starting-{job_id}", True, name=name)
                self.tracker.records[("job", f"starting-{job_id}")].detail = "starting"

    @staticmethod
    def _executor_alive(pid: int | None) -> bool:
        """Is ``pid`` a running process this server started (a job's executor)?"""
        if not pid:
            return False
        try:
            process = psutil.Process(pid)
            return bool(process.ppid() == os.getpid() and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def _follow(self, kernel: JobKernel) -> None:
        try:
            process: psutil.Process | None = psutil.Process(kernel.pid)
        except psutil.Error:
            process = None
        runners, cmdlines = [], []
        for pid in kernel.chain[1:]:
            with contextlib.suppress(psutil.Error):
                runner = psutil.Process(pid)
                runners.append(runner)
                cmdlines.append(runner.cmdline())
        job = self._job_record(kernel.chain[-1]) if kernel.server_child else None
        if job is not None and job.job_definition_id:
            self._runs_started[job.job_definition_id] = self.tracker.wall_clock()
        name = (
            f"job `{job.name}` running `{job.input_filename}`"
            if job is not None
            else describe_job(cmdlines)
        )
        followed = Followed(kernel, name, process, runners=runners)
        if job is not None:
            followed.job_id = job.job_id
        self.followed[kernel.pid] = followed
        # a job starting its kernel is work begun: between the kernel's start and its first
        # execution it is idle, and a stop there would end the job as it starts
        self.tracker.touch("job", self._id(kernel), name, "started")
        # a scheduled run may have started: the next refresh reads the runs ahead again
        self._schedules_read = None
        followed.task = asyncio.ensure_future(self._watch(followed))
        self.log.info("Following the kernel (pid %d) of %s.", kernel.pid, name)

    def _forget(self, pid: int, how: str) -> None:
        followed = self.followed.pop(pid)
        if followed.task is not None:
            followed.task.cancel()
        key = ("job", self._id(followed.kernel))
        record = self.tracker.records.get(key)
        if record is not None and record.busy_since is not None:
            self.tracker.set_busy(*key, False)
        self.tracker.remove(*key)
        # a run that has just ended is no longer ahead: read them again at the next refresh
        self._schedules_read = None
        self.log.info("The kernel (pid %d) of %s %s.", pid, followed.name, how)

    @staticmethod
    def _id(kernel: JobKernel) -> str:
        return process_id(kernel.pid, kernel.created)

    def _job_record(self, pid: int) -> Any:
        if self.scheduler is None:
            return None
        try:
            from jupyter_scheduler.models import Status
            from jupyter_scheduler.orm import Job

            with self.scheduler.db_session() as session:
                return (
                    session.query(Job)
                    .filter(Job.pid == pid, Job.status == Status.IN_PROGRESS)
                    .first()
                )
        except Exception as e:
            self.log.debug("Could not read jupyter-scheduler's jobs: %s", e)
            return None

    # -- following one kernel -------------------------------------------------------------------

    async def _watch(self, followed: Followed) -> None:
        import zmq
        import zmq.asyncio
        from jupyter_client.session import Session

        kernel = followed.kernel
        key = ("job", self._id(kernel))
        try:
            with open(kernel.connection_file) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            # unknown means working: its CPU still counts through the process source
            self.log.warning(
                "Cannot read the connection file of %s (%s): it counts only while it uses CPU.",
                followed.name,
                e,
            )
            return
        session = Session(
            key=str(info.get("key", "")).encode(),
            signature_scheme=info.get("signature_scheme", "hmac-sha256"),
        )
        address = f"{info.get('transport', 'tcp')}://{info['ip']}:"
        context = zmq.asyncio.Context.instance()
        iopub = context.socket(zmq.SUB)
        shell = context.socket(zmq.DEALER)
        try:
            iopub.setsockopt(zmq.SUBSCRIBE, b"")
            iopub.connect(address + str(info["iopub_port"]))
            shell.connect(address + str(info["shell_port"]))
            await asyncio.sleep(0.2)  # the subscription reaches the kernel
            session.send(shell, "kernel_info_request", {})
            if not await shell.poll(PROBE_TIMEOUT * 1000):
                # executing a cell: a kernel answers kernel_info only between requests
                self.tracker.set_busy(*key, True, name=followed.name)
            while True:
                parts = await iopub.recv_multipart()
                self._message(followed, key, session, parts)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.warning("Stopped following the kernel of %s: %s", followed.name, e)
        finally:
            iopub.close(linger=0)
            shell.close(linger=0)

    def _message(
        self, followed: Followed, key: tuple[str, str], session: Any, parts: list[bytes]
    ) -> None:
        _, message_parts = session.feed_identities(parts)
        msg = session.deserialize(message_parts, content=True)
        msg_type = msg["header"].get("msg_type")
        parent = (msg.get("parent_header") or {}).get("msg_type")
        if msg_type == "status" and self.track(parent):
            busy = msg["content"].get("execution_state") == "busy"
            self.tracker.set_busy(*key, busy, name=followed.name)
            if not busy:
                self._cell(key, None)
        elif self.track(msg_type) or self.track(parent):
            self.tracker.touch(*key)
        if msg_type == "execute_input":
            # comes after the cell's "busy": which cell runs, for people
            self._cell(key, msg["content"].get("execution_count"))

    def _cell(self, key: tuple[str, str], count: int | None) -> None:
        record = self.tracker.records.get(key)
        if record is not None:
            record.detail = f"cell {count}" if count else ""

    # -- the stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop every job this server started: through jupyter-scheduler where it runs them
        (so its record says STOPPED), then end each job kernel and the processes that ran it."""
        # a job created since the last scan (as the stop came) is stopped too
        self._jobs_starting()
        followed, self.followed = list(self.followed.values()), {}
        starting, self.starting = dict(self.starting), {}
        for job in followed:
            if job.task is not None:
                job.task.cancel()
        for job_id, name in starting.items():
            # no kernel followed yet: the scheduler ends the job's process itself (once its
            # record says IN_PROGRESS), but not what that process started; what runs is ended
            # here and the record marked STOPPED, whichever state the job had reached
            try:
                processes = self._executor_tree(job_id)
                self.scheduler.stop_job(job_id)
                await _end(processes)
                self._mark_stopped(job_id)
                self.log.warning("Stopped %s as it started (jupyter-scheduler's job).", name)
            except Exception as e:
                self.log.error("Could not stop %s through jupyter-scheduler: %s", name, e)
        if not followed:
            return
        for job in followed:
            if job.kernel.server_child and self.scheduler is not None:
                record = self._job_record(job.kernel.chain[-1])
                if record is not None:
                    try:
                        self.scheduler.stop_job(record.job_id)
                        self.log.warning("Stopped %s (jupyter-scheduler's job).", job.name)
                    except Exception as e:
                        self.log.error(
                            "Could not stop %s through jupyter-scheduler: %s", job.name, e
                        )
        processes = [p for job in followed for p in (job.process, *job.runners) if p is not None]
        alive = await _end(processes)
        for job in followed:
            self.log.warning("Stopped %s (kernel pid %d).", job.name, job.kernel.pid)
        if alive:
            self.log.warning(
                "Killed what did not end within %g s: %s",
                STOP_TIMEOUT,
                ", ".join(f"pid {p.pid}" for p in alive),
            )

    def _executor_tree(self, job_id: str) -> list[psutil.Process]:
        """A job's executor process, if this server started it and it runs, with its children."""
        from jupyter_scheduler.orm import Job

        with self.scheduler.db_session() as session:
            job = session.query(Job).filter(Job.job_id == job_id).first()
            pid = job.pid if job is not None else None
        if not self._executor_alive(pid):
            return []
        executor = psutil.Process(pid)
        processes = [executor]
        with contextlib.suppress(psutil.Error):
            processes += executor.children(recursive=True)
        return processes

    def _mark_stopped(self, job_id: str) -> None:
        """The record of a job the stop ended says STOPPED (not one that ended by itself)."""
        from jupyter_scheduler.models import Status
        from jupyter_scheduler.orm import Job

        with self.scheduler.db_session() as session:
            session.query(Job).filter(
                Job.job_id == job_id, Job.status.notin_([Status.COMPLETED, Status.FAILED])
            ).update(
                {"status": Status.STOPPED, "status_message": "stopped by the idle shutdown"},
                synchronize_session=False,
            )
            session.commit()


async def _end(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Terminate ``processes``, kill those still running STOP_TIMEOUT later; return those."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, end_processes, processes, STOP_TIMEOUT)


def make(context: Context) -> JobKernels | None:
    """Where the process source runs (it finds the job kernels)."""
    if context.marker is None:
        return None
    km = context.serverapp.kernel_manager
    track = getattr(km, "track_message_type", None)
    if not callable(track):
        untracked = {"kernel_info_request", "kernel_info_reply", "comm_info_request", "status"}

        def track(msg_type: str | None) -> bool:
            return msg_type not in untracked

    scheduler = context.serverapp.web_app.settings.get("scheduler")
    if scheduler is not None and not callable(getattr(scheduler, "db_session", None)):
        scheduler = None
    return JobKernels(context.tracker, context.log, track, scheduler)
