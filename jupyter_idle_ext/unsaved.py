"""What open pages hold unsaved, and saving it before an idle stop.

A person who typed into a document and left (autosave off, or before the next autosave) would
lose those words at the stop: the server goes, and the page can no longer save. So each page of
JupyterLab or Notebook 7 tells the server which of its documents are unsaved, and near a stop it
sends their content too (a draft). At the stop the server first waits, within a bound, for the
pages to save their documents themselves; whatever is still unsaved then (a page busy elsewhere,
a page whose save failed) the server writes from the drafts. Both are the stop's own work: they
do not count as activity.

Nothing is ever overwritten: a file that changed on disk since the page loaded it is kept as it
is, and the page's version is saved beside it, as ``name.unsaved-<time>.ext``.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from jupyter_core.utils import ensure_async

# a page that has not reported for this long is gone (pages report with each read of the status,
# every 30 s at the most)
PAGE_GONE = 90.0
# a file on disk newer than the version the page loaded by more than this has changed since
# (JupyterLab's own conflict check allows the same 0.5 s)
CHANGED_ON_DISK = 0.5
# at the stop, once every document still unsaved in a page has been saved by another page, the
# wait for the pages ends this long after: the others' saves now meet "changed on disk", which
# JupyterLab answers with a dialog no one may be there to click
SAVED_ELSEWHERE_GRACE = 2.0
# limits of one report: its pages' documents, and the length of a page id and a path
MAX_DOCUMENTS = 100
MAX_NAME = 4096


class ReportError(ValueError):
    """A page's report that cannot be read; its message says why (for a 400)."""


@dataclass
class Draft:
    path: str
    # the time on disk of the version the page loaded (ISO 8601), or None for a new file
    last_modified: str | None
    # the content (a notebook's JSON, or a text file's text) when the page sent it, else None
    content: Any = None
    type: str = "file"
    format: str = "text"


def parse_report(body: Any) -> tuple[str, list[Draft], list[dict[str, Any]]]:
    """A page's report: ``{"page": id, "documents": [{"path", "last_modified", "type",
    "format", "content"?}], "saved"?: [{"path", "saved_as", "changed_on_disk"}]}`` (what the
    page saved itself at the stop), checked, or ReportError naming what is wrong."""
    if not isinstance(body, dict):
        raise ReportError('body must be a JSON object like {"page": "...", "documents": []}')
    page = body.get("page")
    if not isinstance(page, str) or not page or len(page) > MAX_NAME:
        raise ReportError('"page" must be a non-empty string')
    documents = body.get("documents")
    if not isinstance(documents, list) or len(documents) > MAX_DOCUMENTS:
        raise ReportError(f'"documents" must be a list of at most {MAX_DOCUMENTS} documents')
    drafts = []
    for i, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ReportError(f"documents[{i}] must be an object")
        path = document.get("path")
        if not isinstance(path, str) or not path.strip("/") or len(path) > MAX_NAME:
            raise ReportError(f'documents[{i}]: "path" must be a file\'s path')
        modified = document.get("last_modified")
        if modified is not None and (not isinstance(modified, str) or _parse(modified) is None):
            raise ReportError(f'documents[{i}]: "last_modified" must be an ISO 8601 time or null')
        kind = document.get("type", "file")
        form = document.get("format", "text")
        content = document.get("content")
        if (kind, form) == ("notebook", "json"):
            if content is not None and not isinstance(content, dict):
                raise ReportError(f"documents[{i}]: a notebook's content must be a JSON object")
        elif (kind, form) == ("file", "text"):
            if content is not None and not isinstance(content, str):
                raise ReportError(f"documents[{i}]: a text file's content must be a string")
        else:
            raise ReportError(
                f'documents[{i}]: "type" and "format" must be notebook/json or file/text'
            )
        drafts.append(Draft(path.strip("/"), modified, content, kind, form))
    saved = body.get("saved", [])
    if not isinstance(saved, list) or len(saved) > MAX_DOCUMENTS:
        raise ReportError(f'"saved" must be a list of at most {MAX_DOCUMENTS} saves')
    for i, entry in enumerate(saved):
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(k), str) for k in ("path", "saved_as"))
            and isinstance(entry.get("changed_on_disk"), bool)
        ):
            raise ReportError(
                f'saved[{i}] must be {{"path": str, "saved_as": str, "changed_on_disk": bool}}'
            )
    return (
        page,
        drafts,
        [
            {
                "path": e["path"].strip("/"),
                "saved_as": e["saved_as"].strip("/"),
                "by": "page",
                "changed_on_disk": e["changed_on_disk"],
            }
            for e in saved
        ],
    )


