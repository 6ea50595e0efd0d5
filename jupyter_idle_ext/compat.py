"""Everything borrowed from the insides of jupyter_server, terminado, jupyterhub and
jupyter-server-proxy, in one place: each piece is probed once at start, and when one is missing a
WARNING names the capability lost and the behaviour falls to the safe side: never cull more.

| borrowed | for | when it is missing |
|---|---|---|
| ``MappingKernelManager._kernel_connections`` | open connections per kernel, cheaply | the kernel model's public ``connections``; without that, unknown, and a kernel counts as connected when ``cull_connected`` is off |
| ``kernel._activity_stream`` and ``ZMQStream._recv_callback`` | guarding jupyter_server's IOPub watcher against a malformed message (which stops it for good) | unguarded: one malformed message freezes that kernel's activity |
| ``TerminalManager.pre_pty_read_hook`` | a terminal's input and output | terminals are never culled, and typing in them is not seen |
| ``JupyterHubSingleUser.hub_activity_interval`` and ``._activity_task`` | switching jupyterhub-singleuser's own reporter off, so ours is the only one | a WARNING with the one-line setting that does it |
| ``ExtensionManager.start_all_extensions`` (jupyter_server >= 2.16) | the start hook, once the event loop runs | the extension starts from ``IOLoop.add_callback`` instead |
| the ``kernel_websocket_connection_class`` setting and ``GatewayWebSocketConnection``'s ``connect``, ``disconnect``, ``handle_outgoing_message`` | a gateway kernel's messages and open connections | gateway kernels are not followed: never culled, and they keep the server up to ``max_busy_time`` |
| the routes' ``target_kwargs`` of jupyter-server-proxy (``state["proc"]``, ``server_processes``) | the apps to stop, and their names | the apps are not stopped (as before) |
"""

from __future__ import annotations

from typing import Any, Callable

from jupyter_server.extension.manager import ExtensionManager

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


def pty_read_hook(terminal_manager: Any, capabilities: Capabilities) -> bool:
    """Whether the terminal manager lets the extension see each terminal's input and output."""
    if hasattr(terminal_manager, "pre_pty_read_hook"):
        return True
    capabilities.lose(
        "Terminal activity cannot be seen (TerminalManager.pre_pty_read_hook is gone)",
        "terminals are never culled, and typing in one does not delay the idle shutdown",
    )
    return False


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


def watches_iopub(kernel: Any) -> bool | None:
    """Whether jupyter_server's IOPub watcher follows a local kernel: True, False (its kernel
    manager never started one), or None while the kernel is still starting."""
    ready = getattr(kernel, "ready", None)
    if ready is not None and hasattr(ready, "done") and not ready.done():
        return None
    if not getattr(kernel, "has_kernel", True):
        return None
    return getattr(kernel, "_activity_stream", None) is not None
