"""Real browsers for tests: Debian's Chromium driven by Playwright, on JupyterLab servers.

Never ``playwright install`` (it downloads a browser, which this machine cannot): the Chromium
from ``apt-get install chromium`` is used. On CI a missing browser fails the test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest
from servers import TOKEN, ServerProcess, on_ci

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(problem: str) -> NoReturn:
    if on_ci():
        pytest.fail(f"the browser test must run on CI: {problem}")
    pytest.skip(problem)


def playwright_and_chromium() -> tuple[Any, str]:
    """Playwright's sync API and Debian's chromium; on CI a missing one fails the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright; never `playwright install`)")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("no `chromium` on PATH (apt-get install -y chromium)")
    return sync_playwright, chromium


def launch(playwright: Any, chromium: str) -> Any:
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)


@contextlib.contextmanager
def browsers() -> Iterator[Callable[[], Any]]:
    """``new_browser()`` launches a headless Chromium (each one a browser of its own); all are
    closed at the end of the block. On CI a missing Playwright or Chromium fails the test."""
    sync_playwright, chromium = playwright_and_chromium()
    with sync_playwright() as p:
        yield lambda: launch(p, chromium)


def lab_server(
    base: Path,
    *,
    extension: bool = True,
    args: tuple[str, ...] = (),
    settings: dict[str, dict[str, Any]] | None = None,
    files: dict[str, str] | None = None,
    notebook: bool = False,
) -> ServerProcess:
    """A JupyterLab server (not yet ready) with workspaces and settings of its own.

    ``settings`` maps a plugin id ("@jupyterlab/docmanager-extension:plugin") to its settings;
    ``notebook`` serves Notebook 7 too.
    """
    root = base / "root"
    root.mkdir(parents=True)
    for name, content in (files or {}).items():
        (root / name).write_text(content)
    settings_dir = base / "settings"
    for plugin, values in (settings or {}).items():
        package, name = plugin.split(":")
        target = settings_dir / package / f"{name}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    # JupyterLab keeps workspaces and settings in ~/.jupyter; keep each server's to itself
    env = {
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
    }
    extensions = {"jupyterlab": True, **({"notebook": True} if notebook else {})}
    return ServerProcess(root, extension=extension, args=args, env=env, extensions=extensions)


INDICATOR = "#jupyter-idle-ext-indicator"


def open_page(browser: Any, server: ServerProcess, path: str, indicator: bool = True) -> Any:
    """A page of ``server`` at ``path`` (the token in its URL) in a context of its own, once the
    extension's indicator shows (unless ``indicator`` is False)."""
    page = browser.new_context(viewport={"width": 1200, "height": 700}).new_page()
    page.goto(f"{server.url}/{path}?token={TOKEN}", timeout=120_000)
    if indicator:
        page.locator(INDICATOR).wait_for(timeout=60_000)
    return page
