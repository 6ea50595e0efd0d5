/**
 * jupyter_idle_ext in JupyterLab 4 and Notebook 7: what the idle culler will do, in front of the
 * person it affects.
 *
 * - An indicator (JupyterLab's status bar; Notebook 7 has none, so its header) says when the
 *   server stops or what keeps it; clicking it explains every kernel, terminal and source.
 * - At shutdown_warning a notification names the time and the reason, with "Keep working" (a
 *   keep-alive, capped by the server) and "Stop now".
 * - After an idle shutdown the page says the server was stopped for idleness, and when, instead
 *   of "server unavailable"; after a kernel cull it says which kernel was stopped, when and why.
 *
 * - A person typing into an open document is activity, saved or not: the page tells the server
 *   on keystrokes, pastes and drops in a document (at most every 5 s), never on a timer.
 * - Before an idle stop the page saves its unsaved documents; a file changed on disk since it was
 *   loaded is never overwritten: the page's version goes beside it (name.unsaved-<time>.ext). The
 *   page tells the server which documents are unsaved, and near a stop sends their content, so
 *   that the server saves them if the page cannot.
 *
 * It only reads GET api/idle, which is never activity, so an open tab never keeps the server up:
 * a keep-alive comes from a click, never from the tab itself.
 */
import {
  IConnectionLost,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection, ServiceManager } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

/** How often the status is read; more often when a shutdown is near, each second at its time. */
const POLL_MS = 30_000;
const NEAR_POLL_MS = 5_000;
const NEAR_S = 120;
const DUE_POLL_MS = 1_000;
/** A person's edits are told to the server at most this often (the last one too, that late). */
const EDIT_EVERY_MS = 5_000;
/** A file on disk newer than the version loaded by more than this changed since (as JupyterLab). */
const CHANGED_ON_DISK_MS = 500;

interface IDecided {
  action: string;
  reason: string;
}

interface IKernelStatus extends IDecided {
  id: string;
  name: string;
  execution_state: string;
  idle_seconds: number;
  busy_seconds: number | null;
  connections: number | null;
  remote?: string | null;
  cull_at: string | null;
}

interface ITerminalStatus extends IDecided {
  name: string;
  cull_at: string | null;
}

interface ISourceStatus {
  kind: string;
  name: string;
  detail: string;
  busy_seconds: number | null;
  reason: string;
}

interface IRecent {
  action: string;
  kind?: string;
  id?: string;
  name?: string;
  remote?: string;
  reason: string;
  rule?: string;
  time: string;
}

interface ISaved {
  path: string;
  saved_as: string;
  by?: string;
  changed_on_disk: boolean;
}

interface IUnsavedStatus {
  documents: string[];
  note: string;
  saving: boolean;
  saved: ISaved[];
}

export interface IStatus {
  now: string;
  last_activity: string;
  idle_seconds: number;
  server: {
    action: 'keep' | 'warn' | 'shutdown';
    rule: string | null;
    reason: string;
    shutdown_at: string | null;
    seconds_to_shutdown: number | null;
    warning: { shutdown_at: string; rule: string; reason: string } | null;
    kept_by: { what: string; busy_seconds: number } | null;
  };
  keepalive: { until: string; seconds_left: number } | null;
  keepalive_cap_seconds: number;
  stop_when_done: { since: string; waiting_for: string | null } | null;
  kernels: IKernelStatus[];
  terminals: ITerminalStatus[];
  sources: ISourceStatus[];
  recent: IRecent[];
  policy: Record<string, number | boolean | null>;
  unsaved?: IUnsavedStatus;
}

/** What the page needs of an open document's context (a DocumentWidget's). */
interface IDocContext {
  path: string;
  model: { dirty: boolean; toJSON(): unknown; toString(): string };
  contentsModel: { last_modified?: string; type?: string; format?: string | null } | null;
  save(): Promise<void>;
}

