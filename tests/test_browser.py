"""S1 in a real browser: JupyterLab 4 in headless Chromium, one cell run, then the tab left open.

Two servers run side by side, each with its own tab: one with jupyter_idle_ext, one with the
best configuration of jupyter_server's built-ins. Both cull the idle kernel; only ours shuts the
server down, although its tab keeps polling just like the other one.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from jupyter_idle_ext.pytest_plugin import (
    TOKEN,
    ServerProcess,
    lab_server,
    launch,
    playwright_and_chromium,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

CULL = 10  # kernel idle timeout, both servers
SHUTDOWN = 25  # server idle timeout, both servers
# the built-in shutdown check runs every 60 s (hard-coded in ServerApp.init_shutdown_no_activity)
BUILTIN_CHECK_EVERY = 60

EXTENSION_ARGS = (
    f"--IdleExtension.cull_idle_timeout={CULL}",
    f"--IdleExtension.server_idle_timeout={SHUTDOWN}",
    "--IdleExtension.shutdown_warning=5",
    "--IdleExtension.cull_interval=300",
)
BUILTIN_ARGS = (
    f"--MappingKernelManager.cull_idle_timeout={CULL}",
    "--MappingKernelManager.cull_interval=2",
    "--MappingKernelManager.cull_connected=True",
    f"--ServerApp.shutdown_no_activity_timeout={SHUTDOWN}",
    # the built-in check logs "No activity for N seconds." only at DEBUG
    "--ServerApp.log_level=DEBUG",
)
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "only-cell",
            "metadata": {},
            "outputs": [],
            "source": ["print(6 * 7)"],
        }
    ],
    "metadata": {
        # naming the kernelspec avoids JupyterLab's kernel selection dialog
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}
NO_ACTIVITY = re.compile(r"No activity for (\d+) seconds\.")


@dataclass
class Tab:
    """One server with one JupyterLab tab on it, and what the test saw happen to them."""

    label: str
    server: ServerProcess
    page: Any = None
    requests: list[tuple[float, str]] = field(default_factory=list)
    output_at: float = 0.0
    kernel_id: str = ""
    culled_at: float | None = None
    exited_at: float | None = None

    def kernels(self) -> list[str] | None:
        """Kernel ids, asked so that the question is not activity; None once the server is gone."""
        if not self.server.running:
            return None
        try:
            models = self.server.kernel_models()
        except OSError:
            return None
        except AssertionError:
            if not self.server.running:
                return None  # answered while stopping
            raise
        return [m["id"] for m in models]

    def polls_between(self, start: float, end: float) -> list[str]:
        return [url for t, url in self.requests if start <= t <= end and "/api/" in url]

    def diagnose(self) -> str:
        return f"--- {self.label} server log (tail) ---\n{self.server.log()[-4000:]}"


def open_tab(context: Any, tab: Tab) -> None:
    """Log in through the token URL, straight into the notebook."""
    page = context.new_page()
    tab.page = page
    page.on(
        "request",
        lambda r: tab.requests.append((time.monotonic(), f"{r.method} {urlsplit(r.url).path}")),
    )
    page.goto(f"{tab.server.url}/lab/tree/idle.ipynb?token={TOKEN}", timeout=120_000)


def run_cell(tab: Tab) -> None:
    """Run the only cell (Ctrl+Enter, in place) and wait for its output; note when it appeared."""
    page = tab.page
    cell = page.locator(".jp-Notebook .jp-Cell").first
    cell.wait_for(state="visible", timeout=120_000)
    dismiss_dialogs(page)
    # the kernel must be up and connected first: a cell run while the session is still starting
    # is dropped by JupyterLab, and an unused kernel is culled CULL s after its start
    page.locator(".jp-StatusBar-TextItem").filter(has_text=re.compile(r"\| Idle$")).wait_for(
        timeout=120_000
    )
    wait_until(lambda: kernel_ready(tab), 60)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    output = page.locator(".jp-OutputArea-output").filter(has_text="42").first
    try:
        output.wait_for(state="visible", timeout=60_000)
    except Exception:
        page.screenshot(path=str(tab.server.root.parent / "no-output.png"))
        print(tab.diagnose())
        raise
    tab.output_at = time.monotonic()


def kernel_ready(tab: Tab) -> bool:
    """The tab's kernel has started and the tab is connected to it (asked without activity)."""
    models = tab.server.kernel_models()
    ready = [m for m in models if m["execution_state"] == "idle" and m["connections"] >= 1]
    if ready:
        tab.kernel_id = ready[0]["id"]
    return len(models) == 1 and bool(ready)


def dismiss_dialogs(page: Any) -> None:
    """Accept any JupyterLab dialog (kernel selection picks the default python3)."""
    dialogs = page.locator(".jp-Dialog")
    for _ in range(3):
        if not dialogs.count():
            return
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
        page.wait_for_timeout(500)


def builtin_checks(tab: Tab) -> list[int]:
    """The idle seconds the built-in check saw each time it ran with no kernel left."""
    return [int(n) for n in NO_ACTIVITY.findall(tab.server.log())]


