/**
 * What the person sees: the indicator (JupyterLab's status bar; Notebook 7 has none, so its
 * header), its panel, the warning with "Keep working" and "Stop now", the notice of a culled
 * kernel, and the dialog once the server has stopped. All of it from the model's reads, with the
 * text from format.ts.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import type { IDisposable } from '@lumino/disposable';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import type { OpenDocuments } from './documents';
import {
  cullNotice,
  describe,
  explain,
  keepWorkingSeconds,
  spawnUrl,
  stoppedMessage,
  stoppingSoon,
  warningMessage
} from './format';
import type { IdleModel } from './model';
import type { IStatus } from './status';

// react-toastify applies an update of a toast one timer tick later, and an update that lands
// after a dismissal brings the toast back for good; the countdown updates the warning every
// second, so the warning is dismissed a moment after the last update
const DISMISS_AFTER_UPDATES_MS = 500;

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

/** The Hub's page that starts this server again, or null without a Hub. */
export function hubSpawnUrl(): string | null {
  return spawnUrl({
    hubHost: PageConfig.getOption('hubHost'),
    hubPrefix: PageConfig.getOption('hubPrefix'),
    hubUser: PageConfig.getOption('hubUser'),
    hubServerName: PageConfig.getOption('hubServerName')
  });
}

/** The explanation shown when the indicator is clicked. */
function details(status: IStatus, elapsed: number): Widget {
  const { lines, sections, rule } = explain(status, elapsed);
  const body = node('div', undefined, 'jp-IdleExt-details');
  for (const line of lines) {
    body.appendChild(node('p', line));
  }
  for (const [title, items] of sections) {
    const ul = node('ul');
    for (const item of items) {
      ul.appendChild(node('li', item));
    }
    body.appendChild(node('h4', title));
    body.appendChild(ul);
  }
  body.appendChild(node('p', rule));
  return new Widget({ node: body });
}

/** The indicator: when the server stops, or what keeps it; a click explains. */
export class Indicator extends Widget {
  constructor() {
    super({ node: node('div', '', 'jp-IdleExt-indicator') });
    this.id = 'jupyter-idle-ext-indicator';
    this.node.title = 'jupyter_idle_ext: click for why';
  }

  render(status: IStatus, elapsed: number): void {
    this.node.textContent = describe(status, elapsed);
    this.node.classList.toggle('jp-mod-warn', status.server.action !== 'keep');
  }
}

