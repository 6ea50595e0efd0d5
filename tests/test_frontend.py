"""S16 and the frontend, in JupyterLab 4 and Notebook 7 in headless Chromium, against the
installed wheel (``-m frontend``: scripts/test.sh builds the wheel and runs these in a venv where
it is installed, as a user has it).

A tab left alone shows the countdown, the kernel cull and the warning, and still lets the server
stop on time, then says it was stopped for idleness; "Stop when done" and "Keep working" from
the indicator's panel and the warning do what they say.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from jupyter_idle_ext.pytest_plugin import (
    INDICATOR,
    ServerProcess,
    browsers,
    lab_server,
    open_page,
    require,
    wait_until,
)

pytestmark = [pytest.mark.frontend, pytest.mark.timeout(300)]

# The screenshots the README shows (docs/images) come from a run of this test with
# JUPYTER_IDLE_EXT_SCREENSHOTS=docs/images; otherwise they go to the test's temporary directory,
# so a test run never changes the checkout.
SCREENSHOTS_ENV = "JUPYTER_IDLE_EXT_SCREENSHOTS"
NOTEBOOK = json.dumps(
    {
        "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
)
# no "would you like news?" toast over ours
SETTINGS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def require_installed_frontend() -> None:
    out = subprocess.run(
        # this Python's own (``jupyter labextension`` would run whichever is first on PATH)
        [sys.executable, "-m", "jupyterlab.labextensions", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    listed = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    require(
        bool(re.search(r"jupyter-idle-ext v\S+ enabled\s+OK", listed)),
        "the jupyter-idle-ext labextension is not installed here (scripts/test.sh installs the "
        f"wheel into .venv-wheel):\n{listed}",
    )


def server(tmp_path: Path, *args: str) -> ServerProcess:
    require_installed_frontend()
    return lab_server(
        tmp_path / "server",
        args=args,
        settings=SETTINGS,
        files={"idle.ipynb": NOTEBOOK},
        notebook=True,
    ).wait_ready(90)


def indicator_seconds(page: Any) -> int | None:
    match = re.search(r"Idle shutdown in (\d+) s", page.locator(INDICATOR).inner_text())
    return int(match.group(1)) if match else None


def shot(page: Any, directory: Path, name: str) -> None:
    target = Path(os.environ.get(SCREENSHOTS_ENV) or directory)
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / name))


def test_a_tab_left_alone_is_told_everything_and_still_lets_the_server_stop(
    tmp_path: Path,
) -> None:
    timeout, warning, cull = 45, 15, 12
    s = server(
        tmp_path,
        f"--IdleExtension.server_idle_timeout={timeout}",
        f"--IdleExtension.shutdown_warning={warning}",
        f"--IdleExtension.cull_idle_timeout={cull}",
    )
    try:
        with browsers() as new_browser:
            browser = new_browser()
            pages = {}
            for app, path in (("lab", "lab/tree/idle.ipynb"), ("notebook", "notebooks/idle.ipynb")):
                page = open_page(browser, s, path)
                pages[app] = page
            lab, notebook = pages["lab"], pages["notebook"]
            opened = time.monotonic()

            # the countdown moves, in both
            for page in pages.values():
                page.wait_for_function(
                    f"document.querySelector('{INDICATOR}').textContent.includes('Idle shutdown in')",
                    timeout=30_000,
                )
            # (opening the notebook in two pages may write it once: the countdown restarts)
            readings = []
            for _ in range(10):
                readings.append((indicator_seconds(lab), indicator_seconds(notebook)))
                lab.wait_for_timeout(1000)
                if len(readings) >= 3:
                    then, now = readings[-3], readings[-1]
                    if all(
                        t is not None and n is not None and n <= t - 2 for t, n in zip(then, now)
                    ):
                        break
            else:
                raise AssertionError(f"the countdown does not move: {readings}")
            shot(notebook, tmp_path, "indicator-notebook.png")

            # the kernel this notebook started is culled: both pages say which, when and why
            for page in pages.values():
                page.get_by_text(
                    re.compile(r"Kernel python3 of idle\.ipynb was stopped at")
                ).first.wait_for(timeout=(cull + 20) * 1000)
                assert "because it was idle" in page.locator(".Toastify").inner_text()
            # the toast shows a few lines; its "Details" shows the whole message (the two pages
            # opening the notebook at once may have started a kernel each: a notice per cull)
            notice = lab.locator(".Toastify__toast", has_text="Kernel python3 of idle.ipynb")
            notice.first.get_by_role("button", name="Details").click()
            dialog = lab.locator(".jp-Dialog")
            dialog.wait_for(timeout=10_000)
            text = dialog.inner_text()
            assert "Kernel stopped" in text and "because it was idle: idle " in text, text
            assert "Its variables are gone; run the notebook again to get them back." in text, text
            dialog.get_by_role("button", name="Close").click()
            dialog.wait_for(state="detached", timeout=10_000)

            # the warning, with both buttons, nobody clicks
            for page in pages.values():
                page.get_by_text("Keep working").first.wait_for(timeout=(timeout + 10) * 1000)
                page.get_by_text("Stop now").first.wait_for(timeout=5000)
                assert "The server will stop at" in page.locator(".Toastify").inner_text()
            lab.wait_for_timeout(1000)  # the toast slides in
            shot(lab, tmp_path, "warning-lab.png")

            # ... and the server stops on time, although both tabs poll api/idle
            assert s.wait_exit(timeout + 30) == 0
            after = time.monotonic() - opened
            assert after <= timeout + 6, after
            for page in pages.values():
                page.get_by_text("Server stopped for idleness").wait_for(timeout=30_000)
                assert "Your saved files are kept" in page.locator(".jp-Dialog").inner_text()
            shot(notebook, tmp_path, "stopped-notebook.png")
            browser.close()
    finally:
        s.stop()
    log = s.log()
    assert f"Shutting down the server: idle {timeout} s >= server_idle_timeout" in log


def test_stop_when_done_and_keep_working_from_the_panel_and_the_warning(tmp_path: Path) -> None:
    s = server(
        tmp_path,
        "--IdleExtension.server_idle_timeout=600",
        "--IdleExtension.shutdown_warning=15",
        "--IdleExtension.cull_idle_timeout=600",
        "--IdleExtension.max_keepalive=1200",
    )
    try:
        with browsers() as new_browser:
            browser = new_browser()
            page = open_page(browser, s, "lab/tree/idle.ipynb")
            page.wait_for_function(
                f"document.querySelector('{INDICATOR}').textContent.includes('Idle shutdown in')",
                timeout=30_000,
            )
            # the panel explains (once the notebook's kernel is up), and asks for "stop when done"
            deadline = time.monotonic() + 60
            while not s.request("GET", "/api/idle")[1]["kernels"]:
                assert time.monotonic() < deadline, "the notebook started no kernel"
                time.sleep(0.5)
            page.locator(INDICATOR).click()
            dialog = page.locator(".jp-Dialog")
            dialog.wait_for(timeout=10_000)
            text = dialog.inner_text()
            assert "Kernels" in text and "python3" in text and "The rule:" in text, text
            page.get_by_role("button", name="Stop when done").click()
            asked = wait_until(lambda: s.request("GET", "/api/idle")[1]["stop_when_done"], 10)
            assert asked["waiting_for"] is None, asked  # nothing works: it is due
            # nothing works: the warning comes at once, shutdown_warning before the stop
            page.get_by_text("Keep working (20 min)").first.wait_for(timeout=15_000)
            toast = page.locator(".Toastify__toast", has_text="you asked to stop when done")
            assert toast.count() == 1, page.locator(".Toastify").inner_text()
            # saves push the time a little later: the same notification shows the new time (it
            # is not dismissed and popped again, which would also undo a person's closing it)
            toast.evaluate("node => { node.dataset.firstShown = 'yes'; }")
            first_text = toast.inner_text()
            reads: list[float] = []
            page.on(
                "request",
                lambda r: (
                    reads.append(time.monotonic())
                    if urlsplit(r.url).path.endswith("/api/idle")
                    else None
                ),
            )
            for i in range(2):
                page.wait_for_timeout(1500)
                saved = {"type": "file", "format": "text", "content": str(i)}
                assert s.request("PUT", "/api/contents/notes.txt", saved)[0] in (200, 201)
            saved_at = time.monotonic()
            page.wait_for_timeout(6_000)
            # warning, the page reads the status every 5 s (also when the read before the
            # warning had planned the next one 30 s away), and its countdown moves
            assert any(t > saved_at for t in reads), reads
            assert toast.count() == 1 and toast.get_attribute("data-first-shown") == "yes"
            assert toast.inner_text() != first_text, first_text
            page.get_by_text("Keep working (20 min)").first.click()
            page.wait_for_function(
                f"document.querySelector('{INDICATOR}').textContent.includes('Keep-alive until')",
                timeout=15_000,
            )
            _, doc = s.request("GET", "/api/idle")
            assert doc["keepalive"] is not None and doc["keepalive"]["seconds_left"] > 1100, doc
            page.wait_for_timeout(15_000)  # past the stop when done's deadline
            assert s.running, "stopped although the user asked to keep working"
            _, doc = s.request("GET", "/api/idle")
            assert doc["server"]["action"] == "keep" and doc["server"]["rule"] == "keepalive", doc
            browser.close()
    finally:
        s.stop()


def test_a_kernel_on_a_gateway_is_named_remote_in_the_panel_and_at_its_cull(
    tmp_path: Path,
) -> None:
    """S18 in the page: a notebook's kernel runs on a real Kernel Gateway; the indicator's panel
    says where it runs, and so does the notice when it is culled."""
    from jupyter_idle_ext.pytest_plugin import Gateway

    cull = 15
    gateway = Gateway(tmp_path, "kernel")
    s = server(
        tmp_path,
        f"--gateway-url={gateway.url}",
        f"--IdleExtension.cull_idle_timeout={cull}",
        "--IdleExtension.server_idle_timeout=0",
    )
    try:
        with browsers() as new_browser:
            browser = new_browser()
            page = open_page(browser, s, "lab/tree/idle.ipynb")
            wait_until(lambda: gateway.kernels(), 60)
            page.locator(INDICATOR).click()
            page.get_by_text(
                re.compile(rf"on the gateway {re.escape(gateway.url)}")
            ).first.wait_for(timeout=30_000)
            page.keyboard.press("Escape")
            s.wait_log("Culling idle remote kernel", cull + 60)
            culled = time.monotonic()
            notice = re.compile(
                # (the notebook's path, or under load the session's id when the page had not
                # yet read the session's path)
                rf"Kernel python3 on the gateway {re.escape(gateway.url)} of \S+ was stopped at"
            )
            try:
                page.get_by_text(notice).first.wait_for(timeout=30_000)
            except Exception as e:
                toasts = page.locator(".Toastify").inner_text()
                raise AssertionError(
                    f"no notice {time.monotonic() - culled:.0f} s after the cull: {toasts!r}\n"
                    f"{s.log()[-3000:]}"
                ) from e
            assert gateway.kernels() == []
            browser.close()
    finally:
        s.stop()
        gateway.stop()


def test_under_jupyterhub_start_my_server_again_spawns_this_named_server(tmp_path: Path) -> None:
    """A named server under a real JupyterHub stops for idleness with its page open; the page
    says so, and its "Start my server again" goes to the Hub's spawn page of this server
    (``hub/spawn/<user>/<server>``), which starts it again."""
    from jupyter_idle_ext.pytest_plugin import hub_factory

    require_installed_frontend()
    timeout = 30
    user, name = "alice", "analysis"
    with hub_factory(tmp_path) as start_hub:
        hub = start_hub(
            environment={
                "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": str(timeout),
                "JUPYTER_IDLE_SHUTDOWN_WARNING": "10",
            }
        )
        hub.create_user(user)
        hub.start_server(user, name)
        with browsers() as new_browser:
            browser = new_browser()
            page = browser.new_context(viewport={"width": 1200, "height": 700}).new_page()
            # a person's way in: the Hub's login form, then the server's JupyterLab
            page.goto(f"{hub.url}/hub/login?next=/user/{user}/{name}/lab", timeout=60_000)
            page.locator("#username_input").fill(user)
            page.locator("#password_input").fill("any")
            page.locator("#login_submit").click()
            page.locator(INDICATOR).wait_for(timeout=90_000)
            requested: list[str] = []
            page.on("request", lambda r: requested.append(urlsplit(r.url).path))

            page.get_by_text("Server stopped for idleness").wait_for(timeout=(timeout + 30) * 1000)
            # (the Hub notices the exit within its poll_interval; a person reads first)
            hub.wait_stopped(user, name, 30)
            dialog = page.locator(".jp-Dialog")
            assert "Your saved files are kept" in dialog.inner_text()
            # the warning toast leaves (after its exit animation)
            warning = page.locator(".Toastify__toast", has_text="Keep working")
            warning.first.wait_for(state="detached", timeout=10_000)
            dialog.get_by_role("button", name="Start my server again").click()

            # the Hub starts this server, named, again, and the page lands in it
            hub.wait_ready(user, name, 90)
            page.wait_for_url(re.compile(rf"/user/{user}/{name}/"), timeout=60_000)
            page.locator(INDICATOR).wait_for(timeout=90_000)
            assert f"/hub/spawn/{user}/{name}" in requested, requested
            browser.close()
        hub.stop_server(user, name)
    log = hub.log()
    assert f"Shutting down the server: idle {timeout} s >= server_idle_timeout" in log
