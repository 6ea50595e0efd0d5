"""A server extension that starts a CPU-bound helper process of its own once the server runs, as
jupyter-lsp probes npm or an extension runs git: the server's work, not the user's
(test_processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp

BURN = Path(__file__).resolve().parent / "burn.py"


class HelperExtension(ExtensionApp):
    name = "helper_extension"

    def initialize_settings(self) -> None:
        # once the server runs (every jupyter_server version calls this callback then)
        self.serverapp.io_loop.add_callback(self.start_helper)

    def start_helper(self) -> None:
        seconds = os.environ.get("HELPER_BURN_SECONDS", "10")
        subprocess.Popen([sys.executable, str(BURN), seconds, os.environ["HELPER_DONE"]])
        self.log.info("helper_extension: started its helper")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "helper_extension", "app": HelperExtension}]
