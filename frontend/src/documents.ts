/**
 * The page's open documents, for the idle shutdown:
 * - a person typing into one is activity, saved or not: the server hears of keystrokes, pastes,
 *   cuts and drops in a document (input events only, never timers, focus or visibility), the
 *   first at once, then at most every EDIT_EVERY_MS, the last of a burst too;
 * - the server hears which documents are unsaved, and near a stop their content, so that it
 *   saves them if the page cannot;
 * - at the stop the page saves them itself; a file changed on disk since it was loaded is never
 *   overwritten: the page's version goes beside it (name.unsaved-<time>.ext).
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import type { IDisposable } from '@lumino/disposable';

import type { IdleClient } from './client';
import { beside, isEditKey } from './format';
import type { ISaved, IStatus } from './status';

/** A person's edits are told to the server at most this often (the last one too, that late). */
export const EDIT_EVERY_MS = 5_000;
/** A file on disk newer than the version loaded by more than this changed since (as JupyterLab). */
const CHANGED_ON_DISK_MS = 500;
const EDIT_EVENTS = ['keydown', 'paste', 'cut', 'drop'];

/** What the page needs of an open document's context (a DocumentWidget's). */
interface IDocContext {
  path: string;
  model: { dirty: boolean; toJSON(): unknown; toString(): string };
  contentsModel: { last_modified?: string; type?: string; format?: string | null } | null;
  save(): Promise<void>;
}

export class OpenDocuments implements IDisposable {
  constructor(
    private app: JupyterFrontEnd,
    private client: IdleClient
  ) {
    for (const type of EDIT_EVENTS) {
      window.addEventListener(type, this._onEdit, true);
    }
  }

  /** What the stop saved (by this page or by the server), for the stopped dialog. */
  savedAtStop: ISaved[] = [];

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** After each read of the status: save for the stop, or tell the server what is unsaved. */
  async afterRead(status: IStatus): Promise<void> {
    if (status.unsaved?.saving) {
      // the idle stop is saving: this page saves its own documents, once
      this._savingForStop ??= this._saveForStop();
      await this._savingForStop;
    } else {
      // near a stop, with their content: the server saves them if this page cannot
      const near = status.server.warning !== null || status.server.action !== 'keep';
      await this._report(near);
    }
  }

  /** Each second: a document that became unsaved, or saved, is told now, not at the next read. */
  checkDirty(status: IStatus): void {
    const paths = this._unsaved()
      .map(c => c.path)
      .join('\n');
    if (paths !== this._dirtyPaths) {
      this._dirtyPaths = paths;
      void this._report(status.server.warning !== null);
    }
  }

  /** No more edits are told (the server is gone). */
  stop(): void {
    this._stopped = true;
    window.clearTimeout(this._editPending);
    this._editPending = 0;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.stop();
    for (const type of EDIT_EVENTS) {
      window.removeEventListener(type, this._onEdit, true);
    }
  }

  /** The open documents (each once), by the shell's main-area widgets' contexts. */
  private _open(): { context: IDocContext; node: HTMLElement }[] {
    const found = new Map<string, { context: IDocContext; node: HTMLElement }>();
    for (const widget of this.app.shell.widgets('main')) {
      const context = (widget as any).context as IDocContext | undefined;
      if (context?.path && context.model && !found.has(context.path)) {
        found.set(context.path, { context, node: widget.node });
      }
    }
    return [...found.values()];
  }

  private _unsaved(): IDocContext[] {
    return this._open()
      .map(d => d.context)
      .filter(
        c =>
          c.model.dirty &&
          ['notebook', 'file'].includes(c.contentsModel?.type ?? 'file') &&
          // saved beside it at the stop: the page still holds it unsaved, the server need not
          !this.savedAtStop.some(s => s.path === c.path)
      );
  }

  private _draft(context: IDocContext, withContent: boolean): Record<string, unknown> {
    const notebook = context.contentsModel?.type === 'notebook';
    return {
      path: context.path,
      last_modified: context.contentsModel?.last_modified ?? null,
      type: notebook ? 'notebook' : 'file',
      format: notebook ? 'json' : 'text',
      ...(withContent
        ? { content: notebook ? context.model.toJSON() : context.model.toString() }
        : {})
    };
  }

  /**
   * Tell the server what this page holds unsaved; near a stop, with the content. A content the
   * server already holds from this page, unchanged since, is not sent again (a notebook may be
   * megabytes, and reports come every second near the stop).
   */
  private _report(withContent: boolean, saved: ISaved[] = []): Promise<void> {
    // one at a time: each reply says which copies the server holds after that report
    const next = this._reporting.then(() => this._reportNow(withContent, saved));
    this._reporting = next.catch(() => undefined);
    return next;
  }

