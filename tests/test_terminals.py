"""Terminal activity and culling with real terminals (S4) in an in-process server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from jupyter_idle_ext.pytest_plugin import exists, wait_for

pytestmark = pytest.mark.timeout(120)


async def terminal_exists(jp_fetch: Any, name: str) -> bool:
    return await exists(jp_fetch, "api", "terminals", name)


async def type_into(ws: Any, text: str) -> None:
    await ws.write_message(json.dumps(["stdin", text]))


def terminal_record(app: Any, name: str) -> Any:
    return app.tracker.records.get(("terminal", name))


@pytest.mark.parametrize("idle_config", [{"terminal_idle_timeout": 4.0}], indirect=True)
async def test_terminal_typing_and_output_keep_it_then_idle_is_culled(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any, caplog: Any
) -> None:
    r = await jp_fetch("api", "terminals", method="POST", body="")
    name = json.loads(r.body)["name"]
    ws = await jp_ws_fetch("terminals", "websocket", name)
    await wait_for(lambda: terminal_record(idle_app, name), 10)

    # typing: every key echoes through the pty
    before = terminal_record(idle_app, name).last_activity
    await type_into(ws, "echo typed")
    await wait_for(lambda: terminal_record(idle_app, name).last_activity > before, 5)
    server_before = idle_app.tracker.last_activity

    # a long command printing for longer than the timeout keeps the terminal
    await type_into(ws, "; for i in 1 2 3 4 5 6 7; do echo tick $i; sleep 1; done\r")
    await asyncio.sleep(6.5)
    assert await terminal_exists(jp_fetch, name), "culled while its program was printing"
    # terminal activity counts for the server's idleness too
    assert idle_app.tracker.last_activity > server_before + 4

    # then nothing: culled at terminal_idle_timeout after its last output
    await asyncio.sleep(1.5)  # the loop's last tick
    last_output = terminal_record(idle_app, name).last_activity
    await wait_for(lambda: _terminal_gone(jp_fetch, name), 20)
    culled_after = time.monotonic() - last_output
    assert culled_after < 4 + 2.5, culled_after
    assert f"Culling terminal '{name}'" in caplog.text
    # what the shell printed on its way out is our cull, not the user's activity
    await asyncio.sleep(1)
    assert idle_app.tracker.last_activity - last_output < 0.5
    ws.close()


async def _terminal_gone(jp_fetch: Any, name: str) -> bool:
    return not await terminal_exists(jp_fetch, name)


@pytest.mark.parametrize("idle_config", [{"terminal_idle_timeout": 4.0}], indirect=True)
async def test_terminal_reconnects_are_not_activity(
    idle_app: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    """S6 for terminals: opening and closing its websocket (a reloaded tab) does not count."""
    r = await jp_fetch("api", "terminals", method="POST", body="")
    name = json.loads(r.body)["name"]
    ws = await jp_ws_fetch("terminals", "websocket", name)
    await wait_for(lambda: terminal_record(idle_app, name), 10)
    await asyncio.sleep(1)  # let the shell print its prompt
    ws.close()
    last = terminal_record(idle_app, name).last_activity
    start = time.monotonic()
    while await terminal_exists(jp_fetch, name):
        assert time.monotonic() - start < 8, "reconnects kept an idle terminal"
        try:
            ws = await asyncio.wait_for(jp_ws_fetch("terminals", "websocket", name), 2)
            await asyncio.sleep(0.3)
            ws.close()
        except Exception:
            continue
        record = terminal_record(idle_app, name)
        assert record is None or record.last_activity == last
        await asyncio.sleep(0.3)


@pytest.mark.parametrize("idle_config", [{"terminal_idle_timeout": 0.0}], indirect=True)
async def test_terminal_timeout_zero_never_culls(idle_app: Any, jp_fetch: Any) -> None:
    r = await jp_fetch("api", "terminals", method="POST", body="")
    name = json.loads(r.body)["name"]
    await asyncio.sleep(5)
    assert await terminal_exists(jp_fetch, name)
    await jp_fetch("api", "terminals", name, method="DELETE")
