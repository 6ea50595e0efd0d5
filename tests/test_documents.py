"""S13 through the REST API: document writes are activity, reads are not (in-process server).

The browser side (JupyterLab typing with autosave, a forgotten tab) is in test_writing.py.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

from jupyter_idle_ext.metrics import ACTIVITY
from jupyter_idle_ext.pytest_plugin import wait_for

pytestmark = pytest.mark.timeout(60)


class SilentContentsManager(AsyncLargeFileManager):  # type: ignore[misc]
    """A contents manager whose writes emit no contents_service events, as third-party ones may
    (they override the write methods and never call ``emit``)."""

    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        with open(self._get_os_path(path.strip("/")), "w") as f:
            f.write(model["content"])
        return dict(await self.get(path, content=False))

    async def rename(self, old_path: str, new_path: str) -> None:
        os.rename(self._get_os_path(old_path.strip("/")), self._get_os_path(new_path.strip("/")))

    async def delete(self, path: str) -> None:
        os.remove(self._get_os_path(path.strip("/")))


async def put(jp_fetch: Any, path: str, body: dict[str, Any]) -> Any:
    return await jp_fetch("api", "contents", path, method="PUT", body=json.dumps(body))


def text(content: str) -> dict[str, Any]:
    return {"type": "file", "format": "text", "content": content}


async def status(jp_fetch: Any) -> dict[str, Any]:
    r = await jp_fetch("api", "idle", method="GET")
    return dict(json.loads(r.body))


def document(app: Any, path: str) -> Any:
    return app.tracker.records.get(("document", path))


async def moved_since(app: Any, before: float, path: str, detail: str) -> bool:
    record = document(app, path)
    return (
        bool(record is not None and record.last_activity > before and record.detail == detail)
        and app.tracker.last_activity >= record.last_activity
    )


async def test_writes_are_activity_and_reads_are_not(idle_app: Any, jp_fetch: Any) -> None:
    tracker = idle_app.tracker
    start = tracker.last_activity

    # reading, listing and polling the contents API is what a forgotten tab does
    await put(jp_fetch, "notes.md", text("first"))
    await wait_for(lambda: moved_since(idle_app, start, "notes.md", "saved"), 5)
    after_save = tracker.last_activity
    for _ in range(3):
        await jp_fetch("api", "contents", "notes.md", method="GET")
        await jp_fetch("api", "contents", method="GET")
        await jp_fetch("api", "contents", "notes.md", method="GET", params={"content": "0"})
    assert tracker.last_activity == after_save, "reading a document counted as activity"

    doc = await status(jp_fetch)
    entry = next(s for s in doc["sources"] if s["name"] == "notes.md")
    assert entry["kind"] == "document" and entry["detail"] == "saved"
    assert entry["reason"].startswith("notes.md saved ") and entry["reason"].endswith(" s ago")

    before = tracker.last_activity
    await jp_fetch(
        "api", "contents", "notes.md", method="PATCH", body=json.dumps({"path": "renamed.md"})
    )
    await wait_for(lambda: moved_since(idle_app, before, "renamed.md", "renamed"), 5)

    before = tracker.last_activity
    await jp_fetch("api", "contents", method="POST", body=json.dumps({"copy_from": "renamed.md"}))
    await wait_for(lambda: moved_since(idle_app, before, "renamed-Copy1.md", "copied"), 5)

    before = tracker.last_activity
    await jp_fetch("api", "contents", "renamed-Copy1.md", method="DELETE")
    await wait_for(lambda: moved_since(idle_app, before, "renamed-Copy1.md", "deleted"), 5)

    before = tracker.last_activity
    await jp_fetch("api", "contents", method="POST", body=json.dumps({"type": "notebook"}))
    await wait_for(lambda: moved_since(idle_app, before, "Untitled.ipynb", "saved"), 5)


async def test_every_chunk_of_an_upload_is_activity(idle_app: Any, jp_fetch: Any) -> None:
    """A long upload counts while it goes on, not only at its last chunk."""
    tracker = idle_app.tracker
    seen = []
    for chunk in (1, 2, 3, -1):
        before = tracker.last_activity
        payload = base64.b64encode(b"x" * 1000).decode()
        body = {"type": "file", "format": "base64", "content": payload, "chunk": chunk}
        await put(jp_fetch, "big.bin", body)
        await wait_for(lambda b=before: moved_since(idle_app, b, "big.bin", "saved"), 5)
        seen.append(tracker.last_activity)
    assert seen == sorted(seen) and len(set(seen)) == 4


@pytest.mark.parametrize(
    "extra_server_config",
    [{"ServerApp": {"contents_manager_class": SilentContentsManager}}],
    indirect=True,
)
async def test_a_contents_manager_without_events_is_covered(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    assert isinstance(jp_serverapp.contents_manager, SilentContentsManager)
    emitted: list[Any] = []

    async def listen(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        emitted.append(data)

    jp_serverapp.event_logger.add_listener(
        schema_id="https://events.jupyter.org/jupyter_server/contents_service/v1", listener=listen
    )
    tracker = idle_app.tracker
    for path, act, detail in (
        ("a.txt", lambda: put(jp_fetch, "a.txt", text("a")), "saved"),
        (
            "b.txt",
            lambda: jp_fetch(
                "api", "contents", "a.txt", method="PATCH", body=json.dumps({"path": "b.txt"})
            ),
            "renamed",
        ),
        ("b.txt", lambda: jp_fetch("api", "contents", "b.txt", method="DELETE"), "deleted"),
    ):
        before = tracker.last_activity
        await act()
        await wait_for(lambda p=path, b=before, d=detail: moved_since(idle_app, b, p, d), 5)
    writes = [e for e in emitted if e["action"] != "get"]
    assert writes == [], "the manager under test was meant to emit no write event"
    assert emitted, "no event at all: the listener saw nothing, the control is void"


async def test_a_write_event_counts_once_wherever_it_is_emitted(
    idle_app: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    """The events are read at the contents manager's emit: a write that only emits (a manager
    writing through a method of its own) counts, a read does not, and a save counts once."""
    cm, tracker = jp_serverapp.contents_manager, idle_app.tracker

    def counted() -> float:
        return float(ACTIVITY.labels("document")._value.get())

    before, n = tracker.last_activity, counted()
    cm.emit(data={"action": "get", "path": "read.md"})
    assert tracker.last_activity == before and counted() == n
    assert document(idle_app, "read.md") is None

    cm.emit(data={"action": "save", "path": "/elsewhere.md"})
    assert await moved_since(idle_app, before, "elsewhere.md", "saved")
    assert counted() == n + 1

    await put(jp_fetch, "once.md", text("once"))
    assert await moved_since(idle_app, before, "once.md", "saved")
    assert counted() == n + 2, "a save was counted twice (event and wrapper)"


async def test_only_the_latest_documents_are_listed(idle_app: Any, jp_fetch: Any) -> None:
    for i in range(25):
        await put(jp_fetch, f"n{i}.txt", text(str(i)))
    await wait_for(lambda: document(idle_app, "n24.txt") is not None, 5)
    documents = idle_app.tracker.of_kind("document")
    assert len(documents) == 20
    assert {r.id for r in documents} == {f"n{i}.txt" for i in range(5, 25)}
