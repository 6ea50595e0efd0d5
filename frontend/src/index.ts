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

/** How often the status is read; more often when a shutdown is near. */
const POLL_MS = 30_000;
const NEAR_POLL_MS = 5_000;
const NEAR_S = 120;

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
      const message =
        `The server will stop at ${clock(warning.shutdown_at)} (in ${left}): ` +
        `${status.server.rule === 'stop_when_done' ? 'you asked to stop when done' : 'nothing has run or changed'}.`;
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
        Notification.info(
          `Kernel ${entry.name ?? ''}${entry.remote ? ` on the gateway ${entry.remote}` : ''} of ${path} was stopped at ${clock(entry.time)}` +
            (entry.action === 'kernel_culled' ? ` because it was idle: ${entry.reason}.` : `: ${entry.reason}.`) +
            ' Its variables are gone; run the notebook again to get them back.',
          { autoClose: false }
        );
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
      indicator.node.textContent = `Server stopped at ${at}`;
      const hubPrefix = PageConfig.getOption('hubPrefix');
      const buttons = [Dialog.cancelButton({ label: 'Close' })];
      if (hubPrefix) {
        buttons.push(Dialog.okButton({ label: 'Start it again' }));
      }
      const result = await showDialog({
        title: stoppedByUser ? 'Server stopped' : 'Server stopped for idleness',
        body: why,
        buttons
      });
      if (result.button.accept && hubPrefix) {
        const hubHost = PageConfig.getOption('hubHost');
        window.location.href = hubHost + URLExt.join(hubPrefix, 'home');
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
      timer = window.setTimeout(() => void refresh(), near ? NEAR_POLL_MS : POLL_MS);
    };

    const refresh = async () => {
      try {
        rememberKernels();
        const status = await client.read();
        sayWhatWasStopped(status);
        firstRead = false;
        render();
        warn(status);
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
    window.setInterval(() => {
      if (!stoppedShown && client.status) {
        render();
        warn(client.status);
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
      const hubPrefix = PageConfig.getOption('hubPrefix');
      const buttons = [Dialog.cancelButton({ label: 'Dismiss' })];
      if (hubPrefix) {
        buttons.push(Dialog.okButton({ label: 'Start it again' }));
      }
      const result = await showDialog({
        title: 'Server unavailable or unreachable',
        body:
          'A connection to the Jupyter server could not be established; the page goes on ' +
          `trying. ${err.message ?? ''}`,
        buttons
      });
      showing = false;
      if (result.button.accept && hubPrefix) {
        window.location.href = PageConfig.getOption('hubHost') + URLExt.join(hubPrefix, 'home');
      }
    };
  }
};

export default [plugin, connectionLost];
