"""The server extension: start-up and the wiring of activity, policy, actions and surfaces."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import TraitError

from .activity import ActivityTracker, KernelWatcher, TerminalWatcher
from .collaboration import collaboration_watcher
from .culler import IdleCuller
from .documents import DocumentWatcher
from .events import emit_event, register_schema
from .handlers import default_handlers
from .hub import HubEnvironment, HubReporter, silence_singleuser_reporter
from .metrics import IDLE_SECONDS, KEEPALIVES, SECONDS_TO_SHUTDOWN
from .options import IdleOptions
from .processes import ENV_MARKER, ProcessWatcher, load_nvml, mark_environment
from .proxy import ProxyWatcher, proxy_watcher
from .status import build_status

SETTINGS_KEY = "jupyter_idle_ext_tracker"


class IdleExtension(IdleOptions, ExtensionApp):
    """Culls idle kernels and terminals and stops an idle server, judging by execution activity."""

    name = "jupyter_idle_ext"
    description = __doc__
    load_other_extensions = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # set here, not at load or start, so that every life-cycle hook works whatever stage
        # the extension reached (jupyter_server stops extensions that were only linked when a
        # later start-up step fails)
        self.hub: HubEnvironment | None = None
        self.tracker = ActivityTracker()
        self.culler: IdleCuller | None = None
        self.reporter: HubReporter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # activity sources besides kernels and terminals; each has close()
        self.sources: list[Any] = []
        self.proxy: ProxyWatcher | None = None
        self.processes: ProcessWatcher | None = None
        self.marker: str | None = None

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        # jupyter_server logs a failing extension and runs on without it; for an idle culler that
        # means silently paying for idle servers, so a bad option stops the server instead.
        try:
            super()._link_jupyter_server_extension(serverapp)
            self.policy = self.policy_config()
        except TraitError as e:
            serverapp.log.critical("jupyter_idle_ext: invalid configuration: %s", e)
            raise SystemExit(1) from e
        self.hub = HubEnvironment.from_environ() if self.hub_activity_interval > 0 else None
        if self.hub is not None:
            # before jupyterhub-singleuser's reporter makes its first post at start-up
            silence_singleuser_reporter(serverapp, self.log)

    # -- life cycle --------------------------------------------------------------------------

    def initialize_settings(self) -> None:
        self.settings[SETTINGS_KEY] = self.tracker
        if self.process_check_interval > 0:
            # before any kernel, terminal or app starts: each inherits it
            self.marker = mark_environment()
        register_schema(self.serverapp)

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers)

    def emit(self, data: dict[str, Any]) -> None:
        emit_event(self.serverapp, data, self.log)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.culler is not None:
            return  # already started
        terminal_manager = serverapp.web_app.settings.get("terminal_manager")
        kernels = KernelWatcher(serverapp.kernel_manager, self.tracker, self.log)
        terminals = TerminalWatcher(terminal_manager, self.tracker) if terminal_manager else None
        self.culler = culler = IdleCuller(
            tracker=self.tracker,
            config=self.policy,
            kernels=kernels,
            terminals=terminals,
            kernel_manager=serverapp.kernel_manager,
            terminal_manager=terminal_manager,
            stop_server=self.stop_server,
            log=self.log,
            shutdown_grace=self.shutdown_grace,
            emit=self.emit,
        )
        self._listen_for_kernels(serverapp)
        self._start_sources(serverapp, kernels, terminals)
        culler.processes = self.processes
        if self.processes is not None:
            self.processes.stopping = culler.stopping_ids
        self.log.info("jupyter_idle_ext: %s", culler.describe())
        self._tasks.append(asyncio.create_task(culler.run()))
        IDLE_SECONDS.set_function(
            lambda: max(0.0, self.tracker.clock() - culler.reported_activity())
        )
        SECONDS_TO_SHUTDOWN.set_function(culler.seconds_to_shutdown)
        if self.hub is not None:
            silence_singleuser_reporter(serverapp, self.log)
            self.reporter = HubReporter(
                hub=self.hub,
                tracker=self.tracker,
                last_activity=culler.reported_activity,
                interval=self.hub_activity_interval,
                log=self.log,
            )
            self._tasks.append(asyncio.create_task(self.reporter.run()))

    def _start_sources(
        self, serverapp: Any, kernels: KernelWatcher, terminals: TerminalWatcher | None
    ) -> None:
        """Documents, collaborative edits, proxied apps and processes, each where it exists."""
        counted = ["kernels", "terminals", "document writes"]
        event_logger = getattr(serverapp, "event_logger", None)
        self.sources.append(DocumentWatcher(serverapp.contents_manager, event_logger, self.tracker))
        collaboration = collaboration_watcher(serverapp.web_app, self.tracker)
        if collaboration is not None:
            self.sources.append(collaboration)
            counted.append("collaborative edits")
        self.proxy = proxy_watcher(
            serverapp.web_app, self.tracker, self.proxy_keepalive_patterns, self.log
        )
        if self.proxy is not None:
            self.sources.append(self.proxy)
            apps = ", ".join(self.proxy.apps()) or "ports"
            with_keepalives = ", ".join(sorted(self.proxy.keepalives)) or "none"
            counted.append(
                f"input to apps behind jupyter-server-proxy ({apps}; client keep-alives "
                f"ignored for {with_keepalives})"
            )
        if self.marker is not None:

            def owners() -> dict[int, tuple[str, str]]:
                return {**kernels.pids(), **(terminals.pids() if terminals else {})}

            self.processes = ProcessWatcher(
                tracker=self.tracker,
                marker=self.marker,
                interval=self.process_check_interval,
                cpu_threshold=self.process_cpu_threshold,
                gpu_threshold=self.gpu_utilization_threshold,
                owners=owners,
                log=self.log,
                nvml=load_nvml() if self.gpu_utilization_threshold > 0 else None,
            )
            self.sources.append(self.processes)
            self._tasks.append(asyncio.create_task(self.processes.run()))
            use = []
            if self.process_cpu_threshold > 0:
                use.append(f"CPU >= {self.process_cpu_threshold:g} % of a core")
            if self.processes.gpus is not None and self.processes.gpus.handles:
                use.append(f"GPU >= {self.gpu_utilization_threshold:g} %")
            counted.append(
                f"work of this server's processes ({', '.join(use) or 'no measure on'}, "
                f"checked every {self.process_check_interval:g} s)"
            )
        self.log.info("Counting as activity: %s.", "; ".join(counted))

    # -- surfaces ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document of GET api/idle."""
        if self.culler is None:
            raise web.HTTPError(503, "jupyter_idle_ext is starting")
        if self.reporter is not None:
            note = "reporting execution activity to the Hub"
        elif self.hub_activity_interval <= 0:
            note = "hub_activity_interval is 0"
        else:
            note = "not running under JupyterHub"
        return build_status(
            tracker=self.tracker,
            snapshot=self.culler.take_snapshot(),
            config=self.policy,
            reporter=self.reporter,
            hub_note=note,
            keepalive_cap=self.max_keepalive,
        )

    def grant_keepalive(self, seconds: float) -> dict[str, Any]:
        until = self.tracker.isoformat(self.tracker.keep_alive(seconds))
        self.log.warning(
            "Keep-alive granted: no idle shutdown before %s (%g s)%s.",
            until,
            seconds,
            "; max_server_age still applies" if self.policy.max_server_age > 0 else "",
        )
        KEEPALIVES.labels("granted").inc()
        self.emit(
            {
                "action": "keepalive_granted",
                "kind": "server",
                "id": "",
                "reason": f"a user asked for {seconds:g} s",
                "rule": "keepalive",
                "at": until,
            }
        )
        return {"until": until, "seconds": seconds}

    def cancel_keepalive(self) -> bool:
        cancelled = self.tracker.cancel_keepalive()
        if cancelled:
            self.log.warning("Keep-alive cancelled.")
            KEEPALIVES.labels("cancelled").inc()
            self.emit(
                {
                    "action": "keepalive_cancelled",
                    "kind": "server",
                    "id": "",
                    "reason": "a user cancelled it",
                    "rule": "keepalive",
                }
            )
        return cancelled

    def _listen_for_kernels(self, serverapp: Any) -> None:
        """Look again as soon as a kernel starts, so its own timeout is checked on time."""
        event_logger = getattr(serverapp, "event_logger", None)
        if event_logger is None:
            return

        async def on_kernel_action(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
            self.tracker.changed.set()

        event_logger.add_listener(
            schema_id="https://events.jupyter.org/jupyter_server/kernel_actions/v1",
            listener=on_kernel_action,
        )

    async def stop_server(self, reason: str) -> None:
        """Stop the whole server the way Ctrl-C would: kernels, terminals, extensions, loop.

        Under a Hub that lets the server stop itself, ask the Hub first, so it records the stop
        at once instead of at its next poll."""
        assert self.serverapp is not None
        if self.reporter is not None:
            # the Hub stops us with a signal, which jupyter_server handles: that is the stop
            await self.reporter.stop_server()
        # from here a SIGTERM or Ctrl-C would only race the cleanup under way, or kill the
        # process with -15 while it exits; the watchdog bounds the exit anyway
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
                signal.signal(sig, signal.SIG_IGN)
        self.serverapp.stop()

    async def stop_extension(self) -> None:
        # runs inside jupyter_server's cleanup, also for an extension that was never started:
        # nothing may escape, or the server's own cleanup (its kernels) would be cut short
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.marker is not None and os.environ.get(ENV_MARKER) == self.marker:
            # processes started from now on are no longer this server's
            del os.environ[ENV_MARKER]
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            # simpervisor stops them only on a signal, which an idle shutdown is not
            try:
                await proxy.stop_apps()
            except Exception:
                self.log.exception("Error while stopping the proxied apps")
        closing = [self.culler] if self.culler is not None else []
        closing += self.sources
        self.sources = []
        for part in closing:
            try:
                part.close()
            except Exception:
                self.log.exception("Error while stopping")
