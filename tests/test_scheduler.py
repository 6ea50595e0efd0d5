"""jupyter-scheduler's jobs (S19): a job whose cell waits keeps the server until it completes,
named by the scheduler's own record; then the server stops on time. A job still running at the
stop is stopped through the scheduler (its record says STOPPED) and leaves no process behind.
jupyter-scheduler adds to JupyterLab, so these run in .venv-apps (marker ``apps``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_jobs import TIMEOUT, notebook

from jupyter_idle_ext.pytest_plugin import ServerProcess, wait_for, wait_until

pytestmark = [pytest.mark.apps, pytest.mark.timeout(180)]


def scheduler_server(
    start_server: Any, tmp_path: Path, *args: str, warning: int = 2, timeout: int = TIMEOUT
) -> ServerProcess:
    return start_server(
        f"--IdleExtension.server_idle_timeout={timeout}",
        f"--IdleExtension.shutdown_warning={warning}",
        "--IdleExtension.process_check_interval=1",
        f"--SchedulerApp.db_url=sqlite:///{tmp_path}/scheduler.sqlite",
        f"--Scheduler.staging_path={tmp_path}/staging",
        *args,
    )


def start_job(server: ServerProcess, name: str, path: str) -> str:
    body = {
        "input_uri": path,
        "runtime_environment_name": "python3",
        "name": name,
        "output_formats": ["ipynb"],
    }
    status, answer = server.request("POST", "/scheduler/jobs", body)
    assert status == 200, answer
    return str(answer["job_id"])


def job_status(server: ServerProcess, job_id: str) -> str:
    status, job = server.request("GET", f"/scheduler/jobs/{job_id}", track=False)
    assert status == 200, job
    return str(job["status"])


def test_a_waiting_job_keeps_the_server_until_it_completes(
    start_server: Any, tmp_path: Path
) -> None:
    server = scheduler_server(start_server, tmp_path)
    notebook(server.root / "report.ipynb", "import time\ntime.sleep(3)", "time.sleep(25)")
    job_id = start_job(server, "nightly", "report.ipynb")
    server.wait_log("Following the kernel", 90)
    _, doc = server.request("GET", "/api/idle", track=False)
    jobs = [s for s in doc["sources"] if s["kind"] == "job"]
    assert jobs and jobs[0]["name"] == "job `nightly` running `report.ipynb`", doc["sources"]
    started = time.monotonic()
    while job_status(server, job_id) == "IN_PROGRESS":
        assert server.running, f"stopped while the job ran:\n{server.log()[-3000:]}"
        assert time.monotonic() - started < 90, "the job never ended"
        time.sleep(0.5)
    ended = time.monotonic()
    assert job_status(server, job_id) == "COMPLETED"
    # the job's end is seen at the next scan; then the usual timeout
    assert server.wait_exit(TIMEOUT + 20) == 0
    after = time.monotonic() - ended
    assert TIMEOUT - 2 <= after <= TIMEOUT + 6, (after, server.log()[-3000:])


def test_a_job_created_as_the_stop_comes_keeps_the_server(
    start_server: Any, tmp_path: Path
) -> None:
    """The job's record says IN_PROGRESS only once its executor process has started Python and
    nbconvert; a job is work from its creation."""
    server = scheduler_server(start_server, tmp_path, warning=10, timeout=15)
    notebook(server.root / "report.ipynb", "import time\ntime.sleep(3)")
    log = server.wait_log("The server will shut down at", 30)
    # the job comes 1.5 s before the stop the warning names (read from the line itself: under
    # load the test may read the log late)
    at = re.search(r"The server will shut down at (\S+) \(", log)
    assert at is not None, log[-2000:]
    due = datetime.fromisoformat(at.group(1).replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, due - 1.5 - time.time()))
    assert time.time() < due - 0.5, "the test read the warning too late"
    job_id = start_job(server, "late", "report.ipynb")
    server.wait_log("Following the kernel", 60)
    assert server.running, server.log()[-3000:]
    wait_until(lambda: job_status(server, job_id) == "COMPLETED", 90)
    assert server.wait_exit(TIMEOUT + 20) == 0
    assert "Shutdown cancelled" in server.log()


def test_a_job_running_at_the_stop_is_stopped_through_the_scheduler(
    start_server: Any, tmp_path: Path
) -> None:
    server = scheduler_server(start_server, tmp_path, "--IdleExtension.max_busy_time=10")
    notebook(server.root / "long.ipynb", "import time\ntime.sleep(300)")
    job_id = start_job(server, "endless", "long.ipynb")
    server.wait_log("Following the kernel", 90)
    children = wait_until(lambda: psutil.Process(server.proc.pid).children(recursive=True), 10)
    assert server.wait_exit(60) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    log = server.log()
    assert "Stopped job `endless` running `long.ipynb` (jupyter-scheduler's job)" in log
    with sqlite3.connect(tmp_path / "scheduler.sqlite") as db:
        (status,) = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    assert status == "STOPPED"


def define_schedule(server: ServerProcess, name: str, path: str, schedule: str) -> None:
    body = {
        "input_uri": path,
        "runtime_environment_name": "python3",
        "name": name,
        "output_formats": ["ipynb"],
        "schedule": schedule,
        "timezone": "UTC",
    }
    status, answer = server.request("POST", "/scheduler/job_definitions", body)
    assert status == 200, answer


def test_an_idle_stop_names_the_scheduled_run_it_cancels(start_server: Any, tmp_path: Path) -> None:
    """scheduled_run_wait off (the default): a run due later does not keep the server."""
    server = scheduler_server(start_server, tmp_path)
    notebook(server.root / "report.ipynb", "print('report')")
    started = time.monotonic()
    define_schedule(server, "nightly-report", "report.ipynb", "0 2 * * *")
    log = server.wait_log("The server will shut down at", TIMEOUT + 5)
    assert "`nightly-report` at " in log and "will not run" in log, log[-2000:]
    _, doc = server.request("GET", "/api/idle", track=False)
    (run,) = doc["server"]["scheduled"]
    assert run["name"] == "`nightly-report`" and run["cancelled"] is True, doc["server"]
    assert run["at"].endswith("T02:00:00.000Z"), run
    assert server.wait_exit(20) == 0
    assert time.monotonic() - started <= TIMEOUT + 6
    assert "Shutting down the server" in server.log()


def test_with_scheduled_run_wait_the_server_waits_for_a_run_due_soon_and_then_stops(
    start_server: Any, tmp_path: Path
) -> None:
    """A run due within the bound keeps the idle server until it has run; its next run, an
    hour later, is beyond the bound: then the server stops on time."""
    server = scheduler_server(
        start_server,
        tmp_path,
        "--IdleExtension.scheduled_run_wait=150",
        "--TaskRunner.poll_interval=1",
    )
    notebook(server.root / "hourly.ipynb", "import time\ntime.sleep(4)")
    # the first minute boundary at least 20 s away (the server is idle long before it)
    due = datetime.now(timezone.utc) + timedelta(seconds=80)
    define_schedule(server, "hourly", "hourly.ipynb", f"{due.minute} * * * *")
    time.sleep(TIMEOUT + 2)
    assert server.running, server.log()[-2000:]
    _, doc = server.request("GET", "/api/idle", track=False)
    assert doc["server"]["rule"] == "scheduled_run_wait", doc["server"]
    assert "waiting for the scheduled run of `hourly`" in doc["server"]["reason"]
    server.wait_log("Following the kernel", 120)
    server.wait_log("ended", 30)
    ended = time.monotonic()
    assert server.wait_exit(TIMEOUT + 20) == 0
    after = time.monotonic() - ended
    assert after <= TIMEOUT + 6, (after, server.log()[-3000:])
    assert "`hourly` at" in server.log()  # the next run, which the stop cancels


# -- in-process: a job no scan has seen yet, at the stop ----------------------------------------


@pytest.fixture
def extra_server_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_scheduler": True}},
        "SchedulerApp": {"db_url": f"sqlite:///{tmp_path}/scheduler.sqlite"},
        "Scheduler": {"staging_path": str(tmp_path / "staging")},
    }


@pytest.mark.parametrize(
    "idle_config", [{"process_check_interval": 300, "cull_idle_timeout": 0}], indirect=True
)
async def test_a_job_created_after_the_last_scan_is_stopped_through_the_scheduler(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Path, tmp_path: Path
) -> None:
    """A job created as the stop comes, which no scan of this server's processes has seen: the
    stop still ends its executor and its kernel, and its record says STOPPED (before, the exit
    ended the executor as a late process, left its record IN_PROGRESS, and its kernel ran on)."""
    processes = idle_app.sources.get("processes")
    assert processes is not None
    await wait_for(lambda: processes.scans, 30)  # the scan at start is over; the next in 300 s
    notebook(jp_root_dir / "long.ipynb", "import time\ntime.sleep(300)")
    body = {
        "input_uri": "long.ipynb",
        "runtime_environment_name": "python3",
        "name": "late",
        "output_formats": ["ipynb"],
    }
    answer = await jp_fetch("scheduler", "jobs", method="POST", body=json.dumps(body))
    job_id = json.loads(answer.body)["job_id"]
    db = tmp_path / "scheduler.sqlite"

    def record() -> tuple[str, int | None]:
        with sqlite3.connect(db) as con:
            return con.execute(
                "SELECT status, pid FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()

    # the job runs: its executor (a child of this process) has started the job's kernel
    executor = psutil.Process(record()[1])

    def kernel() -> list[psutil.Process]:
        return [
            p for p in executor.children(recursive=True) if "ipykernel" in " ".join(p.cmdline())
        ]

    kernels = await wait_for(kernel, 90, interval=0.5)
    assert record()[0] == "IN_PROGRESS"
    jobs = idle_app.sources.get("jobs")
    assert jobs is not None
    assert not jobs.followed and not jobs.starting, "a scan saw the job: this proves nothing"
    await jobs.stop()
    _, alive = psutil.wait_procs([executor, *kernels], timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert record()[0] == "STOPPED"
