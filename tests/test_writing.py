"""S13 in a real browser: a person types in a file for longer than server_idle_timeout, executing
nothing; beside it, a forgotten tab on another server (its negative control).

JupyterLab 4 in headless Chromium, once with its own autosave (shortened through settings) and
once with real-time collaboration (jupyter-collaboration saves server-side; ``-m apps``). The
typing server stays up while the keys go on, every key reaches the disk, and it stops
server_idle_timeout after the last one with the tab still open; the forgotten tab, which keeps
polling and writing its workspace, does not keep its server.
"""

from __future__ import annotations

import importlib.util
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from jupyter_idle_ext.pytest_plugin import (
    EXIT_SLACK,
    TOKEN,
    ServerProcess,
    lab_server,
    launch,
    logged_at,
    playwright_and_chromium,
    require,
)

pytestmark = pytest.mark.timeout(300)

TIMEOUT = 12  # server_idle_timeout of both servers
AUTOSAVE = 2  # JupyterLab's autosaveInterval, shortened (its default is 120 s)
KEYS = 15
KEY_EVERY = 1.5  # seconds: 15 keys take 21 s, well past the timeout
ARGS = (f"--IdleExtension.server_idle_timeout={TIMEOUT}", "--IdleExtension.shutdown_warning=3")
SETTINGS = {"@jupyterlab/docmanager-extension:plugin": {"autosaveInterval": AUTOSAVE}}


@dataclass
class Tab:
    label: str
    server: ServerProcess
    page: Any = None
    opened_at: float = 0.0
    last_key_at: float = 0.0
    exited_at: float | None = None
    writes: list[tuple[float, str]] = field(default_factory=list)

    def watch(self) -> None:
        if self.exited_at is None and not self.server.running:
            self.exited_at = time.monotonic()

    def decided_at(self) -> float:
        """When the server decided to stop (its log's time), on the monotonic clock."""
        decided = logged_at(self.server.log(), "Shutting down the server")
        assert decided is not None, self.diagnose()
        return decided

    def diagnose(self) -> str:
        return f"--- {self.label} server log (tail) ---\n{self.server.log()[-4000:]}"


def open_file(context: Any, tab: Tab) -> None:
    page = context.new_page()
    tab.page = page

    def note(request: Any) -> None:
        if request.method != "GET":
            tab.writes.append((time.monotonic(), f"{request.method} {urlsplit(request.url).path}"))

    page.on("request", note)
    page.goto(f"{tab.server.url}/lab/tree/notes.md?token={TOKEN}", timeout=120_000)
    page.locator(".jp-FileEditor .cm-content").first.wait_for(timeout=120_000)


def hold(tab: Tab) -> None:
    """Loading JupyterLab can take longer than the timeout on a busy machine: a keep-alive holds
    the server until both tabs are open (see start_clock)."""
    assert tab.server.request("POST", "/api/idle/keepalive", {"seconds": 300})[0] == 200


def start_clock(tab: Tab) -> None:
    """The idle clock starts afresh now that the tab is open: a save of another file (counted),
    then the keep-alive ends (in that order, so no gap)."""
    opened = {"type": "file", "format": "text", "content": "opened\n"}
    assert tab.server.request("PUT", "/api/contents/opened.txt", opened)[0] in (200, 201)
    assert tab.server.request("DELETE", "/api/idle/keepalive")[1] == {"cancelled": True}
    tab.opened_at = time.monotonic()


