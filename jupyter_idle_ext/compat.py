"""Everything borrowed from the insides of jupyter_server, terminado, jupyterhub and
jupyter-server-proxy, in one place: each piece is probed once at start, and when one is missing a
WARNING names the capability lost and the behaviour falls to the safe side: never cull more.
Every change to another package's object goes through here (``replace_method``,
``ObservedRoutes``, ``observe_gateway_relay``): the sources say what they want to see, this module
how it is reached, and each change is undone when the extension stops.

| borrowed | for | when it is missing |
|---|---|---|
| ``MappingKernelManager._kernel_connections`` | open connections per kernel, cheaply | the kernel model's public ``connections``; without that, unknown, and a kernel counts as connected when ``cull_connected`` is off |
| ``kernel._activity_stream`` and ``ZMQStream._recv_callback`` | guarding jupyter_server's IOPub watcher against a malformed message (which stops it for good) | unguarded: one malformed message freezes that kernel's activity |
| ``TerminalManager.pre_pty_read_hook`` | a terminal's input and output | terminals are never culled, and typing in them is not seen |
| a kernel's ``execution_state`` trait, set to "starting" after an automatic restart | a kernel that crashed mid-cell is not busy forever | (a trait of every kernel jupyter_server manages) |
| ``MappingKernelManager.start_watching_activity`` | guarding the IOPub watcher again after a kernel restarts | a restarted kernel's watcher is unguarded |
| the contents manager's ``emit``, ``save``, ``rename``, ``copy`` and ``delete`` | document writes | the writes through a missing method do not count (``emit`` alone: each write is read at its method) |
| tornado's ``RuleRouter.rules`` and ``Rule.target`` of the routes of ``YDocWebSocketHandler`` and of jupyter-server-proxy's handlers | typing in a collaborative document, input to a proxied app | not seen: only document saves count, and the apps count as processes of this server |
| ``JupyterHubSingleUser.hub_activity_interval`` and ``._activity_task`` | switching jupyterhub-singleuser's own reporter off, so ours is the only one | a WARNING with the one-line setting that does it |
| ``ExtensionManager.start_all_extensions`` (jupyter_server >= 2.16) | the start hook, once the event loop runs | the extension starts from ``IOLoop.add_callback`` instead |
| the ``kernel_websocket_connection_class`` setting and ``GatewayWebSocketConnection``'s ``connect``, ``disconnect``, ``handle_outgoing_message`` | a gateway kernel's messages and open connections | gateway kernels are not followed: never culled, and they keep the server up to ``max_busy_time`` |
| the routes' ``target_kwargs`` of jupyter-server-proxy (``state["proc"]``, ``server_processes``) | the apps to stop, and their names | the apps are not stopped (as before) |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from jupyter_server.extension.manager import ExtensionManager
from tornado.routing import Rule, RuleRouter

try:  # what a local kernel's is_alive does, read directly where it is exactly that
    from jupyter_client.manager import AsyncKernelManager as _AsyncKernelManager
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner as _LocalProvisioner

    _LOCAL_POLL = callable(getattr(_LocalProvisioner, "poll", None))
except ImportError:  # pragma: no cover - jupyter_client always has them since 7.1
    _LOCAL_POLL = False

KernelConnections = Callable[[str], "int | None"]


class Capabilities:
    """What works here, and the WARNING for what does not, each said once."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.lost: dict[str, str] = {}

    def lose(self, capability: str, consequence: str) -> None:
        if capability not in self.lost:
            self.lost[capability] = consequence
            if self.log is not None:
                self.log.warning("%s: %s.", capability, consequence)


def has_start_hook() -> bool:
    """jupyter_server 2.16 and later start extensions once the event loop runs."""
    return hasattr(ExtensionManager, "start_all_extensions")


def kernel_connections(km: Any, capabilities: Capabilities) -> KernelConnections:
    """How many websocket connections each kernel has (None: cannot be known)."""
    counts = getattr(km, "_kernel_connections", None)
    if isinstance(counts, dict):
        return lambda kernel_id: int(counts.get(kernel_id, 0))
    model = getattr(km, "kernel_model", None)
    if callable(model):
        capabilities.lose(
            "Kernel connections are read through the kernel model",
            "MappingKernelManager._kernel_connections is gone; this is slower",
        )

        def from_model(kernel_id: str) -> int | None:
            try:
                return int(model(kernel_id).get("connections", 0))
            except Exception:
                return None

        return from_model
    capabilities.lose(
        "Kernel connections cannot be known",
        "every kernel counts as connected, so with cull_connected off none is culled",
    )
    return lambda kernel_id: None


