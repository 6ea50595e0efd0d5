"""The harness's own parts (jupyter_idle_ext/pytest_plugin.py) fail when what they wait for does
not come, so a test that waits on them fails rather than hangs."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jupyter_idle_ext.pytest_plugin import KernelSocket

pytestmark = pytest.mark.timeout(120)


def test_a_tab_waiting_for_a_reply_that_never_comes_times_out_while_the_server_pings(
    start_server: Any,
) -> None:
    # the server pings every second: each ping, answered inside websocket-client's recv(), must
    # not start the wait's timeout again
    server = start_server("--ServerApp.tornado_settings={'ws_ping_interval': 1000}")
    tab = KernelSocket(server.url, server.start_kernel())
    try:
        tab.kernel_info()
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            tab.wait_reply("a-request-nobody-sent", "execute_reply", timeout=4)
        assert 4 <= time.monotonic() - begun < 10
    finally:
        tab.close()
