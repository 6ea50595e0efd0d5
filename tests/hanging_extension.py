"""A server extension whose stop never finishes: the server's cleanup waits for it forever
(test_faults.py proves the idle shutdown still ends the process within shutdown_grace)."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.extension.application import ExtensionApp


class HangingExtension(ExtensionApp):
    name = "hanging_extension"

    async def stop_extension(self) -> None:
        self.log.info("hanging_extension: stopping, forever")
        await asyncio.Event().wait()


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "hanging_extension", "app": HangingExtension}]
