"""A small web app standing in for RStudio or code-server behind jupyter-server-proxy.

It behaves the way those apps do towards an idle client: its websocket pushes a heartbeat every
half second whether anyone types or not, and it answers long-polls (``/events/get_events``),
plain requests and input. It writes its pid to ``$STANDIN_PID_DIR/<name>.pid`` so a test can
check that the process is gone after the server stopped.

    python standin_app.py --port=PORT --name=NAME
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from tornado import web, websocket

HEARTBEAT = 0.5


class Page(web.RequestHandler):
    def get(self, path: str = "") -> None:
        self.write(f"<html><body>stand-in app, {self.request.method} {path}</body></html>")

    def post(self, path: str = "") -> None:
        self.write({"ok": True, "path": path})

    put = patch = delete = post


class LongPoll(web.RequestHandler):
    async def post(self) -> None:
        # RStudio's client re-sends this as soon as it is answered
        await asyncio.sleep(0.5)
        self.write({"events": []})


class Socket(websocket.WebSocketHandler):
    def open(self) -> None:
        self.pushing = asyncio.ensure_future(self.push())

    async def push(self) -> None:
        n = 0
        while True:
            n += 1
            try:
                await self.write_message(f"heartbeat {n}")
            except websocket.WebSocketClosedError:
                return
            await asyncio.sleep(HEARTBEAT)

    def on_message(self, message: str | bytes) -> None:
        reply = message if isinstance(message, bytes) else f"got {message}"
        self.write_message(reply, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        self.pushing.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin")
    args = parser.parse_args()
    pid_dir = os.environ.get("STANDIN_PID_DIR")
    if pid_dir:
        Path(pid_dir, f"{args.name}.pid").write_text(str(os.getpid()))
    app = web.Application(
        [
            (r"/events/get_events", LongPoll),
            (r"/ws", Socket),
            (r"/(.*)", Page),
        ]
    )

    async def serve() -> None:
        app.listen(args.port, address="127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