/** The indicator, the notices and the dialogs of one page, driven by its model. */
export class IdleViews implements IDisposable {
  constructor(
    private app: JupyterFrontEnd,
    private model: IdleModel,
    private documents: OpenDocuments,
    readonly indicator: Indicator
  ) {
    model.changed.connect(this._onRead, this);
    model.failed.connect(this._onFailed, this);
    model.ticked.connect(this._onTick, this);
    indicator.node.addEventListener('click', this._onClick);
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /**
   * Whether a lost connection is the idle shutdown the status announced (or the person's "Stop
   * now"): then this page says so, once, instead of the generic "server unavailable".
   */
  explainLoss(): boolean {
    if (stoppingSoon(this.model.status, this.model.elapsed()) || this._stoppedByUser) {
      void this._sayStopped();
      return true;
    }
    return false;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.indicator.node.removeEventListener('click', this._onClick);
    Signal.disconnectReceiver(this);
  }

  private _onRead(model: IdleModel, status: IStatus): void {
    if (this._stoppedShown) {
      return; // a read that was under way as the server stopped
    }
    this._rememberKernels();
    this._sayWhatWasStopped(status);
    this._firstRead = false;
    this.indicator.render(status, model.elapsed());
    this._warn(status);
  }

  private _onFailed(): void {
    this.explainLoss();
  }

  // the countdown moves every second, between two reads of the status, in the warning too
  private _onTick(model: IdleModel): void {
    const status = model.status;
    if (this._stoppedShown || !status) {
      return;
    }
    this._rememberKernels();
    this.indicator.render(status, model.elapsed());
    this._warn(status);
    this.documents.checkDirty(status);
  }

  // the kernels this page has seen, to say which of its kernels a cull stopped
  private _rememberKernels(): void {
    for (const session of this.app.serviceManager.sessions.running()) {
      if (session.kernel) {
        this._kernelPaths.set(session.kernel.id, session.path);
      }
    }
  }

  private _sayWhatWasStopped(status: IStatus): void {
    for (const entry of status.recent) {
      const key = `${entry.time} ${entry.action} ${entry.id ?? ''}`;
      if (this._seenActions.has(key)) {
        continue;
      }
      this._seenActions.add(key);
      if (
        this._firstRead ||
        (entry.action !== 'kernel_culled' && entry.action !== 'kernel_removed')
      ) {
        continue;
      }
      const path = entry.id ? this._kernelPaths.get(entry.id) : undefined;
      if (path === undefined) {
        continue; // not a kernel of this page
      }
      const message = cullNotice(entry, path);
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
  }

  private _warn(status: IStatus): void {
    const warning = status.server.warning;
    const message = warningMessage(status, this.model.elapsed());
    if (!warning || message === null) {
      this._dismissWarning();
      return;
    }
    const minutes = Math.round(keepWorkingSeconds(status) / 60);
    const actions: Notification.IAction[] = [];
    if (minutes > 0) {
      actions.push({
        label: `Keep working (${minutes} min)`,
        callback: () => void this._keepWorking(),
        displayType: 'accent'
      });
    }
    actions.push({ label: 'Stop now', callback: () => void this._stopNow(), displayType: 'warn' });
    // a later time under the same rule (stop when done, pushed by each save) updates the warning
    // in place, and leaves it closed if the person closed it
    const at = Date.parse(warning.shutdown_at);
    if (this._warningId && this._warnedRule === warning.rule && at >= this._warnedAt - 1000) {
      Notification.update({
        id: this._warningId,
        message,
        type: 'warning',
        actions,
        autoClose: false
      });
      this._warnedAt = at;
      return;
    }
    this._dismissWarning();
    this._warningId = Notification.warning(message, { autoClose: false, actions });
    this._warnedRule = warning.rule;
    this._warnedAt = at;
  }

  private _dismissWarning(): void {
    const id = this._warningId;
    this._warningId = this._warnedRule = null;
    if (id) {
      window.setTimeout(() => Notification.dismiss(id), DISMISS_AFTER_UPDATES_MS);
    }
  }

  private async _keepWorking(): Promise<void> {
    await this.model.client.keepWorking(keepWorkingSeconds(this.model.status));
    await this.model.refresh();
  }

  private async _stopNow(): Promise<void> {
    this._stoppedByUser = true;
    await this.model.client.stopNow();
  }

  private async _sayStopped(): Promise<void> {
    if (this._stoppedShown) {
      return;
    }
    this._stoppedShown = true;
    this.model.stop();
    this.documents.stop();
    this._dismissWarning();
    const { title, body, at } = stoppedMessage({
      status: this.model.status,
      byUser: this._stoppedByUser,
      saved: this.documents.savedAtStop,
      now: new Date()
    });
    this.indicator.node.textContent = `Server stopped at ${at}`;
    const spawn = hubSpawnUrl();
    const buttons = [Dialog.cancelButton({ label: 'Close' })];
    if (spawn) {
      buttons.push(Dialog.okButton({ label: 'Start my server again' }));
    }
    const result = await showDialog({ title, body, buttons });
    if (result.button.accept && spawn) {
      window.location.href = spawn;
    }
  }

  private _onClick = async (): Promise<void> => {
    if (this._stoppedShown) {
      return;
    }
    await this.model.refresh();
    const status = this.model.status;
    if (!status) {
      return;
    }
    const minutes = Math.round(keepWorkingSeconds(status) / 60);
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
      body: details(status, this.model.elapsed()),
      buttons
    });
    if (result.button.actions.includes('keep')) {
      await this._keepWorking();
    } else if (result.button.actions.includes('stop-when-done')) {
      await this.model.client.stopWhenDone(!status.stop_when_done);
      await this.model.refresh();
    }
  };

  private _kernelPaths = new Map<string, string>();
  private _seenActions = new Set<string>();
  private _firstRead = true;
  private _warningId: string | null = null;
  private _warnedRule: string | null = null;
  private _warnedAt = 0;
  private _stoppedShown = false;
  private _stoppedByUser = false;
  private _disposed = false;
}
