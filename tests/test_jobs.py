"""Kernels that this server's processes start (S19): notebook jobs run outside the server's kernel
manager. A job whose cell waits (no CPU) keeps the server while its kernel is busy, named in the
status; after it the server stops on time; a kernel that another process on the machine started
never keeps it; at the stop no job process or kernel is left running. jupyter-scheduler's jobs
are in test_scheduler.py (it changes JupyterLab, so it runs in .venv-apps).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_processes import in_terminal

from jupyter_idle_ext.pytest_plugin import EXIT_SLACK, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 8
SHORT = (
    f"--IdleExtension.server_idle_timeout={TIMEOUT}",
    "--IdleExtension.shutdown_warning=2",
    "--IdleExtension.process_check_interval=1",
)


def notebook(path: Path, *cells: str) -> Path:
    """A notebook of code cells, run by the python3 kernel."""
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "execution_count": None,
                        "metadata": {},
                        "outputs": [],
                        "source": code,
                    }
                    for code in cells
                ],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    return path


def papermill_of(path: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("papermill" in w for w in cmdline[:2]) and str(path) in " ".join(cmdline):
            return proc
    return None


@pytest.fixture(autouse=True)
def no_stray_jobs(tmp_path: Path) -> Any:
    yield
    for proc in psutil.process_iter(["cmdline"]):
        if str(tmp_path) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()


def job_source(server: ServerProcess) -> dict[str, Any] | None:
    _, doc = server.request("GET", "/api/idle", track=False)
    return next((s for s in doc["sources"] if s["kind"] == "job"), None)


def test_a_papermill_run_from_a_closed_terminal_keeps_the_server_while_its_kernel_waits(
    start_server: Any, tmp_path: Path
) -> None:
    server = start_server(*SHORT)
    # found a moment after the kernel starts: during the first cell, then the second runs
    nb = notebook(tmp_path / "wait.ipynb", "import time\ntime.sleep(5)", "time.sleep(20)")
    out = tmp_path / "out.ipynb"
    papermill = Path(sys.executable).parent / "papermill"
    name = in_terminal(server, f"nohup {papermill} {nb} {out} > {tmp_path}/pm.log 2>&1 &")
    runner = wait_until(lambda: papermill_of(nb), 15)
    assert server.request("DELETE", f"/api/terminals/{name}")[0] == 204
    server.wait_log("Following the kernel", 20)
    # the cell waits, using no CPU: only the kernel's busy state shows the job works
    source = wait_until(
        lambda: (s := job_source(server)) and s["busy_seconds"] is not None and s, 20
    )
    assert source["name"] == f"papermill `{nb}`", source
    _, doc = server.request("GET", "/api/idle", track=False)
    assert doc["server"]["kept_by"]["what"] == "job running", doc["server"]
    wait_until(
        lambda: "cell 2 busy for" in server.request("GET", "/api/idle")[1]["server"]["reason"], 15
    )
    started = time.monotonic()
    while runner.is_running() and runner.status() != psutil.STATUS_ZOMBIE:
        assert server.running, f"stopped while the job ran:\n{server.log()[-3000:]}"
        assert time.monotonic() - started < 60, "the job never ended"
        time.sleep(0.5)
    ended = time.monotonic()
    assert out.exists()
    # a finished job keeps nothing: the stop comes server_idle_timeout after it
    assert server.wait_exit(TIMEOUT + 20) == 0
    after = time.monotonic() - ended
    assert TIMEOUT - 2 <= after <= TIMEOUT + EXIT_SLACK, (after, server.log()[-3000:])
    assert "ended" in server.log()


def test_a_kernel_another_process_started_does_not_keep_the_server(
    start_server: Any, tmp_path: Path
) -> None:
    """The same job, started by this test (not through the server): it is not the server's."""
    nb = notebook(tmp_path / "other.ipynb", "import time\ntime.sleep(40)")
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_IDLE_SERVER_ID"}
    papermill = Path(sys.executable).parent / "papermill"
    other = subprocess.Popen(
        [str(papermill), str(nb), str(tmp_path / "other-out.ipynb")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server = start_server(*SHORT)
        started = time.monotonic()
        assert server.wait_exit(TIMEOUT + 20) == 0
        assert time.monotonic() - started <= TIMEOUT + EXIT_SLACK
        assert other.poll() is None, "the other process's job was stopped"
        assert "Following the kernel" not in server.log()
    finally:
        other.kill()
        other.wait()


def test_the_stop_leaves_no_job_kernel_or_job_process_running(
    start_server: Any, tmp_path: Path
) -> None:
    """A job that outlives max_busy_time: the server stops, and takes the job down with it."""
    server = start_server(*SHORT, "--IdleExtension.max_busy_time=12")
    nb = notebook(tmp_path / "long.ipynb", "import time\ntime.sleep(300)")
    papermill = Path(sys.executable).parent / "papermill"
    in_terminal(server, f"nohup {papermill} {nb} {tmp_path}/long-out.ipynb > /dev/null 2>&1 &")
    runner = wait_until(lambda: papermill_of(nb), 15)
    kernels = wait_until(lambda: runner.children(), 20)
    server.wait_log("Following the kernel", 20)
    assert server.wait_exit(60) == 0
    _, alive = psutil.wait_procs([runner, *kernels], timeout=5)
    assert not alive, alive
    log = server.log()
    assert f"Stopped papermill `{nb}`" in log