/** Is this key one that edits (a character, a deletion, a new line, a paste or an undo)? */
export function isEditKey(event: {
  key: string;
  ctrlKey: boolean;
  metaKey: boolean;
  altKey: boolean;
}): boolean {
  const command = event.ctrlKey || event.metaKey;
  if (command) {
    return ['v', 'x', 'z', 'y', 'V', 'X', 'Z', 'Y'].includes(event.key);
  }
  return event.key.length === 1 || ['Backspace', 'Delete', 'Enter', 'Tab'].includes(event.key);
}

/** Where a version that must not overwrite ``path`` goes: "notes.unsaved-<time>.txt" (UTC). */
export function beside(path: string, now: Date): string {
  const slash = path.lastIndexOf('/');
  const directory = path.slice(0, slash + 1);
  const name = path.slice(slash + 1);
  const dot = name.startsWith('.') ? -1 : name.indexOf('.');
  const stem = dot < 0 ? name : name.slice(0, dot);
  const extension = dot < 0 ? '' : name.slice(dot);
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${directory}${stem}.unsaved-${stamp}${extension}`;
}

/** What the stop did with unsaved documents, for people. */
export function describeSaves(saved: ISaved[]): string {
  return saved
    .map(s =>
      s.changed_on_disk
        ? `${s.path} had changed on disk: it is kept as it was, and your unsaved version is in ${s.saved_as}.`
        : `${s.path} was saved before the stop.`
    )
    .join(' ');
}

/** Seconds as a person says them: "45 s", "12 min", "2 h 03 min". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) {
    return `${s} s`;
  }
  const minutes = Math.round(s / 60);
  if (minutes < 120) {
    return `${minutes} min`;
  }
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`;
}

