"""Never silently off: a failure while the extension links, loads or starts stops the server with a
CRITICAL line naming it (jupyter_server would log a warning and run on without us), unless the
admin opted out with ``fail_open``. Real server processes, with the failure injected by
``faulty_server.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jupyter_idle_ext.pytest_plugin import ServerProcess, wait_until

pytestmark = pytest.mark.timeout(120)

LAUNCHER = Path(__file__).resolve().parent / "faulty_server.py"
STAGES = ["link", "load", "start"]


def faulty(tmp_path: Path, stage: str, *args: str) -> ServerProcess:
    root = tmp_path / "root"
    root.mkdir()
    return ServerProcess(root, args=args, env={"IDLE_TEST_FAIL_AT": stage}, launcher=LAUNCHER)


def critical_lines(log: str) -> list[str]:
    """CRITICAL lines, but jupyter_server's own "received signal 15" at the test's end."""
    return [
        line
        for line in log.splitlines()
        if line.startswith("[C ") and "received signal" not in line
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_a_failure_at_any_stage_stops_the_server(tmp_path: Path, stage: str) -> None:
    server = faulty(tmp_path, stage)
    try:
        code = server.wait_exit(60)
    finally:
        server.stop()
    log = server.log()
    assert code == 1, log[-3000:]
    # one line says what failed and what happens now
    [critical] = critical_lines(log)
    assert f"could not {stage}: RuntimeError: injected failure at {stage}" in critical
    assert "Stopping the server" in critical and "fail_open" in critical
    assert "Traceback" in log, "the failure's traceback is logged once"
    assert log.count("Traceback") == 1, log[-3000:]


@pytest.mark.parametrize("stage", STAGES)
def test_fail_open_runs_on_without_culling_and_says_so(tmp_path: Path, stage: str) -> None:
    server = faulty(tmp_path, stage, "--IdleExtension.fail_open=True")
    try:
        server.wait_ready(60)
        wait_until(lambda: "Running WITHOUT idle culling" in server.log(), 20)
        time.sleep(2)
        assert server.running
        status, body = server.request("GET", "/api/idle")
        if stage == "start":
            # the handlers were loaded: they say why nothing runs
            assert status == 503 and "could not start" in str(body), (status, body)
        else:
            assert status == 404, (status, body)
    finally:
        server.stop()
    [critical] = critical_lines(server.log())
    assert f"could not {stage}" in critical and "Running WITHOUT idle culling" in critical
