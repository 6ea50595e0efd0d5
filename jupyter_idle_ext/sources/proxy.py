"""Input to apps behind jupyter-server-proxy (RStudio, code-server, a desktop) as activity.

The person works in the app's own page, so the server sees only what the proxy carries. What
counts is the person's input: websocket messages from the client to the app, and requests from
the client that change something (any method but GET, HEAD and OPTIONS). What the app sends to
the client (heartbeats, pushes, screen updates) never counts, nor do websocket control frames
(pings), nor does opening a connection; jupyter-server-proxy's own ``last_activity_times`` is
not used, since it counts both directions and would let an app's heartbeat keep a server
forever. Some clients also send keep-alives of their own; ``proxy_keepalive_patterns`` lists
them per app (the defaults are checked against those clients' sources, see the README).

On shutdown the apps' processes are stopped: jupyter-server-proxy (through simpervisor) stops
them only from its signal handlers, which an idle shutdown does not go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from ..activity import ActivityTracker
from ..compat import ObservedRoutes, route_kwargs
from ..metrics import ACTIVITY
from . import BaseSource, Context

# requests that change nothing; the rest is input
PASSIVE_METHODS = {"GET", "HEAD", "OPTIONS"}
# how long an app gets to exit after SIGTERM before it is killed
APP_STOP_TIMEOUT = 5.0

# VS Code's remote protocol (code-server, jupyter-vscode-proxy): binary frames of 13-byte-header
# messages, type in byte 0 and data length in bytes 9-12 (src/vs/base/parts/ipc/common/ipc.net.ts).
# A frame made only of empty Ack (3) and KeepAlive (9) messages is the client's own: it sends a
# KeepAlive every 5 s and acknowledges what the app sent.
VSCODE_KEEPALIVES = r"\A(?:[\x03\x09][\s\S]{8}\x00\x00\x00\x00)+\Z"

#: what the clients of known apps send by themselves, by app name (the name jupyter-server-proxy
#: serves the app under); regular expressions searched in the request path, and in websocket
#: messages (binary ones read as latin-1, one character per byte)
DEFAULT_KEEPALIVES: dict[str, dict[str, list[str]]] = {
    # RStudio (jupyter-rsession-proxy): the client long-polls events/get_events without a pause
    # and reports its state in the background; its terminal sends "b" every 10 s
    "rstudio": {
        "requests": [
            r"/events/get_events$",
            r"/rpc/set_client_state$",
            r"/rpc/set_workbench_metrics$",
        ],
        "messages": [r"\Ab\Z"],
    },
    "vscode": {"requests": [], "messages": [VSCODE_KEEPALIVES]},
    "code-server": {"requests": [], "messages": [VSCODE_KEEPALIVES]},
    # noVNC (jupyter-remote-desktop-proxy): RFB client messages SetPixelFormat (0), SetEncodings
    # (2), FramebufferUpdateRequest (3, sent after every screen update it receives),
    # EnableContinuousUpdates (150), ClientFence (248), and the one-byte handshake replies
    "desktop": {
        "requests": [],
        "messages": [r"\A[\x00\x02\x03\x96\xf8]", r"\A[\s\S]\Z", r"\ARFB \d{3}\.\d{3}\n\Z"],
    },
}


def compile_patterns(
    patterns: dict[str, dict[str, list[str]]],
) -> dict[str, tuple[list[re.Pattern[str]], list[re.Pattern[str]]]]:
    """The patterns, compiled: app name -> (request patterns, message patterns)."""
    return {
        app: (
            [re.compile(p) for p in rules.get("requests", [])],
            [re.compile(p) for p in rules.get("messages", [])],
        )
        for app, rules in patterns.items()
    }


def app_name(handler: Any) -> str:
    """The name an app is served under: its server-process name, or the port proxied."""
    from jupyter_server_proxy.handlers import NamedLocalProxyHandler, RemoteProxyHandler

    if isinstance(handler, NamedLocalProxyHandler):
        return str(handler.name) if getattr(handler, "name", None) else f"port {handler.port}"
    args: list[Any] = list(handler.path_args or ())
    if isinstance(handler, RemoteProxyHandler) and len(args) >= 2:
        return f"{args[0]}:{args[1]}"
    return f"port {args[0]}" if args else "proxy"


class ProxyWatcher(BaseSource):
    """Records input to proxied apps into an ActivityTracker, and stops their processes."""

    name = "proxy"

    def __init__(
        self,
        web_app: Any,
        tracker: ActivityTracker,
        keepalives: dict[str, dict[str, list[str]]],
        log: Any,
    ) -> None:
        from jupyter_server_proxy.handlers import ProxyHandler

        self.web_app = web_app
        self.tracker = tracker
        self.log = log
        self.keepalives = compile_patterns(keepalives)
        self.routes = ObservedRoutes(web_app, ProxyHandler, self._observe)
        self._names: dict[int, str] = {}

    def _name(self, handler: Any) -> str:
        # one handler per request or connection: name it once
        key = id(handler)
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = app_name(handler)
        return name

    def client_message(self, handler: Any, message: Any) -> None:
        name = self._name(handler)
        rules = self.keepalives.get(name)
        if rules and rules[1]:
            text = message.decode("latin-1") if isinstance(message, bytes) else str(message)
            if any(p.search(text) for p in rules[1]):
                return
        self.record(name)

    def client_request(self, handler: Any) -> None:
        if handler.request.method in PASSIVE_METHODS:
            return
        name = app_name(handler)
        rules = self.keepalives.get(name)
        path = handler.request.path
        if rules and any(p.search(path) for p in rules[0]):
            return
        self.record(name)

    def record(self, name: str) -> None:
        self.tracker.touch("app", name, name, "input")
        ACTIVITY.labels("app").inc()

    def _observe(self, handler_class: type) -> type:
        watcher = self

        class Observed(handler_class):  # type: ignore[valid-type,misc,unused-ignore]
            def on_message(self, message: Any) -> Any:
                watcher.client_message(self, message)
                return super().on_message(message)

            def proxy(self, *args: Any, **kwargs: Any) -> Any:
                watcher.client_request(self)
                return super().proxy(*args, **kwargs)

            def on_close(self) -> None:
                watcher._names.pop(id(self), None)
                super().on_close()

        Observed.__name__ = Observed.__qualname__ = handler_class.__name__
        return Observed

    def apps(self) -> list[str]:
        """The names of the server processes jupyter-server-proxy serves."""
        from jupyter_server_proxy.api import ServersInfoHandler

        names = {
            process.name
            for kwargs in route_kwargs(self.web_app, ServersInfoHandler)
            for process in kwargs.get("server_processes", [])
        }
        return sorted(names)

    def owns(self) -> dict[int, tuple[str, str]]:
        """The process id of each app jupyter-server-proxy started and supervises."""
        found = {}
        for proc in self._processes():
            pid = getattr(proc, "pid", None)
            if isinstance(pid, int):
                found[pid] = ("app", str(proc.name))
        return found

    def _processes(self) -> list[Any]:
        from jupyter_server_proxy.handlers import SuperviseAndProxyHandler

        procs = {}
        for kwargs in route_kwargs(self.web_app, SuperviseAndProxyHandler):
            state = kwargs.get("state") or {}
            proc = state.get("proc")
            # a string stands for a process jupyter-server-proxy does not manage
            if hasattr(proc, "terminate") and getattr(proc, "running", True):
                procs[id(proc)] = proc
        return list(procs.values())

    async def stop_apps(self) -> None:
        """Stop the processes jupyter-server-proxy started: politely, then by force."""
        await asyncio.gather(*(self._stop(proc) for proc in self._processes()))

    async def _stop(self, proc: Any) -> None:
        self.log.info("Stopping proxied app %s (pid %s).", proc.name, proc.pid)
        try:
            await asyncio.wait_for(proc.terminate(), APP_STOP_TIMEOUT)
        except Exception as e:
            self.log.warning("Proxied app %s did not stop (%s); killing it.", proc.name, e)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.kill(), APP_STOP_TIMEOUT)

    def explain(self) -> str:
        apps = ", ".join(self.apps()) or "ports"
        with_keepalives = ", ".join(sorted(self.keepalives)) or "none"
        return (
            f"input to apps behind jupyter-server-proxy ({apps}; client keep-alives ignored "
            f"for {with_keepalives})"
        )

    async def stop(self) -> None:
        # simpervisor stops them only on a signal, which an idle shutdown is not
        try:
            await self.stop_apps()
        finally:
            self.close()

    def close(self) -> None:
        self.routes.close()


def proxy_watcher(
    web_app: Any, tracker: ActivityTracker, keepalives: dict[str, dict[str, list[str]]], log: Any
) -> ProxyWatcher | None:
    """The watcher when jupyter-server-proxy serves routes in this server, else None."""
    try:
        watcher = ProxyWatcher(web_app, tracker, keepalives, log)
    except ImportError:
        return None
    if not watcher.routes:
        return None
    return watcher


def make(context: Context) -> ProxyWatcher | None:
    return proxy_watcher(
        context.serverapp.web_app,
        context.tracker,
        context.options.proxy_keepalive_patterns,
        context.log,
    )