def polls_locally(kernel: Any) -> bool:
    """Whether a kernel's is_alive is jupyter_client's own (not a custom kernel manager's, and
    the kernel is this server's to poll): then ``local_process`` may stand in for it."""
    return (
        _LOCAL_POLL
        and getattr(type(kernel), "is_alive", None) is _AsyncKernelManager.is_alive
        and bool(getattr(kernel, "owns_kernel", True))
    )


def local_process(kernel: Any) -> Any:
    """For a kernel that ``polls_locally``: the ``subprocess.Popen`` of its local process, whose
    ``poll()`` is what ``AsyncKernelManager.is_alive`` ends in (without its two coroutines: the
    check at 1,000 kernels polls each one); None for any other provisioner (remote, custom, not
    started), which is polled through ``is_alive``."""
    provisioner = getattr(kernel, "provisioner", None)
    if type(provisioner) is not _LocalProvisioner:
        return None
    return provisioner.process


def guard_iopub_watcher(kernel: Any, kernel_id: str, log: Any, capabilities: Capabilities) -> None:
    """Keep jupyter_server's IOPub watcher alive through a malformed message.

    pyzmq does not re-arm a stream whose callback raised, so one malformed message would freeze
    the ``last_activity`` and ``execution_state`` traits the extension follows."""
    stream = getattr(kernel, "_activity_stream", None)
    callback = getattr(stream, "_recv_callback", None)
    if stream is None or callback is None or not hasattr(stream, "on_recv"):
        if getattr(kernel, "has_kernel", True):
            capabilities.lose(
                "jupyter_server's IOPub watcher cannot be guarded",
                "a malformed message from a kernel would stop its activity being seen",
            )
        return
    if getattr(callback, "_idle_ext_guarded", False):
        return

    def guarded(msg_list: Any) -> None:
        try:
            callback(msg_list)
        except Exception as e:
            log.debug("Ignoring a malformed IOPub message from kernel %s: %s", kernel_id, e)

    guarded._idle_ext_guarded = True  # type: ignore[attr-defined]
    stream.on_recv(guarded)


Undo = Callable[[], None]


def replace_method(
    obj: Any,
    name: str,
    make: Callable[[Callable[..., Any]], Callable[..., Any]],
    capabilities: Capabilities,
    lost: tuple[str, str] | None = None,
) -> Undo | None:
    """Replace ``obj.name`` on this object only (an instance attribute over its class's method)
    by ``make(original)``; return what puts the original back. When ``obj`` has no such method,
    None, and the WARNING ``lost`` (capability, consequence) when given."""
    original = getattr(obj, name, None)
    if not callable(original):
        if lost is not None:
            capabilities.lose(*lost)
        return None
    own = vars(obj)
    had_own, before = name in own, own.get(name)
    setattr(obj, name, make(original))

    def undo() -> None:
        if had_own:
            setattr(obj, name, before)
        else:
            vars(obj).pop(name, None)

    return undo


def watch_pty_reads(
    terminal_manager: Any,
    make: Callable[[Callable[..., Any]], Callable[..., Any]],
    capabilities: Capabilities,
) -> Undo | None:
    """Follow each terminal's pty output (which includes the echo of every typed key) through
    jupyter_server_terminals' ``pre_pty_read_hook``."""
    return replace_method(
        terminal_manager,
        "pre_pty_read_hook",
        make,
        capabilities,
        lost=(
            "Terminal activity cannot be seen (TerminalManager.pre_pty_read_hook is gone)",
            "terminals are never culled, and typing in one does not delay the idle shutdown",
        ),
    )


def _rules(router: RuleRouter) -> Iterator[Rule]:
    for rule in router.rules:
        if isinstance(rule.target, RuleRouter):
            yield from _rules(rule.target)
        else:
            yield rule


def handler_rules(web_app: Any, base: type) -> list[Rule]:
    """Every route of the web app whose handler class is ``base`` or a subclass."""
    found = []
    for router in (web_app.default_router, web_app.wildcard_router):
        for rule in _rules(router):
            if isinstance(rule.target, type) and issubclass(rule.target, base):
                found.append(rule)
    return found


def route_kwargs(web_app: Any, base: type) -> list[dict[str, Any]]:
    """The keyword arguments each route of a ``base`` handler is made with (jupyter-server-proxy
    keeps its apps' processes and names there)."""
    return [dict(rule.target_kwargs or {}) for rule in handler_rules(web_app, base)]


