"""The server extension: configuration, start-up and the wiring of activity, policy and actions."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Bool, Float, TraitError, default, validate
from traitlets.traitlets import DefaultHandler

from .activity import ActivityTracker, KernelWatcher, TerminalWatcher
from .culler import IdleCuller
from .events import emit_event, register_schema
from .handlers import default_handlers
from .hub import HubEnvironment, HubReporter, silence_singleuser_reporter
from .metrics import IDLE_SECONDS, KEEPALIVES, SECONDS_TO_SHUTDOWN
from .policy import PolicyConfig
from .status import build_status

ENV_PREFIX = "JUPYTER_IDLE_"
SETTINGS_KEY = "jupyter_idle_ext_tracker"

#: static defaults of the options that read an environment variable
DEFAULTS: dict[str, Any] = {
    "cull_idle_timeout": 3600.0,
    "cull_interval": 300.0,
    "cull_connected": True,
    "cull_busy": False,
    "max_busy_time": 0.0,
    "terminal_idle_timeout": None,
    "server_idle_timeout": 3600.0,
    "max_server_age": 0.0,
    "shutdown_warning": None,
    "shutdown_grace": 30.0,
    "hub_activity_interval": 300.0,
    "max_keepalive": 3600.0,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# options in seconds where 0 disables the rule, and those that must be above 0
SECONDS_OPTIONS = (
    "cull_idle_timeout",
    "max_busy_time",
    "terminal_idle_timeout",
    "server_idle_timeout",
    "max_server_age",
    "shutdown_warning",
    "hub_activity_interval",
    "max_keepalive",
)
POSITIVE_OPTIONS = ("cull_interval", "shutdown_grace")


def check_seconds(option: str, value: float | None) -> float | None:
    """The value of a seconds option, or a TraitError that names the option and the allowed values."""
    if value is None and option in ("terminal_idle_timeout", "shutdown_warning"):
        return None
    positive = option in POSITIVE_OPTIONS
    if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
        allowed = "> 0" if positive else ">= 0 (0 disables it)"
        raise TraitError(
            f"IdleExtension.{option} must be a number of seconds {allowed}, not {value!r}"
        )
    return float(value)


class Seconds(Float):  # type: ignore[type-arg]
    """A Float whose type errors name the option the way our range errors do."""

    def error(self, obj: Any, value: Any, error: Any = None, info: Any = None) -> Any:
        raise TraitError(
            f"IdleExtension.{self.name} must be a number of seconds, "
            f"not the {type(value).__name__} {value!r}"
        )


class Flag(Bool):  # type: ignore[type-arg]
    """A Bool whose type errors name the option."""

    def error(self, obj: Any, value: Any, error: Any = None, info: Any = None) -> Any:
        raise TraitError(
            f"IdleExtension.{self.name} must be true or false, not the {type(value).__name__} {value!r}"
        )


def env_name(option: str) -> str:
    """The environment variable that sets the default of an option."""
    return ENV_PREFIX + option.upper()


def _env_default(option: str) -> DefaultHandler:
    """A traitlets dynamic default that reads the option's environment variable at first use."""
    handler: DefaultHandler = default(option)(lambda self: self._from_env(option))
    return handler


def _seconds_help(text: str, option: str, zero: str = "disables it") -> str:
    return f"{text} Seconds; 0 {zero}. Default from ${env_name(option)}."


