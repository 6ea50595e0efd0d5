"""A server extension that starts a process at start, and another one while the server stops,
as jupyter-scheduler starts a job's executor for a job created as the stop comes
(test_faults.py: the late one is ended with the server, the early one is left as it is). Each
process's pid goes into ``$LATE_PROCESS_DIR/<early|late>.pid``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _start(name: str) -> None:
    process = subprocess.Popen(SLEEPER)
    (Path(os.environ["LATE_PROCESS_DIR"]) / f"{name}.pid").write_text(str(process.pid))


class LateProcessExtension(ExtensionApp):
    name = "late_process_extension"

    def initialize_settings(self) -> None:
        _start("early")

    async def stop_extension(self) -> None:
        await asyncio.sleep(1.5)  # well after the stop began
        _start("late")
        self.log.info("late_process_extension: started a process while stopping")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "late_process_extension", "app": LateProcessExtension}]