function clock(iso: string | null): string {
  if (!iso) {
    return '';
  }
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** The indicator's text: when the server stops, or what keeps it. */
export function describe(status: IStatus, elapsed: number): string {
  const server = status.server;
  if (server.action === 'shutdown') {
    return 'Stopping the server now';
  }
  const left =
    server.seconds_to_shutdown === null ? null : server.seconds_to_shutdown - elapsed;
  if (server.rule === null) {
    // what the policy itself says keeps the server, with its clock moving between reads
    const keptBy = server.kept_by;
    const kept = keptBy
      ? `${keptBy.what} ${duration(keptBy.busy_seconds + elapsed)}`
      : server.reason;
    return `Kept: ${kept}${status.stop_when_done ? ' · stops when done' : ''}`;
  }
  const when = left === null ? '' : duration(left);
  switch (server.rule) {
    case 'keepalive':
      return `Keep-alive until ${clock(status.keepalive?.until ?? server.shutdown_at)}`;
    case 'stop_when_done':
      return `Stops when done: in ${when}`;
    case 'max_server_age':
      return `Server stops in ${when} (maximum age)`;
    default:
      return `Idle shutdown in ${when}`;
  }
}

/** Reads api/idle, and asks for a keep-alive or "stop when done" when the person clicks. */
class IdleClient {
  constructor(private settings: ServerConnection.ISettings) {}

  status: IStatus | null = null;
  receivedAt = 0;
  failures = 0;

  /** Seconds since the status was read. */
  elapsed(): number {
    return (Date.now() - this.receivedAt) / 1000;
  }

  async request(path: string, init: RequestInit = {}): Promise<any> {
    const url = URLExt.join(this.settings.baseUrl, 'api/idle', path);
    const response = await ServerConnection.makeRequest(url, init, this.settings);
    if (!response.ok) {
      throw new ServerConnection.ResponseError(response);
    }
    return response.json();
  }

  async read(): Promise<IStatus> {
    const status = (await this.request('')) as IStatus;
    this.status = status;
    this.receivedAt = Date.now();
    this.failures = 0;
    return status;
  }

  keepWorking(seconds: number): Promise<any> {
    return this.request('keepalive', {
      method: 'POST',
      body: JSON.stringify({ seconds })
    });
  }

  stopWhenDone(on: boolean): Promise<any> {
    return this.request('stop-when-done', on ? { method: 'POST', body: '{}' } : { method: 'DELETE' });
  }

  edited(path: string): Promise<any> {
    return this.request('edit', { method: 'POST', body: JSON.stringify({ path }) });
  }

  reportUnsaved(report: {
    page: string;
    documents: Record<string, unknown>[];
    saved?: ISaved[];
  }): Promise<IUnsavedStatus> {
    return this.request('unsaved', { method: 'POST', body: JSON.stringify(report) });
  }

  async stopNow(): Promise<void> {
    const url = URLExt.join(this.settings.baseUrl, 'api/shutdown');
    await ServerConnection.makeRequest(url, { method: 'POST' }, this.settings);
  }

  /** Did the last status say the server was about to stop (so its absence is that stop)? */
  stoppingSoon(): boolean {
    const server = this.status?.server;
    if (!server) {
      return false;
    }
    if (server.action !== 'keep') {
      return true;
    }
    const left =
      server.seconds_to_shutdown === null ? null : server.seconds_to_shutdown - this.elapsed();
    return left !== null && left < 15;
  }
}

/**
 * The Hub's page that starts this server again (named servers included), or null without a Hub.
 */
export function spawnUrl(options: {
  hubHost: string;
  hubPrefix: string;
  hubUser: string;
  hubServerName: string;
}): string | null {
  if (!options.hubPrefix) {
    return null;
  }
  const parts = ['spawn'];
  if (options.hubUser) {
    parts.push(encodeURIComponent(options.hubUser));
    if (options.hubServerName) {
      parts.push(encodeURIComponent(options.hubServerName));
    }
  }
  return options.hubHost + URLExt.join(options.hubPrefix, ...parts);
}

function hubSpawnUrl(): string | null {
  return spawnUrl({
    hubHost: PageConfig.getOption('hubHost'),
    hubPrefix: PageConfig.getOption('hubPrefix'),
    hubUser: PageConfig.getOption('hubUser'),
    hubServerName: PageConfig.getOption('hubServerName')
  });
}

function node(tag: string, text?: string, className?: string): HTMLElement {
  const element = document.createElement(tag);
  if (text !== undefined) {
    // textContent, never HTML: names and command lines come from the user's own processes
    element.textContent = text;
  }
  if (className) {
    element.className = className;
  }
  return element;
}

function list(title: string, lines: string[]): HTMLElement[] {
  if (!lines.length) {
    return [];
  }
  const ul = node('ul');
  for (const line of lines) {
    ul.appendChild(node('li', line));
  }
  return [node('h4', title), ul];
}

/** The explanation shown when the indicator is clicked. */
function details(status: IStatus, elapsed: number): Widget {
  const body = node('div', undefined, 'jp-IdleExt-details');
  body.appendChild(node('p', describe(status, elapsed)));
  body.appendChild(node('p', `Why: ${status.server.reason}.`));
  if (status.keepalive) {
    body.appendChild(node('p', `Keep-alive until ${clock(status.keepalive.until)}.`));
  }
  if (status.stop_when_done) {
    const waiting = status.stop_when_done.waiting_for;
    body.appendChild(
      node('p', `Stop when done (asked at ${clock(status.stop_when_done.since)})${waiting ? `, waiting for: ${waiting}` : ''}.`)
    );
  }
  const sections = [
    ...list(
      'Kernels',
      status.kernels.map(
        k =>
          `${k.name} (${k.id.slice(0, 8)})${k.remote ? ` on the gateway ${k.remote}` : ''}, ${k.execution_state}: ${k.reason}` +
          (k.cull_at ? `; stopped at ${clock(k.cull_at)} if nothing happens` : '')
      )
    ),
    ...list(
      'Terminals',
      status.terminals.map(t => `${t.name}: ${t.reason}`)
    ),
    ...list(
      'Other activity',
      status.sources.map(s => s.reason)
    ),
    ...list(
      'Recently',
      status.recent.slice(0, 5).map(r => `${clock(r.time)} ${r.action.replace(/_/g, ' ')}: ${r.reason}`)
    )
  ];
  for (const element of sections) {
    body.appendChild(element);
  }
  const policy = status.policy;
  body.appendChild(
    node(
      'p',
      `The rule: the server stops after ${duration(Number(policy.server_idle_timeout))} without ` +
        'activity (running code, its output, typing in a terminal, saving a document, input ' +
        'to a proxied app, a working process); an open tab is not activity. ' +
        `Kernels stop after ${duration(Number(policy.cull_idle_timeout))} idle.`
    )
  );
  return new Widget({ node: body });
}

/**
 * Between the two plugins: whether a lost connection is the idle shutdown the status announced
 * (then the indicator's plugin says so, once, and the generic dialog is not shown).
 */
const lost = { explain: (): boolean => false };

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-idle-ext:plugin',
  description: 'The idle shutdown in front of the person it affects.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    const client = new IdleClient(app.serviceManager.serverSettings);
    const indicator = new Widget({ node: node('div', '', 'jp-IdleExt-indicator') });
    indicator.id = 'jupyter-idle-ext-indicator';
    indicator.node.title = 'jupyter_idle_ext: click for why';
    if (statusBar) {
      statusBar.registerStatusItem('jupyter-idle-ext:indicator', {
        item: indicator,
        align: 'left',
        rank: 1000
      });
    } else {
      indicator.addClass('jp-IdleExt-top');
      app.shell.add(indicator, 'top', { rank: 1000 });
    }

    // the kernels this page has seen, to say which of its kernels a cull stopped
    const kernelPaths = new Map<string, string>();
    const seenActions = new Set<string>();
    let firstRead = true;
    let warningId: string | null = null;
    // the rule and the time of the warning shown: a later time under the same rule (stop when
    // done, pushed by each save) updates it in place, and leaves it closed if the person closed it
    let warnedRule: string | null = null;
    let warnedAt = 0;
    let stoppedShown = false;
    let stoppedByUser = false;
    // this page, to the server's list of unsaved documents; what it last told it; what the stop
    // saved (by this page or by the server), for the stopped dialog
    const pageId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    let lastReport = '';
    let savedAtStop: ISaved[] = [];
    let savingForStop: Promise<void> | null = null;
    let lastEditSent = 0;
    let editPending = 0;

    /** The open documents (each once), by the shell's main-area widgets' contexts. */
    const openDocuments = (): { context: IDocContext; node: HTMLElement }[] => {
      const found = new Map<string, { context: IDocContext; node: HTMLElement }>();
      for (const widget of app.shell.widgets('main')) {
        const context = (widget as any).context as IDocContext | undefined;
        if (context?.path && context.model && !found.has(context.path)) {
          found.set(context.path, { context, node: widget.node });
        }
      }
      return [...found.values()];
    };

    const unsavedContexts = (): IDocContext[] =>
      openDocuments()
        .map(d => d.context)
        .filter(
          c =>
            c.model.dirty &&
            ['notebook', 'file'].includes(c.contentsModel?.type ?? 'file') &&
            // saved beside it at the stop: the page still holds it unsaved, the server need not
            !savedAtStop.some(s => s.path === c.path)
        );

    const draft = (context: IDocContext, withContent: boolean): Record<string, unknown> => {
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
    };

    /** Tell the server what this page holds unsaved; near a stop, with the content. */
    const reportUnsaved = async (withContent: boolean, saved: ISaved[] = []) => {
      const documents = unsavedContexts().map(c => draft(c, withContent));
      const report = JSON.stringify({ documents, saved });
      // an unchanged report is sent again with each read of the status, so the server knows
      // the page is still there; an empty one only once
      if (report === lastReport && !documents.length && !saved.length) {
        return;
      }
      lastReport = report;
      try {
        await client.reportUnsaved({ page: pageId, documents, saved });
      } catch {
        lastReport = '';
      }
    };

    /** At the stop: save each unsaved document, beside it when it changed on disk. */
    const saveForStop = async () => {
      const saved: ISaved[] = [];
      for (const context of unsavedContexts()) {
        try {
          const contents = app.serviceManager.contents;
          const loaded = context.contentsModel?.last_modified;
          let changed = false;
          try {
            const disk = await contents.get(context.path, { content: false });
            changed =
              !loaded ||
              Date.parse(disk.last_modified) - Date.parse(loaded) > CHANGED_ON_DISK_MS;
          } catch {
            changed = false; // gone from disk: nothing to overwrite
          }
          if (changed) {
            const target = beside(context.path, new Date());
            const { type, format, content } = draft(context, true) as any;
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
      savedAtStop = [...savedAtStop, ...saved];
      await reportUnsaved(true, saved);
    };

    // a person's edits in a document: keystrokes, pastes, cuts and drops (input, never timers,
    // focus or visibility); the first at once, then at most every EDIT_EVERY_MS
    const onEdit = (event: Event) => {
      if (!event.isTrusted || stoppedShown) {
        return;
      }
      if (event instanceof KeyboardEvent && !isEditKey(event)) {
        return;
      }
      const target = event.target as Node | null;
      const document = openDocuments().find(d => target && d.node.contains(target));
      if (!document) {
        return;
      }
      const send = () => {
        lastEditSent = Date.now();
        void client.edited(document.context.path).catch(() => {
          lastEditSent = 0;
        });
      };
      const wait = lastEditSent + EDIT_EVERY_MS - Date.now();
      if (wait <= 0) {
        send();
      } else if (!editPending) {
        // the last edits of a burst are told too, at most EDIT_EVERY_MS late
        editPending = window.setTimeout(() => {
          editPending = 0;
          send();
        }, wait);
      }
    };
    for (const type of ['keydown', 'paste', 'cut', 'drop']) {
      window.addEventListener(type, onEdit, true);
    }

    const render = () => {
      const status = client.status;
      if (!status) {
        return;
      }
      indicator.node.textContent = describe(status, client.elapsed());
      indicator.node.classList.toggle('jp-mod-warn', status.server.action !== 'keep');
    };

    const keepWorkingSeconds = () => Math.min(client.status?.keepalive_cap_seconds ?? 0, 3600);

    const keepWorking = async () => {
      await client.keepWorking(keepWorkingSeconds());
      await refresh();
    };

    const stopNow = async () => {
      stoppedByUser = true;
      await client.stopNow();
    };

    const warn = (status: IStatus) => {
      const warning = status.server.warning;
      if (!warning) {
        if (warningId) {
          Notification.dismiss(warningId);
          warningId = warnedRule = null;
        }
        return;
      }
      const left = duration((status.server.seconds_to_shutdown ?? 0) - client.elapsed());
      const why =
        status.server.rule === 'stop_when_done'
          ? 'you asked to stop when done'
          : status.unsaved?.note
            ? `nothing has run; ${status.unsaved.note}`
            : 'nothing has run or changed';
      const message = `The server will stop at ${clock(warning.shutdown_at)} (in ${left}): ${why}.`;
      const minutes = Math.round(keepWorkingSeconds() / 60);
      const actions: Notification.IAction[] = [];
      if (minutes > 0) {
        actions.push({
          label: `Keep working (${minutes} min)`,
          callback: () => void keepWorking(),
          displayType: 'accent'
        });
      }
      actions.push({ label: 'Stop now', callback: () => void stopNow(), displayType: 'warn' });
      const at = Date.parse(warning.shutdown_at);
      if (warningId && warnedRule === warning.rule && at >= warnedAt - 1000) {
        Notification.update({ id: warningId, message, type: 'warning', actions, autoClose: false });
        warnedAt = at;
        return;
      }
      if (warningId) {
        Notification.dismiss(warningId);
      }
      warningId = Notification.warning(message, { autoClose: false, actions });
      warnedRule = warning.rule;
      warnedAt = at;
    };

    const rememberKernels = () => {
      for (const session of app.serviceManager.sessions.running()) {
        if (session.kernel) {
          kernelPaths.set(session.kernel.id, session.path);
        }
      }
    };

    const sayWhatWasStopped = (status: IStatus) => {
      for (const entry of status.recent) {
        const key = `${entry.time} ${entry.action} ${entry.id ?? ''}`;
        if (seenActions.has(key)) {
          continue;
        }
        seenActions.add(key);
        if (firstRead || (entry.action !== 'kernel_culled' && entry.action !== 'kernel_removed')) {
          continue;
        }
        const path = entry.id ? kernelPaths.get(entry.id) : undefined;
        if (path === undefined) {
          continue; // not a kernel of this page
        }
        const message =
          `Kernel ${entry.name ?? ''}${entry.remote ? ` on the gateway ${entry.remote}` : ''} of ${path} was stopped at ${clock(entry.time)}` +
          (entry.action === 'kernel_culled' ? ` because it was idle: ${entry.reason}.` : `: ${entry.reason}.`) +
          ' Its variables are gone; run the notebook again to get them back.';
        // a toast shows a few lines: the whole message is one click away
        Notification.info(message, {
          autoClose: false,
          actions: [
            {
              label: 'Details',
              callback: () =>
                void showDialog({
                  title: 'Kernel stopped',
                  body: message,
                  buttons: [Dialog.okButton({ label: 'Close' })]
                })
            }
          ]
        });
      }
    };

    const sayStopped = async () => {
      if (stoppedShown) {
        return;
      }
      stoppedShown = true;
      if (warningId) {
        Notification.dismiss(warningId);
      }
      const status = client.status;
      const at = clock(status?.server.shutdown_at ?? null) || clock(new Date().toISOString());
      let why = `Nothing ran or changed on it for ${duration(Number(status?.policy.server_idle_timeout ?? 0))}, so it was stopped at ${at} to free what it held. Your saved files are kept.`;
      if (stoppedByUser) {
        why = 'You stopped the server. Your saved files are kept.';
      } else if (status?.server.rule === 'stop_when_done') {
        why = `You asked to stop the server when your work was done; it stopped at ${at}. Your saved files are kept.`;
      } else if (status?.server.rule === 'max_server_age') {
        why = `The server reached its maximum age and was stopped at ${at}. Your saved files are kept.`;
      }
      const saves = [...savedAtStop];
      for (const entry of status?.unsaved?.saved ?? []) {
        if (!saves.some(s => s.path === entry.path)) {
          saves.push(entry);
        }
      }
      if (saves.length) {
        why = `${why} ${describeSaves(saves)}`;
      }
      indicator.node.textContent = `Server stopped at ${at}`;
      const spawn = hubSpawnUrl();
      const buttons = [Dialog.cancelButton({ label: 'Close' })];
      if (spawn) {
        buttons.push(Dialog.okButton({ label: 'Start my server again' }));
      }
      const result = await showDialog({
        title: stoppedByUser ? 'Server stopped' : 'Server stopped for idleness',
        body: why,
        buttons
      });
      if (result.button.accept && spawn) {
        window.location.href = spawn;
      }
    };

    // the next read, planned again after every read (also one a click asked for): a read that
    // finds the server warning reads again in NEAR_POLL_MS, not in a POLL_MS planned before it
    let timer = 0;
    const schedule = () => {
      window.clearTimeout(timer);
      if (stoppedShown) {
        return;
      }
      const left = client.status?.server.seconds_to_shutdown;
      const near =
        client.status?.server.action !== 'keep' ||
        (left !== null && left !== undefined && left - client.elapsed() < NEAR_S);
      const due =
        client.status?.server.action === 'shutdown' ||
        client.status?.unsaved?.saving ||
        (left !== null && left !== undefined && left - client.elapsed() < NEAR_POLL_MS / 1000 + 1);
      timer = window.setTimeout(
        () => void refresh(),
        due ? DUE_POLL_MS : near ? NEAR_POLL_MS : POLL_MS
      );
    };

    const refresh = async () => {
      try {
        rememberKernels();
        const status = await client.read();
        sayWhatWasStopped(status);
        firstRead = false;
        render();
        warn(status);
        if (status.unsaved?.saving) {
          // the idle stop is saving: this page saves its own documents, once
          savingForStop ??= saveForStop();
          await savingForStop;
        } else {
          // near a stop, with their content: the server saves them if this page cannot
          const near = status.server.warning !== null || status.server.action !== 'keep';
          await reportUnsaved(near);
        }
      } catch (error) {
        client.failures += 1;
        if (client.stoppingSoon() || stoppedByUser) {
          await sayStopped();
        }
      } finally {
        schedule();
      }
    };

    indicator.node.addEventListener('click', async () => {
      await refresh();
      const status = client.status;
      if (!status) {
        return;
      }
      const minutes = Math.round(keepWorkingSeconds() / 60);
      const buttons = [Dialog.cancelButton({ label: 'Close' })];
      if (minutes > 0) {
        buttons.push(Dialog.okButton({ label: `Keep working (${minutes} min)`, actions: ['keep'] }));
      }
      buttons.push(
        Dialog.okButton({
          label: status.stop_when_done ? 'Cancel stop when done' : 'Stop when done',
          actions: ['stop-when-done']
        })
      );
      const result = await showDialog({
        title: 'Idle shutdown',
        body: details(status, client.elapsed()),
        buttons
      });
      if (result.button.actions.includes('keep')) {
        await keepWorking();
      } else if (result.button.actions.includes('stop-when-done')) {
        await client.stopWhenDone(!status.stop_when_done);
        await refresh();
      }
    });

    // the countdown moves every second, between two reads of the status, in the warning too
    let dirtyPaths = '';
    window.setInterval(() => {
      if (!stoppedShown && client.status) {
        render();
        warn(client.status);
        // a document became unsaved, or saved: the server hears it now, not at the next read
        const paths = unsavedContexts()
          .map(c => c.path)
          .join('\n');
        if (paths !== dirtyPaths) {
          dirtyPaths = paths;
          const near = client.status.server.warning !== null;
          void reportUnsaved(near);
        }
      }
    }, 1000);

    // the server going away without a status read failing (another request noticed first);
    // Notebook 7 never calls IConnectionLost, JupyterLab calls the one below
    lost.explain = () => {
      if (client.stoppingSoon() || stoppedByUser) {
        void sayStopped();
        return true;
      }
      return false;
    };
    app.serviceManager.connectionFailure.connect(() => void lost.explain());

    // notifications emitted before the application is restored are dropped: start after it
    void app.restored.then(() => refresh());
  }
};

/**
 * The "server unavailable" dialog, replaced (its default plugins are disabled in package.json):
 * after an idle shutdown the plugin above says why instead; any other loss of the connection
 * gets the usual message, with the Hub's "start it again" where there is a Hub.
 */
const connectionLost: JupyterFrontEndPlugin<IConnectionLost> = {
  id: 'jupyter-idle-ext:connectionlost',
  description: 'Says why the server is gone when it was stopped for idleness.',
  autoStart: true,
  provides: IConnectionLost,
  activate: (): IConnectionLost => {
    let showing = false;
    return async (manager: ServiceManager.IManager, err: ServerConnection.NetworkError) => {
      if (lost.explain() || showing) {
        return; // an idle shutdown, explained by the indicator's plugin; or already showing
      }
      showing = true;
      const spawn = hubSpawnUrl();
      const buttons = [Dialog.cancelButton({ label: 'Dismiss' })];
      if (spawn) {
        buttons.push(Dialog.okButton({ label: 'Start my server again' }));
      }
      const result = await showDialog({
        title: 'Server unavailable or unreachable',
        body:
          'A connection to the Jupyter server could not be established; the page goes on ' +
          `trying. ${err.message ?? ''}`,
        buttons
      });
      showing = false;
      if (result.button.accept && spawn) {
        window.location.href = spawn;
      }
    };
  }
};

export default [plugin, connectionLost];
