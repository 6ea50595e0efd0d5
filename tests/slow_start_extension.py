"""A server extension that takes seconds to load, as one importing a large library or reading a
slow home directory does: the server does not serve yet, so that is nobody's idle time
(test_server.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from jupyter_server.extension.application import ExtensionApp


class SlowStartExtension(ExtensionApp):
    name = "slow_start_extension"

    def initialize_settings(self) -> None:
        time.sleep(float(os.environ.get("SLOW_START_SECONDS", "6")))
        self.log.info("slow_start_extension: loaded")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "slow_start_extension", "app": SlowStartExtension}]
