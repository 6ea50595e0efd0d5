"""The server extension: its life cycle, and the wiring of activity, policy, actions and surfaces.

Link reads and checks the options (options.py); load marks the environment for the process
source and adds the handlers; start follows kernels, terminals and the other sources, and starts
the check loop and the Hub reporter; stop undoes all of it. A failure at any stage stops the
server with a CRITICAL line (jupyter_server would log a warning and run on without us, which for
an idle culler means paying for idle servers), unless ``fail_open`` says to run on without culling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import TraitError

from .activity import ActivityTracker
from .compat import Capabilities, has_start_hook, silence_singleuser_reporter
from .culler import IdleCuller
from .events import emit_event, register_schema
from .handlers import default_handlers
from .hub import HubEnvironment, HubReporter
from .keepalive import Keepalive, StopWhenDone
from .metrics import IDLE_SECONDS, SECONDS_TO_SHUTDOWN, USAGE, Usage, server_labels
from .options import IdleOptions
from .policy import stop_when_done_delay
from .shutdown import exit_promptly, exit_with, stop_server
from .sources import Context, Sources, start_sources
from .sources.api import SETTINGS_KEY
from .sources.kernels import KernelWatcher
from .sources.processes import ENV_MARKER, mark_environment
from .sources.terminals import TerminalWatcher
from .status import build_status
from .unsaved import Unsaved

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
# how many of the latest actions the status document lists
RECENT = 20
# how long the stop waits for the check loop and the Hub reporter to end once cancelled
STOP_WAIT = 5.0
# how long an idle stop waits for open pages to save what they hold unsaved (at most half of
# shutdown_grace); then the server saves from the copies the pages sent
SAVE_WAIT = 15.0


class IdleExtension(IdleOptions, ExtensionApp):
    """Culls idle kernels and terminals and stops an idle server, judging by what the user does
    and what the user's code is doing."""

    name = "jupyter_idle_ext"
    description = __doc__
    load_other_extensions = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # set here, not at load or start, so that every life-cycle hook works whatever stage
        # the extension reached (jupyter_server stops extensions that were only linked when a
        # later start-up step fails)
        self.tracker = ActivityTracker()
        self.capabilities = Capabilities(self.log)
        self.hub: HubEnvironment | None = None
        self.culler: IdleCuller | None = None
        self.reporter: HubReporter | None = None
        self.keepalive: Keepalive | None = None
        self.stop_when_done: StopWhenDone | None = None
        self.unsaved: Unsaved | None = None
        # the latest actions, newest first, for the status document (a tab shows the last cull)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.sources = Sources()
        self.marker: str | None = None
        # why the extension is not running, when it failed and fail_open kept the server up
        self.failed: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # what the start registered with process-wide objects, undone at stop
        self._undo: list[Callable[[], None]] = []

    # -- failing closed ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _fatal(self, stage: str, server_log: Any = None) -> Iterator[None]:
        # at link our own logger is not set up yet: the server's then, which must name us
        log = server_log or self.log
        us = "jupyter_idle_ext: " if server_log is not None else ""
        try:
            yield
        except SystemExit:
            raise
        except TraitError as e:
            self._give_up(stage, f"{us}invalid configuration: {e}", log, exc_info=False)
        except Exception as e:
            self._give_up(stage, f"{us}could not {stage}: {type(e).__name__}: {e}", log)

    def _give_up(self, stage: str, why: str, log: Any, exc_info: bool = True) -> None:
        """One CRITICAL line: what failed, and what happens now."""
        self.failed = why
        if self.fail_open:
            log.critical(
                "%s. Running WITHOUT idle culling or idle shutdown: IdleExtension.fail_open is on.",
                why,
                exc_info=exc_info,
            )
            return
        log.critical(
            "%s. Stopping the server: an idle culler that silently does not run costs money "
            "(IdleExtension.fail_open = True runs on without it).",
            why,
            exc_info=exc_info,
        )
        if stage != "start":
            raise SystemExit(1)
        # inside the running server: stop it properly, then exit with 1
        assert self.serverapp is not None
        exit_with(1, log)
        exit_promptly(asyncio.get_running_loop(), self.shutdown_grace, log, code=1)
        self.serverapp.stop()

    # -- life cycle --------------------------------------------------------------------------

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        with self._fatal("link", serverapp.log):
            super()._link_jupyter_server_extension(serverapp)
            self.policy = self.policy_config(serverapp.log)
            self.hub = HubEnvironment.from_environ() if self.hub_activity_interval > 0 else None
            if self.hub is not None:
                # before jupyterhub-singleuser's reporter makes its first post at start-up
                silence_singleuser_reporter(serverapp, self.log, self.capabilities)

    def initialize(self, argv: Any = None) -> None:
        # the load stage: jupyter_server's _load_jupyter_server_extension calls this
        if self.failed:
            return
        with self._fatal("load"):
            super().initialize()
            if not has_start_hook():
                # jupyter_server < 2.16 never calls the start hook: start once the loop runs
                serverapp: Any = self.serverapp
                serverapp.io_loop.add_callback(self._start_jupyter_server_extension, serverapp)

    def initialize_settings(self) -> None:
        self.settings[SETTINGS_KEY] = self.tracker
        if self.process_check_interval > 0:
            # before any kernel, terminal or app starts: each inherits it
            self.marker = mark_environment()
        register_schema(self.serverapp)

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.culler is not None or self.failed:
            return  # started already, or failed
        with self._fatal("start"):
            self._start(serverapp)

    def _start(self, serverapp: Any) -> None:
        self.tracker.serving()
        context = Context(
            options=self,
            serverapp=serverapp,
            tracker=self.tracker,
            capabilities=self.capabilities,
            log=self.log,
            marker=self.marker,
            stopping=lambda: self.culler.stopping_ids() if self.culler is not None else set(),
        )
        self.sources = start_sources(context)
        kernels = self.sources.get("kernels")
        terminals = self.sources.get("terminals")
        assert isinstance(kernels, KernelWatcher)
        assert terminals is None or isinstance(terminals, TerminalWatcher)
        self.unsaved = unsaved = Unsaved(
            serverapp.contents_manager,
            self.log,
            saving=self.tracker.set_saving_for_stop,
        )

        async def stop(reason: str) -> None:
            try:
                await unsaved.save_before_stop(min(SAVE_WAIT, self.shutdown_grace / 2))
            except Exception:
                self.log.exception("Could not save the unsaved documents before the stop")
            await stop_server(serverapp, self.reporter, self.log)

        self.culler = culler = IdleCuller(
            tracker=self.tracker,
            config=self.policy,
            kernels=kernels,
            terminals=terminals,
            kernel_manager=serverapp.kernel_manager,
            terminal_manager=getattr(terminals, "tm", None),
            stop_server=stop,
            unsaved=unsaved.note,
            log=self.log,
            shutdown_grace=self.shutdown_grace,
            emit=self.emit,
            sources=self.sources.all,
        )
        if self.hub is not None:
            silence_singleuser_reporter(serverapp, self.log, self.capabilities)
            self.reporter = HubReporter(
                hub=self.hub,
                tracker=self.tracker,
                interval=self.hub_activity_interval,
                log=self.log,
                last_activity=culler.reported_activity,
            )
        self.keepalive = Keepalive(
            self.tracker,
            max_server_age=self.policy.max_server_age,
            emit=self.emit,
            log=self.log,
        )
        self.stop_when_done = StopWhenDone(
            self.tracker,
            delay=stop_when_done_delay(self.policy),
            emit=self.emit,
            log=self.log,
        )
        event_logger = getattr(serverapp, "event_logger", None)
        if event_logger is not None:
            # look again as soon as a kernel starts, so its own timeout is checked on time
            event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        labels = server_labels()
        IDLE_SECONDS.labels(*labels).set_function(culler.idle_seconds)
        SECONDS_TO_SHUTDOWN.labels(*labels).set_function(culler.seconds_to_shutdown)
        self._undo.append(USAGE.attach(Usage(culler.kept_by, labels)))
        self.log.info("%s", culler.describe())
        self._tasks.append(asyncio.create_task(culler.run()))
        if self.reporter is not None:
            self._tasks.append(asyncio.create_task(self.reporter.run()))

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        self.tracker.changed.set()

    def emit(self, data: dict[str, Any]) -> None:
        self.recent.appendleft({**data, "time": self.tracker.isoformat(self.tracker.clock())})
        emit_event(self.serverapp, data, self.log)

    async def status(self) -> dict[str, Any]:
        """The status document of GET api/idle, from the loop's latest check."""
        if self.failed:
            raise web.HTTPError(503, f"jupyter_idle_ext is not running ({self.failed})")
        current = self.culler.current() if self.culler is not None else None
        if current is None:
            raise web.HTTPError(503, "jupyter_idle_ext is starting")
        snapshot, plan = current
        if self.reporter is not None:
            note = "reporting activity to the Hub"
        elif self.hub_activity_interval <= 0:
            note = "hub_activity_interval is 0"
        else:
            note = "not running under JupyterHub"
        return build_status(
            tracker=self.tracker,
            snapshot=snapshot,
            plan=plan,
            now=self.tracker.clock(),
            config=self.policy,
            reporter=self.reporter,
            hub_note=note,
            keepalive_cap=self.max_keepalive,
            ceilings=self.ceilings(),
            lost=self.capabilities.lost,
            recent=list(self.recent),
            unsaved=self.unsaved.status() if self.unsaved is not None else None,
        )

    async def stop_extension(self) -> None:
        # runs inside jupyter_server's cleanup, also for an extension that was never started:
        # nothing may escape, or the server's own cleanup (its kernels) would be cut short
        tasks, self._tasks = self._tasks, []
        running = asyncio.get_running_loop()
        for task in tasks:
            task.cancel()
        ours = [task for task in tasks if task.get_loop() is running]
        if ours:
            # bounded: a task that cannot end (its loop stalled in a test harness) must not
            # hang the server's cleanup; a task on a loop that no longer runs is not waited for
            await asyncio.wait(ours, timeout=STOP_WAIT)
        if self.marker is not None and os.environ.get(ENV_MARKER) == self.marker:
            # processes started from now on are no longer this server's
            del os.environ[ENV_MARKER]
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        if self.culler is not None:
            try:
                self.culler.close()
            except Exception:
                self.log.exception("Error while stopping the check loop")
        sources, self.sources = self.sources, Sources()
        await sources.stop(self.log)