  private async _reportNow(withContent: boolean, saved: ISaved[], again = true): Promise<void> {
    const sent = new Map<string, string>();
    const documents = this._unsaved().map(c => {
      const draft = this._draft(c, withContent);
      if (withContent) {
        const content = JSON.stringify(draft.content);
        if (this._held.get(c.path) === content) {
          delete draft.content; // the server keeps the copy it has
        } else {
          sent.set(c.path, content);
        }
      }
      return draft;
    });
    const report = JSON.stringify({ documents, saved });
    // an unchanged report is sent again with each read of the status, so the server knows
    // the page is still there; an empty one only once
    if (report === this._lastReport && !documents.length && !saved.length) {
      return;
    }
    this._lastReport = report;
    try {
      const reply = await this.client.reportUnsaved({ page: this._pageId, documents, saved });
      // the copies the server now holds from this page: what was sent, or kept from before
      const copies = new Set(reply.copies ?? []);
      const held = new Map<string, string>();
      for (const [path, content] of [...this._held, ...sent]) {
        if (copies.has(path)) {
          held.set(path, content);
        }
      }
      this._held = held;
      // a copy the page left out that the server no longer holds (it restarted): send it now
      const lost = documents.some(
        d => withContent && !('content' in d) && !copies.has(d.path as string)
      );
      if (lost && again) {
        await this._reportNow(withContent, [], false);
      }
    } catch {
      this._lastReport = '';
      this._held = new Map(); // the server may have lost them: send them again
    }
  }

  /** At the stop: save each unsaved document, beside it when it changed on disk. */
  private async _saveForStop(): Promise<void> {
    const saved: ISaved[] = [];
    const contents = this.app.serviceManager.contents;
    for (const context of this._unsaved()) {
      try {
        const loaded = context.contentsModel?.last_modified;
        let changed = false;
        try {
          const disk = await contents.get(context.path, { content: false });
          changed =
            !loaded || Date.parse(disk.last_modified) - Date.parse(loaded) > CHANGED_ON_DISK_MS;
        } catch {
          changed = false; // gone from disk: nothing to overwrite
        }
        if (changed) {
          // two pages holding the same file may both save it beside in one second
          const now = new Date();
          let n = 1;
          let target = beside(context.path, now);
          while (await this._exists(target)) {
            n += 1;
            target = beside(context.path, now, n);
          }
          const { type, format, content } = this._draft(context, true) as any;
          await contents.save(target, { type, format, content });
          saved.push({ path: context.path, saved_as: target, changed_on_disk: true });
        } else {
          await context.save();
          saved.push({ path: context.path, saved_as: context.path, changed_on_disk: false });
        }
      } catch (error) {
        console.error(`jupyter_idle_ext: could not save ${context.path} before the stop`, error);
      }
    }
    this.savedAtStop = [...this.savedAtStop, ...saved];
    await this._report(true, saved);
  }

  private async _exists(path: string): Promise<boolean> {
    try {
      await this.app.serviceManager.contents.get(path, { content: false });
      return true;
    } catch {
      return false;
    }
  }

  private _onEdit = (event: Event): void => {
    if (!event.isTrusted || this._stopped) {
      return;
    }
    if (event instanceof KeyboardEvent && !isEditKey(event)) {
      return;
    }
    const target = event.target as Node | null;
    const document = this._open().find(d => target && d.node.contains(target));
    if (!document) {
      return;
    }
    const send = () => {
      this._lastEditSent = Date.now();
      void this.client.edited(document.context.path).catch(() => {
        this._lastEditSent = 0;
      });
    };
    const wait = this._lastEditSent + EDIT_EVERY_MS - Date.now();
    if (wait <= 0) {
      send();
    } else if (!this._editPending) {
      // the last edits of a burst are told too, at most EDIT_EVERY_MS late
      this._editPending = window.setTimeout(() => {
        this._editPending = 0;
        send();
      }, wait);
    }
  };

  // this page, to the server's list of unsaved documents, and what it last told it
  private _pageId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  private _lastReport = '';
  private _reporting: Promise<void> = Promise.resolve();
  // by path, the content of the copy the server holds from this page (as sent)
  private _held = new Map<string, string>();
  private _dirtyPaths = '';
  private _savingForStop: Promise<void> | null = null;
  private _lastEditSent = 0;
  private _editPending = 0;
  private _stopped = false;
  private _disposed = false;
}
