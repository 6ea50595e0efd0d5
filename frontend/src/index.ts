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
 * - A person typing into an open document is activity, saved or not; before an idle stop the
 *   page saves its unsaved documents, never overwriting a file changed on disk (documents.ts).
 *
 * It only reads GET api/idle, which is never activity, so an open tab never keeps the server up:
 * a keep-alive comes from a click, never from the tab itself.
 *
 * The parts: status.ts (what api/idle says), format.ts (pure: the text and the pace of reads),
 * client.ts (the REST calls), model.ts (the reads, a @lumino/polling Poll), documents.ts (the
 * page's open documents), views.ts (what the person sees); this file wires them.
 */
import { IConnectionLost, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection, ServiceManager } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Token } from '@lumino/coreutils';

import { IdleClient } from './client';
import { OpenDocuments } from './documents';
import { IdleModel } from './model';
import { Indicator, IdleViews, hubSpawnUrl } from './views';

export * from './format';
export type { IStatus } from './status';

/** The idle shutdown of this page, for the "server unavailable" dialog. */
export interface IIdleShutdown {
  /** Whether a lost connection is the announced stop; then the page has said so. */
  explainLoss(): boolean;
}

export const IIdleShutdown = new Token<IIdleShutdown>(
  'jupyter-idle-ext:IIdleShutdown',
  'Whether a lost connection is the idle shutdown the page was told of.'
);

const plugin: JupyterFrontEndPlugin<IIdleShutdown> = {
  id: 'jupyter-idle-ext:plugin',
  description: 'The idle shutdown in front of the person it affects.',
  autoStart: true,
  optional: [IStatusBar],
  provides: IIdleShutdown,
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null): IIdleShutdown => {
    const client = new IdleClient(app.serviceManager.serverSettings);
    const documents = new OpenDocuments(app, client);
    const model = new IdleModel({ client, afterRead: status => documents.afterRead(status) });
    const indicator = new Indicator();
    const views = new IdleViews(app, model, documents, indicator);
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
    // the server going away without a status read failing (another request noticed first);
    // Notebook 7 never calls IConnectionLost, JupyterLab calls the one below
    app.serviceManager.connectionFailure.connect(() => views.explainLoss());
    // notifications emitted before the application is restored are dropped: start after it
    void app.restored.then(() => model.start());
    return views;
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
  optional: [IIdleShutdown],
  provides: IConnectionLost,
  activate: (app: JupyterFrontEnd, idle: IIdleShutdown | null): IConnectionLost => {
    let showing = false;
    return async (manager: ServiceManager.IManager, err: ServerConnection.NetworkError) => {
      if (idle?.explainLoss() || showing) {
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
