"""Typing is work, and nothing unsaved is lost at a stop: the REST side (in-process server).

A page reports a person's edits (POST api/idle/edit: activity of that document) and its unsaved
documents (POST api/idle/unsaved: not activity), with their content near a stop. At an idle stop
the server waits for the pages to save, then saves what they still hold from those copies, never
over a file changed on disk since the page loaded it. The pages' side, in Chromium, is in
test_frontend.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_idle_ext.unsaved import beside

pytestmark = pytest.mark.timeout(60)


async def post(jp_fetch: Any, path: str, body: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    try:
        r = await jp_fetch("api", "idle", path, method="POST", body=raw)
        return r.code, json.loads(r.body)
    except HTTPClientError as e:
        assert e.response is not None
        return e.code, json.loads(e.response.body)


async def status(jp_fetch: Any) -> dict[str, Any]:
    r = await jp_fetch("api", "idle", method="GET")
    return dict(json.loads(r.body))


async def write(jp_fetch: Any, path: str, text: str) -> dict[str, Any]:
    body = {"type": "file", "format": "text", "content": text}
    r = await jp_fetch("api", "contents", path, method="PUT", body=json.dumps(body))
    return dict(json.loads(r.body))


async def test_an_edit_is_activity_of_its_document(idle_app: Any, jp_fetch: Any) -> None:
    tracker = idle_app.tracker
    before = tracker.last_activity
    await asyncio.sleep(0.05)
    code, answer = await post(jp_fetch, "edit", {"path": "/notes.md"})
    assert (code, answer) == (200, {"path": "notes.md"})
    assert tracker.last_activity > before
    record = tracker.records[("document", "notes.md")]
    assert record.detail == "edited"
    assert record.describe() == "notes.md edited"


@pytest.mark.parametrize(
    "body, reason",
    [
        ("not json", "body must be JSON"),
        ({}, '"path" must be the path'),
        ({"path": 3}, '"path" must be the path'),
        ({"path": "/"}, '"path" must be the path'),
        ({"path": "x" * 5000}, "body larger than 4096 bytes"),
    ],
)
async def test_bad_edits_are_refused_with_a_reason_and_count_nothing(
    idle_app: Any, jp_fetch: Any, body: Any, reason: str
) -> None:
    before = idle_app.tracker.last_activity
    code, answer = await post(jp_fetch, "edit", body)
    assert code in (400, 413) and reason in answer["message"], (code, answer)
    assert idle_app.tracker.last_activity == before


async def test_unsaved_documents_show_in_the_status_and_are_not_activity(
    idle_app: Any, jp_fetch: Any
) -> None:
    before = idle_app.tracker.last_activity
    documents = [
        {"path": "a.md", "last_modified": "2026-12-05T10:00:00Z", "type": "file", "format": "text"},
        {"path": "b.ipynb", "last_modified": None, "type": "notebook", "format": "json"},
    ]
    code, answer = await post(jp_fetch, "unsaved", {"page": "p1", "documents": documents})
    assert code == 200, answer
    # a second page holding one of them: each document is counted once
    await post(jp_fetch, "unsaved", {"page": "p2", "documents": documents[:1]})
    doc = await status(jp_fetch)
    assert doc["unsaved"]["documents"] == ["a.md", "b.ipynb"]
    assert doc["unsaved"]["note"] == "2 documents unsaved: they will be saved before the stop"
    assert doc["unsaved"]["saving"] is False
    assert idle_app.tracker.last_activity == before
    # saved in both pages: nothing unsaved any more
    await post(jp_fetch, "unsaved", {"page": "p1", "documents": []})
    await post(jp_fetch, "unsaved", {"page": "p2", "documents": []})
    assert (await status(jp_fetch))["unsaved"]["documents"] == []


@pytest.mark.parametrize(
    "body, reason",
    [
        ("[", "body must be JSON"),
        ([], "body must be a JSON object"),
        ({"documents": []}, '"page" must be a non-empty string'),
        ({"page": "p", "documents": {}}, '"documents" must be a list'),
        ({"page": "p", "documents": [{"path": ""}]}, 'documents[0]: "path"'),
        (
            {"page": "p", "documents": [{"path": "a", "last_modified": "yesterday"}]},
            'documents[0]: "last_modified" must be an ISO 8601 time',
        ),
        (
            {"page": "p", "documents": [{"path": "a", "type": "directory"}]},
            "must be notebook/json or file/text",
        ),
        (
            {
                "page": "p",
                "documents": [
                    {"path": "a.ipynb", "type": "notebook", "format": "json", "content": "text"}
                ],
            },
            "a notebook's content must be a JSON object",
        ),
        ({"page": "p", "documents": [], "saved": [{"path": "a"}]}, "saved[0] must be"),
    ],
)
async def test_bad_unsaved_reports_are_refused_with_a_reason_and_change_nothing(
    idle_app: Any, jp_fetch: Any, body: Any, reason: str
) -> None:
    await post(jp_fetch, "unsaved", {"page": "p", "documents": [{"path": "kept.md"}]})
    code, answer = await post(jp_fetch, "unsaved", body)
    assert code == 400 and reason in answer["message"], (code, answer)
    assert (await status(jp_fetch))["unsaved"]["documents"] == ["kept.md"]


async def test_the_stop_saves_what_pages_hold_and_never_overwrites_a_file_changed_on_disk(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    loaded = await write(jp_fetch, "notes.txt", "first line\n")
    other = await write(jp_fetch, "other.txt", "the page loaded this\n")
    notebook = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "typed, never saved", "id": "c1"}
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    await asyncio.sleep(1.1)
    # changed on disk after the page loaded it (another tab, a git pull)
    (jp_root_dir / "other.txt").write_text("changed on disk\n")
    documents = [
        {
            "path": "notes.txt",
            "last_modified": loaded["last_modified"],
            "content": "first line\nsecond\n",
        },
        {
            "path": "other.txt",
            "last_modified": other["last_modified"],
            "content": "the page's own\n",
        },
        {
            "path": "new.ipynb",
            "last_modified": None,
            "type": "notebook",
            "format": "json",
            "content": notebook,
        },
    ]
    code, _ = await post(jp_fetch, "unsaved", {"page": "p", "documents": documents})
    assert code == 200
    tracker = idle_app.tracker
    before = tracker.last_activity
    started = time.monotonic()
    await idle_app.unsaved.save_before_stop(1.0)
    assert time.monotonic() - started < 5
    assert (jp_root_dir / "notes.txt").read_text() == "first line\nsecond\n"
    assert (jp_root_dir / "other.txt").read_text() == "changed on disk\n"
    (kept,) = jp_root_dir.glob("other.unsaved-*.txt")
    assert re.fullmatch(r"other\.unsaved-\d{8}T\d{6}Z\.txt", kept.name)
    assert kept.read_text() == "the page's own\n"
    saved_nb = json.loads((jp_root_dir / "new.ipynb").read_text())
    assert "".join(saved_nb["cells"][0]["source"]) == "typed, never saved"
    # the stop's own saves are not activity
    assert tracker.last_activity == before
    log = caplog.text
    assert "Saved `notes.txt` before the stop" in log
    assert (
        f"`other.txt` changed on disk since the page loaded it: kept as it is, and the page's unsaved version saved beside it as `{kept.name}`"
        in log
    )
    doc = await status(jp_fetch)
    saved = {s["path"]: s for s in doc["unsaved"]["saved"]}
    assert saved["other.txt"]["saved_as"] == kept.name and saved["other.txt"]["changed_on_disk"]
    assert saved["notes.txt"] == {
        "path": "notes.txt",
        "saved_as": "notes.txt",
        "by": "server",
        "changed_on_disk": False,
    }


async def test_the_stop_waits_for_a_page_that_saves_and_then_writes_nothing_itself(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    loaded = await write(jp_fetch, "notes.txt", "old\n")
    draft = {"path": "notes.txt", "last_modified": loaded["last_modified"], "content": "draft\n"}
    await post(jp_fetch, "unsaved", {"page": "p", "documents": [draft]})
    unsaved = idle_app.unsaved

    started = time.monotonic()
    await asyncio.gather(
        unsaved.save_before_stop(20.0), page_saves(jp_fetch, "p", "notes.txt", "the page's save\n")
    )
    assert time.monotonic() - started < 10
    assert (jp_root_dir / "notes.txt").read_text() == "the page's save\n"
    assert "A page saved `notes.txt` before the stop" in caplog.text
    assert "Saved `notes.txt` before the stop" not in caplog.text


async def page_saves(jp_fetch: Any, page: str, path: str, text: str) -> None:
    """What a page does at the stop: it reads the status, sees the stop saving, saves, and says
    so."""
    await wait_for_saving(jp_fetch)
    await write(jp_fetch, path, text)
    saved = [{"path": path, "saved_as": path, "changed_on_disk": False}]
    await post(jp_fetch, "unsaved", {"page": page, "documents": [], "saved": saved})


async def wait_for_saving(jp_fetch: Any) -> None:
    for _ in range(100):
        if (await status(jp_fetch))["unsaved"]["saving"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the stop never said it was saving")


async def test_nothing_unsaved_stops_at_once(idle_app: Any) -> None:
    started = time.monotonic()
    await idle_app.unsaved.save_before_stop(20.0)
    assert time.monotonic() - started < 1
    assert idle_app.unsaved.saving is False


def test_beside_names_the_copy_after_the_file() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 12, 5, 15, 30, 0, tzinfo=timezone.utc)
    assert beside("notes.txt", now) == "notes.unsaved-20261205T153000Z.txt"
    assert beside("a/b/report.ipynb", now) == "a/b/report.unsaved-20261205T153000Z.ipynb"
    assert beside("archive.tar.gz", now) == "archive.unsaved-20261205T153000Z.tar.gz"
    assert beside("Makefile", now) == "Makefile.unsaved-20261205T153000Z"
    assert beside(".env", now) == ".env.unsaved-20261205T153000Z"
    assert beside("notes.txt", now, 2) == "notes.unsaved-20261205T153000Z-2.txt"


async def test_two_pages_holding_one_changed_file_both_keep_their_versions(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any
) -> None:
    """Both copies go beside the file, in the same second: the second never overwrites the
    first."""
    loaded = await write(jp_fetch, "shared.txt", "as loaded\n")
    await asyncio.sleep(1.1)
    (jp_root_dir / "shared.txt").write_text("changed on disk\n")
    for page, text in (("p", "from p\n"), ("q", "from q\n")):
        document = {"path": "shared.txt", "last_modified": loaded["last_modified"], "content": text}
        assert (await post(jp_fetch, "unsaved", {"page": page, "documents": [document]}))[0] == 200
    await idle_app.unsaved.save_before_stop(0.2)
    assert (jp_root_dir / "shared.txt").read_text() == "changed on disk\n"
    copies = sorted(p.read_text() for p in jp_root_dir.glob("shared.unsaved-*.txt"))
    assert copies == ["from p\n", "from q\n"], copies


async def test_a_page_sends_a_copy_once_and_the_server_keeps_it_until_it_changes(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any
) -> None:
    """Reports come every second near a stop; a notebook may be megabytes. The reply names the
    copies the server holds from this page, and a report without a content keeps that copy."""
    loaded = await write(jp_fetch, "notes.txt", "first\n")
    document = {"path": "notes.txt", "last_modified": loaded["last_modified"]}
    code, reply = await post(jp_fetch, "unsaved", {"page": "p", "documents": [document]})
    assert (code, reply["copies"]) == (200, [])  # no copy sent yet
    with_copy = {**document, "content": "first\ntyped\n"}
    _, reply = await post(jp_fetch, "unsaved", {"page": "p", "documents": [with_copy]})
    assert reply["copies"] == ["notes.txt"]
    for _ in range(3):  # unchanged: reported without its content
        _, reply = await post(jp_fetch, "unsaved", {"page": "p", "documents": [document]})
        assert reply["copies"] == ["notes.txt"]
    # another page holds no copy of it
    _, reply = await post(jp_fetch, "unsaved", {"page": "q", "documents": [document]})
    assert reply["copies"] == []
    await post(jp_fetch, "unsaved", {"page": "q", "documents": []})
    await idle_app.unsaved.save_before_stop(0.5)
    assert (jp_root_dir / "notes.txt").read_text() == "first\ntyped\n"


async def test_a_page_left_with_a_document_another_page_saved_does_not_hold_the_stop(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any, caplog: Any
) -> None:
    """The same notebook open in JupyterLab and in Notebook 7, both with unsaved changes: one page
    saves it at the stop; the other's save then finds it changed on disk and waits on a dialog no
    one clicks. The stop waits a moment, not its whole bound, and keeps that page's version beside
    the file."""
    caplog.set_level(logging.INFO)
    loaded = await write(jp_fetch, "shared.txt", "as loaded\n")
    await asyncio.sleep(1.1)
    for page, text in (("lab", "from lab\n"), ("notebook", "from notebook\n")):
        document = {"path": "shared.txt", "last_modified": loaded["last_modified"], "content": text}
        assert (await post(jp_fetch, "unsaved", {"page": page, "documents": [document]}))[0] == 200

    started = time.monotonic()
    await asyncio.gather(
        idle_app.unsaved.save_before_stop(20.0),
        page_saves(jp_fetch, "lab", "shared.txt", "from lab\n"),
    )
    assert time.monotonic() - started < 10
    assert (jp_root_dir / "shared.txt").read_text() == "from lab\n"
    (kept,) = jp_root_dir.glob("shared.unsaved-*.txt")
    assert kept.read_text() == "from notebook\n"
    assert f"saved beside it as `{kept.name}`" in caplog.text


async def test_the_stop_still_waits_for_a_document_no_page_has_saved_yet(
    idle_app: Any, jp_fetch: Any, jp_root_dir: Any, caplog: Any
) -> None:
    """The shortened wait is only for documents another page saved: a page that also holds a
    document nobody saved yet is waited for past that grace, and its own save stands."""
    caplog.set_level(logging.INFO)
    shared = await write(jp_fetch, "shared.txt", "as loaded\n")
    own = await write(jp_fetch, "own.txt", "as loaded\n")
    await asyncio.sleep(1.1)
    lab = {"path": "shared.txt", "last_modified": shared["last_modified"], "content": "lab\n"}
    notebook = [
        {"path": "shared.txt", "last_modified": shared["last_modified"], "content": "nb\n"},
        {"path": "own.txt", "last_modified": own["last_modified"], "content": "nb's own\n"},
    ]
    await post(jp_fetch, "unsaved", {"page": "lab", "documents": [lab]})
    await post(jp_fetch, "unsaved", {"page": "notebook", "documents": notebook})

    async def notebook_saves_its_own_late() -> None:
        await wait_for_saving(jp_fetch)
        await asyncio.sleep(4)  # past the grace, within the bound
        await write(jp_fetch, "own.txt", "nb's own, saved by the page\n")
        saved = [{"path": "own.txt", "saved_as": "own.txt", "changed_on_disk": False}]
        # it still holds shared.txt, its save of that stuck on the dialog
        body = {"page": "notebook", "documents": notebook[:1], "saved": saved}
        await post(jp_fetch, "unsaved", body)

    await asyncio.gather(
        idle_app.unsaved.save_before_stop(20.0),
        page_saves(jp_fetch, "lab", "shared.txt", "lab\n"),
        notebook_saves_its_own_late(),
    )
    assert (jp_root_dir / "own.txt").read_text() == "nb's own, saved by the page\n"
    assert "Saved `own.txt` before the stop" not in caplog.text
    (kept,) = jp_root_dir.glob("shared.unsaved-*.txt")
    assert kept.read_text() == "nb\n"