def write_beside_a_forgotten_tab(tmp_path: Path, collaborative: bool) -> None:
    sync_playwright, chromium = playwright_and_chromium()
    typing = Tab(
        "typing",
        lab_server(tmp_path / "typing", args=ARGS, settings=SETTINGS, files={"notes.md": ""}),
    )
    forgotten = Tab(
        "forgotten",
        lab_server(
            tmp_path / "forgotten", args=ARGS, settings=SETTINGS, files={"notes.md": "left alone\n"}
        ),
    )
    tabs = (typing, forgotten)
    try:
        for tab in tabs:
            tab.server.wait_ready(90)
            hold(tab)
        with sync_playwright() as p:
            browser = launch(p, chromium)
            try:
                open_file(browser.new_context(), forgotten)
                open_file(browser.new_context(), typing)
                for tab in tabs:
                    start_clock(tab)
                before = activity_counts(typing.server)  # the save above included
                editor = typing.page.locator(".jp-FileEditor .cm-content").first
                editor.click()
                for _ in range(KEYS):
                    assert typing.server.running, f"shut down while typing\n{typing.diagnose()}"
                    typing.page.keyboard.type("k")
                    typing.last_key_at = time.monotonic()
                    forgotten.watch()
                    typing.page.wait_for_timeout(KEY_EVERY * 1000)
                counted = {
                    source: n - before.get(source, 0)
                    for source, n in activity_counts(typing.server).items()
                }
                deadline = time.monotonic() + TIMEOUT + 30
                while any(t.exited_at is None for t in tabs) and time.monotonic() < deadline:
                    for tab in tabs:
                        tab.watch()
                    typing.page.wait_for_timeout(250)
            finally:
                browser.close()
        for tab in tabs:
            assert tab.exited_at is not None, f"never stopped\n{tab.diagnose()}"
            assert tab.server.wait_exit(5) == 0, tab.diagnose()

        # kept while typing (21 s, past the 12 s timeout), every key on disk, stopped after
        assert (typing.server.root / "notes.md").read_text() == "k" * KEYS, typing.diagnose()
        # (the decision, from the log: the exit's own time is bounded below)
        after_last_key = typing.decided_at() - typing.last_key_at
        slack = 1.5 if collaborative else AUTOSAVE + 1.5
        assert TIMEOUT - 1 <= after_last_key <= TIMEOUT + slack + 1, (
            after_last_key,
            typing.diagnose(),
        )
        log = typing.server.log()
        assert "last activity: notes.md " in log, typing.diagnose()
        # each save counted, and with collaboration each edit as it arrived
        assert counted.get("document", 0) >= (KEYS if collaborative else 3), counted
        if collaborative:
            assert counted.get("collaboration", 0) >= KEYS, counted
        # the shutdown with the (collaborative) tab connected is prompt: an exit's time, not held
        # by the tab's connection or the whole save wait at the stop (15 s)
        for tab in tabs:
            assert tab.exited_at is not None
            stop_took = tab.exited_at - tab.decided_at()
            assert stop_took < EXIT_SLACK, (stop_took, tab.diagnose())

        # the forgotten tab kept writing its workspace and polling, and its server stopped on time
        after_open = forgotten.decided_at() - forgotten.opened_at
        assert after_open <= TIMEOUT + 4, (after_open, forgotten.diagnose())
        workspace_puts = [w for t, w in forgotten.writes if "/lab/api/workspaces" in w]
        assert workspace_puts or collaborative, forgotten.writes
        assert (forgotten.server.root / "notes.md").read_text() == "left alone\n"
    finally:
        for tab in tabs:
            tab.server.stop()


def activity_counts(server: ServerProcess) -> dict[str, float]:
    """jupyter_idle_ext_activity_total by source, from the server's /metrics."""
    request = urllib.request.Request(
        f"{server.url}/metrics", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^jupyter_idle_ext_activity_total\{source="(\w+)"\} (\S+)$', text, re.M
        )
    }


def test_typing_with_autosave_keeps_the_server_a_forgotten_tab_does_not(tmp_path: Path) -> None:
    write_beside_a_forgotten_tab(tmp_path, collaborative=False)


@pytest.mark.apps
def test_collaborative_typing_keeps_the_server_a_forgotten_tab_does_not(tmp_path: Path) -> None:
    require(
        importlib.util.find_spec("jupyter_server_ydoc") is not None,
        "jupyter-collaboration is not installed in this venv (bash scripts/test.sh sets up "
        ".venv-apps)",
    )
    write_beside_a_forgotten_tab(tmp_path, collaborative=True)