def test_open_tab_does_not_keep_the_server(tmp_path: Path) -> None:
    sync_playwright, chromium = playwright_and_chromium()
    tabs: list[Tab] = []

    def start(label: str, extension: bool, args: tuple[str, ...]) -> Tab:
        server = lab_server(
            tmp_path / label,
            extension=extension,
            args=args,
            files={"idle.ipynb": json.dumps(NOTEBOOK)},
        )
        tabs.append(Tab(label, server))
        server.wait_ready(90)
        return tabs[-1]

    def open_and_run(browser: Any, tab: Tab) -> None:
        open_tab(browser.new_context(), tab)
        run_cell(tab)
        assert tab.kernels() == [tab.kernel_id], tab.diagnose()

    try:
        with sync_playwright() as p:
            browser = launch(p, chromium)
            try:
                # one after the other, each server started just before its tab opens: the
                # built-in's shutdown check runs every 60 s from its start, and the sooner its
                # kernel goes after that start, the sooner a check can find the server idle past
                # its timeout (a whole minute sooner when pages load slowly); ours keeps its own
                # time
                builtin = start("built-in", False, BUILTIN_ARGS)
                open_and_run(browser, builtin)
                ours = start("jupyter_idle_ext", True, EXTENSION_ARGS)
                open_and_run(browser, ours)
                watch(ours, builtin)
            finally:
                browser.close()

        print(summary(ours, builtin))
        # ours: kernel culled cull_idle_timeout after its cell, with the tab still connected
        assert ours.culled_at is not None, ours.diagnose()
        culled_after = ours.culled_at - ours.output_at
        assert CULL - 1 <= culled_after <= CULL + 5, (culled_after, ours.diagnose())
        log = ours.server.log()
        assert re.search(
            rf"Culling idle kernel 'python3' \({ours.kernel_id}\) with [1-9]\d* connections: "
            rf"idle \d+ s >= cull_idle_timeout {CULL} s",
            log,
        ), log
        # ours: the server stopped itself server_idle_timeout after the cell, and exited 0
        exit_code = ours.server.wait_exit(5)
        assert ours.exited_at is not None
        exited_after = ours.exited_at - ours.output_at
        assert exit_code == 0, ours.diagnose()
        assert SHUTDOWN - 1 <= exited_after <= SHUTDOWN + 5, (exited_after, ours.diagnose())
        assert "The server will shut down at" in log
        assert f">= server_idle_timeout {SHUTDOWN} s" in log
        assert log.index("The server will shut down at") < log.index("Shutting down the server")
        # ... although its tab kept polling the REST API until the end
        last_polls = ours.polls_between(ours.exited_at - 12, ours.exited_at)
        assert last_polls, ours.requests[-20:]

        # built-in: the kernel was culled too (the comparison is fair) ...
        assert builtin.culled_at is not None, builtin.diagnose()
        assert "Culling 'idle' kernel 'python3'" in builtin.server.log()
        # ... but its check, run with no kernel left and long after the last execution,
        # counted the tab's polling as activity and kept the server up
        assert builtin.server.running, builtin.diagnose()
        seen = builtin_checks(builtin)
        assert seen and all(n <= SHUTDOWN for n in seen), (seen, builtin.diagnose())
        assert builtin.polls_between(builtin.output_at, time.monotonic())
        assert "No kernels for" not in builtin.server.log()  # its shutdown message
    finally:
        for tab in tabs:
            tab.server.stop()


def watch(ours: Tab, builtin: Tab) -> None:
    """Leave both tabs alone; note when kernels go and when our server exits.

    Ends once our server has exited and the built-in check has run at a time when, without the
    tab's polling, it would have found the server idle past its timeout (and a moment after).
    """
    deadline = builtin.output_at + CULL + 10 + SHUTDOWN + 2 * BUILTIN_CHECK_EVERY + 20
    checks_seen = 0
    decisive_check_at: float | None = None
    while True:
        now = time.monotonic()
        for tab in (ours, builtin):
            if tab.culled_at is None:
                kernels = tab.kernels()
                if kernels is not None and tab.kernel_id not in kernels:
                    tab.culled_at = now
        if ours.exited_at is None and not ours.server.running:
            ours.exited_at = now
        assert builtin.server.running, builtin.diagnose()
        checks = builtin_checks(builtin)
        if len(checks) > checks_seen:
            checks_seen = len(checks)
            # a check (it logs only with no kernel left) more than SHUTDOWN s after the last
            # execution, the last activity (a cull is none): without the tab's polling it would
            # have stopped the server
            if now - builtin.output_at > SHUTDOWN + 3:
                decisive_check_at = decisive_check_at or now
        if (
            ours.exited_at is not None
            and decisive_check_at is not None
            and now - decisive_check_at > 5
        ):
            return
        assert now < deadline, (
            f"gave up: ours exited at {ours.exited_at}, built-in checks {checks}\n"
            f"{ours.diagnose()}\n{builtin.diagnose()}"
        )
        builtin.page.wait_for_timeout(250)  # lets Playwright deliver both pages' events


def summary(ours: Tab, builtin: Tab) -> str:
    """Observed timings and what the tabs polled, for the test's output."""
    lines = []
    for tab in (ours, builtin):
        t0 = tab.server.started

        def rel(t: float | None, t0: float = t0) -> str:
            return "-" if t is None else f"{t - t0:.1f}"

        lines.append(
            f"{tab.label}: output at +{rel(tab.output_at)} s, kernel gone at +{rel(tab.culled_at)}, "
            f"exited at +{rel(tab.exited_at)} (from server start); built-in checks saw idle "
            f"{builtin_checks(tab)} s"
        )
        polls = Counter(
            re.sub(r"[0-9a-f-]{36}", "<id>", url)
            for t, url in tab.requests
            if t > tab.output_at and "/api/" in url
        )
        lines.append(f"  requests after the output: {dict(polls)}")
    return "\n".join(lines)
