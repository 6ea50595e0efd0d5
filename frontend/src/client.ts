/**
 * The REST client of api/idle: reads the status (never activity), and asks for a keep-alive, a
 * "stop when done", an edit or the unsaved documents when the person or the page does.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { ISaved, IStatus, IUnsavedStatus } from './status';

export class IdleClient {
  constructor(readonly settings: ServerConnection.ISettings) {}

  async request(path: string, init: RequestInit = {}): Promise<any> {
    const url = URLExt.join(this.settings.baseUrl, 'api/idle', path);
    const response = await ServerConnection.makeRequest(url, init, this.settings);
    if (!response.ok) {
      throw new ServerConnection.ResponseError(response);
    }
    return response.json();
  }

  read(): Promise<IStatus> {
    return this.request('') as Promise<IStatus>;
  }

  keepWorking(seconds: number): Promise<unknown> {
    return this.request('keepalive', {
      method: 'POST',
      body: JSON.stringify({ seconds })
    });
  }

  stopWhenDone(on: boolean): Promise<unknown> {
    return this.request(
      'stop-when-done',
      on ? { method: 'POST', body: '{}' } : { method: 'DELETE' }
    );
  }

  edited(path: string): Promise<unknown> {
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
}
