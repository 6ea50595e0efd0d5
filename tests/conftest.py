"""Fixtures: an in-process jupyter_server with the extension started, on short timeouts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Timeouts short enough for a fast suite, long enough for a kernel to start on a busy CI machine.
# In-process servers never shut down (that would end pytest): server rules are tested on real
# server processes (tests/servers.py).
IN_PROCESS = {
    "cull_idle_timeout": 3.0,
    "cull_interval": 300.0,
    "server_idle_timeout": 0.0,
    "max_server_age": 0.0,
}


@pytest.fixture
def idle_config(request: Any) -> dict[str, Any]:
    """The IdleExtension options of the in-process server; a test changes some with
    ``@pytest.mark.parametrize("idle_config", [{...}], indirect=True)``."""
    return {**IN_PROCESS, **getattr(request, "param", {})}


@pytest.fixture
def extra_server_config(request: Any) -> dict[str, Any]:
    """More configuration of the in-process server (sections other than IdleExtension), set
    with ``@pytest.mark.parametrize("extra_server_config", [{...}], indirect=True)``."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(
    idle_config: dict[str, Any], extra_server_config: dict[str, Any]
) -> dict[str, Any]:
    extra = dict(extra_server_config)
    server = dict(extra.pop("ServerApp", {}))
    extensions = server.pop("jpserver_extensions", {})
    return {
        "ServerApp": {
            "jpserver_extensions": {
                "jupyter_idle_ext": True,
                "jupyter_server_terminals": True,
                **extensions,
            },
            **server,
        },
        "IdleExtension": idle_config,
        **extra,
    }


@pytest.fixture
def idle_app(jp_serverapp: Any, jp_asyncio_loop: Any) -> Any:
    """The running extension, its background check started as a real server would."""
    app = jp_serverapp.extension_manager.extension_points["jupyter_idle_ext"].app
    # caplog sees our logger through the root logger (pytest before 9 attaches nowhere else)
    app.log.propagate = True
    jp_asyncio_loop.run_until_complete(app._start_jupyter_server_extension(jp_serverapp))
    yield app
    jp_asyncio_loop.run_until_complete(app.stop_extension())


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll (sync or async) ``predicate`` until truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# -- kernels of the in-process server -------------------------------------------------------


async def start_kernel(jp_fetch: Any, name: str = "python3") -> str:
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
    kernel_id = json.loads(r.body)["id"]
    return str(kernel_id)


async def kernel_exists(jp_fetch: Any, kernel_id: str) -> bool:
    try:
        await jp_fetch("api", "kernels", kernel_id, method="GET")
        return True
    except HTTPClientError as e:
        assert e.code == 404
        return False


async def ready_client(app: Any, kernel_id: str) -> Any:
    """A client talking ZMQ to the kernel directly, as `jupyter console` or VS Code do."""
    kernel = app.serverapp.kernel_manager.get_kernel(kernel_id)
    client = kernel.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return client


async def run(client: Any, code: str, timeout: float = 60) -> None:
    reply = await client.execute_interactive(code, timeout=timeout, output_hook=lambda m: None)
    assert reply["content"]["status"] == "ok", reply["content"]


async def _gone(jp_fetch: Any, kernel_id: str) -> bool:
    return not await kernel_exists(jp_fetch, kernel_id)


@pytest.fixture
def start_server(tmp_path: Any) -> Any:
    """Start real ``jupyter server`` processes (tests/servers.py); all are stopped at teardown."""
    from servers import ServerProcess

    started: list[ServerProcess] = []

    def start(*args: str, extension: bool = True, **kwargs: Any) -> ServerProcess:
        root = tmp_path / f"root{len(started)}"
        root.mkdir()
        server = ServerProcess(root, extension=extension, args=args, **kwargs)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
