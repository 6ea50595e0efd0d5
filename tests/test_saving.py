"""Typing is work, and nothing unsaved is lost at an idle stop (JupyterLab 4 and Notebook 7 in
headless Chromium, against the installed wheel, with JupyterLab's autosave off).

- A person typing into a document for longer than server_idle_timeout, never saving, keeps the
  server; once they stop, the server stops on time, and the words are on disk first.
- A file changed on disk since the page loaded it is never overwritten: the page's version goes
  beside it, and the page and the log say where. A page too busy to save is saved by the server,
  from the copy the page sent near the stop.

The REST side of both is in test_unsaved.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_frontend import NOTEBOOK, SETTINGS, require_installed_frontend

from jupyter_idle_ext.pytest_plugin import (
    ServerProcess,
    browsers,
    lab_server,
    open_page,
    wait_until,
)

pytestmark = [pytest.mark.frontend, pytest.mark.timeout(300)]

AUTOSAVE_OFF = {
    **SETTINGS,
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
}
# the page tells the server of a person's edits at most this often (frontend: EDIT_EVERY_MS)
EDIT_EVERY = 5


def editing_server(tmp_path: Path, files: dict[str, str], *args: str) -> ServerProcess:
    require_installed_frontend()
    return lab_server(
        tmp_path / "server", args=args, settings=AUTOSAVE_OFF, files=files, notebook=True
    ).wait_ready(90)


def open_editor(browser: Any, s: ServerProcess, url_path: str) -> Any:
    page = open_page(browser, s, url_path)
    editor = page.locator(".jp-FileEditor .cm-content").first
    editor.wait_for(timeout=60_000)
    editor.click()
    page.keyboard.press("Control+End")
    return page


def test_typing_without_saving_keeps_the_server_and_the_words_are_saved_at_the_stop(
    tmp_path: Path,
) -> None:
    timeout, warning = 30, 10
    s = editing_server(
        tmp_path,
        {"notes.txt": "first line\n"},
        f"--IdleExtension.server_idle_timeout={timeout}",
        f"--IdleExtension.shutdown_warning={warning}",
    )
    try:
        with browsers() as new_browser:
            browser = new_browser()
            page = open_editor(browser, s, "lab/tree/notes.txt")
            # a key every few seconds, for longer than server_idle_timeout, never saved
            started = time.monotonic()
            while time.monotonic() - started < timeout + 15:
                page.keyboard.type("a")
                page.wait_for_timeout(3000)
                assert s.running, f"stopped while a person typed:\n{s.log()[-3000:]}"
            assert (s.root / "notes.txt").read_text() == "first line\n"  # never saved
            page.keyboard.type("\nlast words, never saved")
            typed = time.monotonic()
            # the warning says what the stop will do with them
            toast = page.locator(".Toastify__toast", has_text="The server will stop at")
            toast.wait_for(timeout=(timeout + 10) * 1000)
            assert "1 document unsaved: it will be saved before the stop" in toast.inner_text()
            assert s.wait_exit(timeout + 40) == 0
            after = time.monotonic() - typed
            assert after <= timeout + EDIT_EVERY + 8, (after, s.log()[-3000:])
            text = (s.root / "notes.txt").read_text()
            assert text.startswith("first line\n") and text.endswith("last words, never saved")
            assert "a" * 5 in text
            page.get_by_text("Server stopped for idleness").wait_for(timeout=30_000)
            dialog = page.locator(".jp-Dialog").inner_text()
            assert "notes.txt was saved before the stop." in dialog, dialog
            # the warning's buttons are gone once the server has stopped
            page.get_by_text("Keep working").first.wait_for(state="detached", timeout=10_000)
            browser.close()
    finally:
        s.stop()
    log = s.log()
    assert "A page saved `notes.txt` before the stop." in log, log[-3000:]
    assert f"Shutting down the server: idle {timeout} s >= server_idle_timeout" in log


def test_a_file_changed_on_disk_is_kept_and_a_busy_page_is_saved_by_the_server(
    tmp_path: Path,
) -> None:
    timeout, warning = 30, 15
    s = editing_server(
        tmp_path,
        {"shared.txt": "as loaded\n", "draft.txt": "draft\n"},
        f"--IdleExtension.server_idle_timeout={timeout}",
        f"--IdleExtension.shutdown_warning={warning}",
    )
    try:
        with browsers() as new_browser:
            # two browsers: a page busy in one cannot hold up the other
            notebook7 = open_editor(new_browser(), s, "edit/shared.txt")
            lab = open_editor(new_browser(), s, "lab/tree/draft.txt")
            reports: list[dict[str, Any]] = []
            notebook7.on(
                "request",
                lambda r: (
                    reports.append(json.loads(r.post_data or "{}"))
                    if urlsplit(r.url).path.endswith("/api/idle/unsaved")
                    else None
                ),
            )
            notebook7.keyboard.type("typed in Notebook 7")
            lab.keyboard.type("typed in JupyterLab")
            # another tab, a git pull: the file changes on disk after the page loaded it
            notebook7.wait_for_timeout(1500)
            (s.root / "shared.txt").write_text("changed on disk\n")
            # at the warning the pages send copies of what they hold unsaved, and it names them;
            # then the JupyterLab page is busy (a long computation in the page) until after the
            # stop. (Under load the pages may open after a first warning, which their typing
            # cancels: the warning that counts is the one after it.)
            for page in (notebook7, lab):
                page.locator(".Toastify__toast", has_text="The server will stop at").filter(
                    has_text="2 documents unsaved"
                ).wait_for(timeout=(timeout + 10) * 1000)
            lab.wait_for_timeout(2000)
            lab.evaluate(
                "() => setTimeout(() => { const end = Date.now() + 90000; "
                "while (Date.now() < end) {} }, 0)"
            )
            assert s.wait_exit(timeout + 40) == 0
            assert (s.root / "shared.txt").read_text() == "changed on disk\n"
            (kept,) = (s.root).glob("shared.unsaved-*.txt")
            assert kept.read_text() == "as loaded\ntyped in Notebook 7"
            assert (s.root / "draft.txt").read_text() == "draft\ntyped in JupyterLab"
            notebook7.get_by_text("Server stopped for idleness").wait_for(timeout=30_000)
            dialog = notebook7.locator(".jp-Dialog").inner_text()
            # (playwright's sync API hands over the requests seen meanwhile during its own
            # calls, such as the wait above: all of them are in by now)
            # its copy went to the server once, at the warning; the reports after it (every
            # 5 s, then every second) carry none while the document does not change
            documents = [d for r in reports for d in r.get("documents", [])]
            copies = [i for i, d in enumerate(documents) if "content" in d]
            assert 1 <= len(copies) <= 2, documents
            assert len(documents) - copies[0] >= 4, documents
            assert (
                f"shared.txt had changed on disk: it is kept as it was, and your unsaved "
                f"version is in {kept.name}." in re.sub(r"\s+", " ", dialog)
            ), dialog
    finally:
        s.stop()
    log = s.log()
    assert (
        "`shared.txt` changed on disk since the page loaded it: kept as it is, and the page "
        f"saved its unsaved version beside it as `{kept.name}`." in log
    ), log[-3000:]
    assert "Saved `draft.txt` before the stop: a page held it unsaved." in log, log[-3000:]


def test_after_a_cell_with_the_tab_left_open_the_stop_comes_within_one_autosave_interval(
    tmp_path: Path,
) -> None:
    """JupyterLab's autosave writes a notebook changed by a run once, up to one autosave
    interval later; a write is activity, so the stop comes at most that much later."""
    timeout, autosave = 30, 10
    settings = {
        **SETTINGS,
        "@jupyterlab/docmanager-extension:plugin": {
            "autosave": True,
            "autosaveInterval": autosave,
        },
    }
    require_installed_frontend()
    s = lab_server(
        tmp_path / "server",
        args=(f"--IdleExtension.server_idle_timeout={timeout}",),
        settings=settings,
        files={"idle.ipynb": NOTEBOOK},
    ).wait_ready(90)
    try:
        with browsers() as new_browser:
            browser = new_browser()
            page = open_page(browser, s, "lab/tree/idle.ipynb", indicator=False)
            # the notebook's kernel up and idle (read from the server: under load the page's
            # own indicator can say idle before the kernel's connection is ready)
            wait_until(
                lambda: [k for k in s.kernel_models() if k["execution_state"] == "idle"],
                120,
            )
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
                timeout=90_000
            )
            cell = page.locator(".jp-Cell .cm-content").first
            cell.click()
            page.keyboard.type("print('ran ' + 'once')")
            wait_until(lambda: "ran ' + 'once" in cell.inner_text(), 30)
            page.keyboard.press("Shift+Enter")
            page.locator(".jp-OutputArea-output", has_text="ran once").wait_for(timeout=150_000)
            ran = time.monotonic()
            assert s.wait_exit(timeout + autosave + 40) == 0
            after = time.monotonic() - ran
            assert after <= timeout + autosave + 6, (after, s.log()[-3000:])
            assert "ran once" in (s.root / "idle.ipynb").read_text()
            browser.close()
    finally:
        s.stop()