def _parse(iso: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def beside(path: str, now: datetime, n: int = 1) -> str:
    """Where a version that must not overwrite ``path`` goes: ``notes.unsaved-<time>.txt``, or
    ``notes.unsaved-<time>-<n>.txt`` for the n-th in the same second."""
    directory, name = posixpath.split(path)
    stem, dot, extension = name.partition(".") if not name.startswith(".") else (name, "", "")
    stamp = now.strftime("%Y%m%dT%H%M%SZ") + (f"-{n}" if n > 1 else "")
    return posixpath.join(directory, f"{stem}.unsaved-{stamp}{dot}{extension}")


class Unsaved:
    """The unsaved documents of the open pages, and the saves before an idle stop."""

    def __init__(
        self,
        contents_manager: Any,
        log: Any,
        *,
        saving: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cm = contents_manager
        self.log = log
        # tells the tracker that writes from now on are the stop's own, not activity
        self._saving_flag = saving
        self.clock = clock
        # page -> (when it last reported, its unsaved documents)
        self.pages: dict[str, tuple[float, list[Draft]]] = {}
        # set during the stop's saves: pages read it in the status and save at once
        self.saving = False
        # what the stop saved, and where: [{"path", "saved_as", "by", "changed_on_disk"}]
        self.saved: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def report(
        self, page: str, drafts: list[Draft], saved: list[dict[str, Any]] | None = None
    ) -> None:
        """A page's unsaved documents now (an empty list: all saved, or the page closes), and
        what it saved itself at the stop."""
        for entry in saved or []:
            self.saved.append(entry)
            if entry["changed_on_disk"]:
                self.log.warning(
                    "`%s` changed on disk since the page loaded it: kept as it is, and the "
                    "page saved its unsaved version beside it as `%s`.",
                    entry["path"],
                    entry["saved_as"],
                )
            else:
                self.log.info("A page saved `%s` before the stop.", entry["saved_as"])
        done = {entry["path"] for entry in saved or []}
        drafts = [draft for draft in drafts if draft.path not in done]
        if drafts:
            # a draft without content keeps the content the page sent before, if any
            before = {d.path: d for d in self.pages.get(page, (0.0, []))[1]}
            for draft in drafts:
                old = before.get(draft.path)
                if draft.content is None and old is not None:
                    draft.content = old.content
            self.pages[page] = (self.clock(), drafts)
        else:
            self.pages.pop(page, None)
        self._changed.set()

    def copies(self, page: str) -> list[str]:
        """The paths whose copy from ``page`` the server holds: the page need not send them again
        while they do not change."""
        return [d.path for d in self.pages.get(page, (0.0, []))[1] if d.content is not None]

    def _live(self) -> dict[str, tuple[float, list[Draft]]]:
        now = self.clock()
        for page in [p for p, (at, _) in self.pages.items() if now - at > PAGE_GONE]:
            del self.pages[page]
        return self.pages

    def documents(self) -> list[str]:
        """The paths open pages hold unsaved, each once, in order."""
        paths: dict[str, None] = {}
        for _, drafts in self._live().values():
            for draft in drafts:
                paths[draft.path] = None
        return list(paths)

    def note(self) -> str:
        """For the warning: "2 documents unsaved: they will be saved before the stop", or ""."""
        count = len(self.documents())
        if not count:
            return ""
        if count == 1:
            return "1 document unsaved: it will be saved before the stop"
        return f"{count} documents unsaved: they will be saved before the stop"

    def status(self) -> dict[str, Any]:
        return {
            "documents": self.documents(),
            "note": self.note(),
            "saving": self.saving,
            "saved": self.saved,
        }

    # -- at the stop -------------------------------------------------------------------------

    async def save_before_stop(self, wait: float) -> None:
        """Let the pages save (at most ``wait`` seconds), then save what they still hold."""
        if not self.documents():
            return
        self.saving = True
        self._saving_flag(True)
        self.log.info(
            "Saving before the stop: %s, open in a page (waiting up to %g s for the pages).",
            ", ".join(f"`{p}`" for p in self.documents()),
            wait,
        )
        deadline = self.clock() + wait
        while self.documents() and self.clock() < deadline:
            if self._saved_elsewhere():
                deadline = min(deadline, self.clock() + SAVED_ELSEWHERE_GRACE)
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.5, deadline - self.clock()))
        for page in list(self._live()):
            for draft in list(self.pages.get(page, (0.0, []))[1]):
                # a report that came in during an earlier save replaces what it held
                if any(d is draft for d in self.pages.get(page, (0.0, []))[1]):
                    await self._save(draft)
        self.pages.clear()

    def _saved_elsewhere(self) -> bool:
        """Whether each document still unsaved in a page was saved by a page during this stop
        (another page of the same document: what this one holds then goes beside the file)."""
        by_pages = {e["path"] for e in self.saved if e["by"] == "page"}
        return set(self.documents()) <= by_pages

    async def _save(self, draft: Draft) -> None:
        if draft.content is None:
            self.log.error(
                "`%s` is unsaved in a page that did not save it and sent no copy of it: its "
                "last changes are lost.",
                draft.path,
            )
            return
        try:
            changed = await self._changed_on_disk(draft)
            target = draft.path
            if changed:
                # two pages holding the same file may both be saved beside it in one second
                now, n = datetime.now(timezone.utc), 1
                target = beside(draft.path, now)
                while await ensure_async(self.cm.file_exists(target)):
                    n += 1
                    target = beside(draft.path, now, n)
            model = {"type": draft.type, "format": draft.format, "content": draft.content}
            await ensure_async(self.cm.save(model, target))
        except Exception as e:
            self.log.error("Could not save `%s` before the stop: %s", draft.path, e)
            return
        self.saved.append(
            {"path": draft.path, "saved_as": target, "by": "server", "changed_on_disk": changed}
        )
        if changed:
            self.log.warning(
                "`%s` changed on disk since the page loaded it: kept as it is, and the page's "
                "unsaved version saved beside it as `%s`.",
                draft.path,
                target,
            )
        else:
            self.log.warning("Saved `%s` before the stop: a page held it unsaved.", target)

    async def _changed_on_disk(self, draft: Draft) -> bool:
        try:
            model = await ensure_async(self.cm.get(draft.path, content=False))
        except Exception:
            return False  # gone from disk (or never saved): nothing to overwrite
        on_disk = model.get("last_modified")
        if draft.last_modified is None:
            return True  # the page thought it new, yet a file is there
        loaded = _parse(draft.last_modified)
        if not isinstance(on_disk, datetime) or loaded is None:
            return True
        if on_disk.tzinfo is None:
            on_disk = on_disk.replace(tzinfo=timezone.utc)
        return (on_disk - loaded).total_seconds() > CHANGED_ON_DISK