class IdleExtension(ExtensionApp):
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

    cull_idle_timeout = Seconds(
        config=True,
        help=_seconds_help(
            "Cull a kernel after this long without activity (default 3600). A kernelspec's "
            "metadata.cull_idle_timeout overrides it for that kernel, where 0 means never.",
            "cull_idle_timeout",
            "never culls kernels",
        ),
    )
    cull_interval = Seconds(
        config=True,
        help=(
            "The longest wait between two checks (default 300); checks also happen at each "
            "deadline, so nothing is culled late. Seconds, must be > 0. "
            f"Default from ${env_name('cull_interval')}."
        ),
    )
    cull_connected = Flag(
        config=True,
        help=(
            "Cull idle kernels even while a browser tab is connected to them (default True): an "
            "open tab is not activity. Default from "
            f"${env_name('cull_connected')} (true/false)."
        ),
    )
    cull_busy = Flag(
        config=True,
        help=(
            "Cull kernels by idle time even while they execute (default False: a busy kernel "
            f"is working). Default from ${env_name('cull_busy')} (true/false)."
        ),
    )
    max_busy_time = Seconds(
        config=True,
        help=_seconds_help(
            "After a kernel has been busy this long it counts as stuck: being busy no longer "
            "protects it or the server, and it is culled once idle (default 0).",
            "max_busy_time",
            "means no cap: a busy kernel is never culled",
        ),
    )
    terminal_idle_timeout = Seconds(
        None,
        allow_none=True,
        config=True,
        help=_seconds_help(
            "Cull a terminal after this long without input or output (default: cull_idle_timeout).",
            "terminal_idle_timeout",
            "never culls terminals",
        ),
    )
    server_idle_timeout = Seconds(
        config=True,
        help=_seconds_help(
            "Shut the server down after this long without any activity, whatever tabs are open "
            "and whether kernels still exist (default 3600).",
            "server_idle_timeout",
        ),
    )
    max_server_age = Seconds(
        config=True,
        help=_seconds_help(
            "Shut the server down at this age even if it is active (default 0).",
            "max_server_age",
        ),
    )
    shutdown_warning = Seconds(
        None,
        allow_none=True,
        config=True,
        help=_seconds_help(
            "Log a WARNING this long before any shutdown (default: a tenth of the shortest "
            "shutdown timeout, at most 300). Must be shorter than the shutdown timeouts.",
            "shutdown_warning",
            "means no warning",
        ),
    )
    shutdown_grace = Seconds(
        config=True,
        help=(
            "After an idle shutdown starts, the process exits with code 0 at the latest this many "
            "seconds later, even if a websocket or an extension holds it up (default 30). "
            f"Seconds, must be > 0. Default from ${env_name('shutdown_grace')}."
        ),
    )

    hub_activity_interval = Seconds(
        config=True,
        help=(
            "Under JupyterHub, report the execution-aware last activity to the Hub this often, "
            "and only when it changed (default 300, jittered); jupyterhub-singleuser's own "
            "reporter, which counts REST polling, is switched off. Seconds; 0 disables our "
            f"reporter and leaves jupyterhub-singleuser's alone. Default from "
            f"${env_name('hub_activity_interval')}, else $JUPYTERHUB_ACTIVITY_INTERVAL."
        ),
    )

    max_keepalive = Seconds(
        config=True,
        help=_seconds_help(
            "The longest keep-alive a user may ask for with POST api/idle/keepalive (default "
            "3600). A keep-alive holds off the idle shutdown, never max_server_age.",
            "max_keepalive",
            "disables keep-alives (the endpoint answers 403)",
        ),
    )

    _default_cull_idle_timeout = _env_default("cull_idle_timeout")
    _default_cull_interval = _env_default("cull_interval")
    _default_cull_connected = _env_default("cull_connected")
    _default_cull_busy = _env_default("cull_busy")
    _default_max_busy_time = _env_default("max_busy_time")
    _default_terminal_idle_timeout = _env_default("terminal_idle_timeout")
    _default_server_idle_timeout = _env_default("server_idle_timeout")
    _default_max_server_age = _env_default("max_server_age")
    _default_shutdown_warning = _env_default("shutdown_warning")
    _default_shutdown_grace = _env_default("shutdown_grace")
    _default_hub_activity_interval = _env_default("hub_activity_interval")
    _default_max_keepalive = _env_default("max_keepalive")

    def _from_env(self, option: str) -> Any:
        fallback = DEFAULTS[option]
        variable = env_name(option)
        raw = os.environ.get(variable, "").strip()
        if not raw and option == "hub_activity_interval":
            # the admin's setting for jupyterhub-singleuser's reporter, which ours replaces
            variable = "JUPYTERHUB_ACTIVITY_INTERVAL"
            raw = os.environ.get(variable, "").strip()
        if not raw:
            return fallback
        trait = self.traits()[option]
        if isinstance(trait, Bool):
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise TraitError(
                f"IdleExtension.{option}: ${variable}={raw!r} is not a boolean (use true or false)"
            )
        try:
            return float(raw)
        except ValueError:
            raise TraitError(
                f"IdleExtension.{option}: ${variable}={raw!r} is not a number of seconds"
            ) from None

    @validate(*SECONDS_OPTIONS, *POSITIVE_OPTIONS)
    def _validate_seconds(self, proposal: Any) -> float | None:
        return check_seconds(proposal["trait"].name, proposal["value"])

    # -- configuration -----------------------------------------------------------------------

    def policy_config(self) -> PolicyConfig:
        """Read and cross-check every option; raises TraitError naming the option at fault.

        Values from environment variables and defaults never pass through ``@validate``
        (traitlets only validates values that are set), so every option is checked here again.
        """
        for option in (*SECONDS_OPTIONS, *POSITIVE_OPTIONS):
            check_seconds(option, getattr(self, option))
        shutdown_timeouts = [t for t in (self.server_idle_timeout, self.max_server_age) if t > 0]
        warning: float | None = self.shutdown_warning
        if warning is None:
            warning = (
                min([300.0, *[t / 10 for t in shutdown_timeouts]]) if shutdown_timeouts else 0.0
            )
        for option in ("server_idle_timeout", "max_server_age"):
            timeout = getattr(self, option)
            if warning and timeout and warning >= timeout:
                raise TraitError(
                    f"IdleExtension.shutdown_warning ({warning:g} s) must be shorter than "
                    f"IdleExtension.{option} ({timeout:g} s), or 0 for no warning"
                )
        return PolicyConfig(
            cull_idle_timeout=self.cull_idle_timeout,
            cull_interval=self.cull_interval,
            cull_connected=self.cull_connected,
            cull_busy=self.cull_busy,
            max_busy_time=self.max_busy_time,
            terminal_idle_timeout=self.terminal_idle_timeout,
            server_idle_timeout=self.server_idle_timeout,
            max_server_age=self.max_server_age,
            shutdown_warning=warning,
        )

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        # jupyter_server logs a failing extension and runs on without it; for an idle culler that
        # means silently paying for idle servers, so a bad option stops the server instead.
        try:
            super()._link_jupyter_server_extension(serverapp)
            self.policy = self.policy_config()
            # read now, so a bad value fails at start
            self.shutdown_grace  # noqa: B018
            self.max_keepalive  # noqa: B018
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
        try:
            if self.culler is not None:
                self.culler.close()
        except Exception:
            self.log.exception("Error while stopping")