class ObservedRoutes:
    """The routes of ``base`` handlers, each pointed at ``observe(original class)``.

    To see the person's input to a collaborative document or a proxied app, the extension needs
    the messages those handlers receive, which no public hook offers. Rather than patching a class
    that other servers in the process share, each route of this server whose handler is a
    subclass of ``base`` gets a subclass made by ``observe``, through tornado's public routing API
    (``RuleRouter.rules``, ``Rule.target``). ``close`` puts the original classes back."""

    def __init__(self, web_app: Any, base: type, observe: Callable[[type], type]) -> None:
        self._originals: list[tuple[Rule, type]] = []
        made: dict[type, type] = {}
        for rule in handler_rules(web_app, base):
            original = rule.target
            if original not in made:
                made[original] = observe(original)
            self._originals.append((rule, original))
            rule.target = made[original]

    def __len__(self) -> int:
        return len(self._originals)

    def close(self) -> None:
        for rule, original in self._originals:
            rule.target = original
        self._originals = []


def silence_singleuser_reporter(serverapp: Any, log: Any, capabilities: Capabilities) -> bool:
    """Switch jupyterhub-singleuser's own activity reporter off; True when one was found.

    It posts ``web_app.last_activity()``, which counts REST polling; since the Hub never moves a
    timestamp back, one post of it would undo ours. Its loop reads ``hub_activity_interval`` when
    it starts (0 makes it return), and a loop already running is cancelled.
    """
    found = False
    for point in serverapp.extension_manager.extension_points.values():
        app = getattr(point, "app", None)
        if app is None or not hasattr(app, "keep_activity_updated"):
            continue
        found = True
        if "hub_activity_interval" not in getattr(app, "trait_names", list)():
            capabilities.lose(
                "jupyterhub-singleuser's activity reporter cannot be switched off",
                "two reporters post, and the Hub keeps the later of the two (REST polling "
                "counts); set c.JupyterHubSingleUser.hub_activity_interval = 0",
            )
            continue
        app.hub_activity_interval = 0
        if not hasattr(type(app), "_activity_task") and not hasattr(app, "_activity_task"):
            capabilities.lose(
                "jupyterhub-singleuser's running activity reporter cannot be found",
                "it may go on posting; set c.JupyterHubSingleUser.hub_activity_interval = 0",
            )
            continue
        task = getattr(app, "_activity_task", None)
        if task is not None and not task.done():
            task.cancel()
    if found:
        log.info("Switched off jupyterhub-singleuser's activity reporter")
    return found


def is_gateway_kernel(kernel: Any) -> bool:
    """Whether a kernel runs on a gateway (jupyter_server's ``--gateway-url``)."""
    try:
        from jupyter_server.gateway.managers import GatewayKernelManager
    except ImportError:  # pragma: no cover - part of jupyter_server
        return False
    return isinstance(kernel, GatewayKernelManager)


def is_gateway_manager(kernel_manager: Any) -> bool:
    """Whether the server's kernels run on a gateway."""
    try:
        from jupyter_server.gateway.managers import GatewayMappingKernelManager
    except ImportError:  # pragma: no cover - part of jupyter_server
        return False
    return isinstance(kernel_manager, GatewayMappingKernelManager)


def observe_gateway_relay(
    web_app: Any, observe: Callable[[type], type], capabilities: Capabilities
) -> Callable[[], None] | None:
    """Point this server's kernel websocket connections at ``observe(their class)``, which sees
    what the gateway sends each tab; returns what puts the original back, or None when the
    relay cannot be observed."""
    from jupyter_server.gateway.connections import GatewayWebSocketConnection

    settings = web_app.settings
    original = settings.get("kernel_websocket_connection_class")
    methods = ("connect", "disconnect", "handle_outgoing_message")
    if (
        not isinstance(original, type)
        or not issubclass(original, GatewayWebSocketConnection)
        or not all(callable(getattr(original, m, None)) for m in methods)
    ):
        capabilities.lose(
            "Activity of kernels on the gateway cannot be seen (the server does not relay them "
            "through GatewayWebSocketConnection)",
            "they are never culled, and keep the server up until max_busy_time",
        )
        return None
    settings["kernel_websocket_connection_class"] = observe(original)

    def restore() -> None:
        settings["kernel_websocket_connection_class"] = original

    return restore


def reset_execution_state(kernel: Any) -> None:
    """After an automatic restart: jupyter_server's ``execution_state`` of the kernel back to
    "starting" (a crash mid-cell leaves it "busy" forever: no "idle" comes from the dead
    process, and the restarted one's status messages move it on)."""
    if hasattr(kernel, "execution_state"):
        kernel.execution_state = "starting"


def watches_iopub(kernel: Any) -> bool | None:
    """Whether jupyter_server's IOPub watcher follows a local kernel: True, False (its kernel
    manager never started one), or None while the kernel is still starting."""
    ready = getattr(kernel, "ready", None)
    if ready is not None and hasattr(ready, "done") and not ready.done():
        return None
    if not getattr(kernel, "has_kernel", True):
        return None
    return getattr(kernel, "_activity_stream", None) is not None
