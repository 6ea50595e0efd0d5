/**
 * The page's model of the idle shutdown: the last status read, re-read by a @lumino/polling Poll
 * at the pace the status asks for (every 30 s, every 5 s near a stop, each second at it), and a
 * second Poll that ticks each second so that the views' countdowns move between reads. Views
 * connect to its signals; disposing it stops both polls.
 */
import type { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { type ISignal, Signal } from '@lumino/signaling';

import type { IdleClient } from './client';
import { POLL_MS, pollInterval } from './format';
import type { IStatus } from './status';

export class IdleModel implements IDisposable {
  constructor(options: {
    client: IdleClient;
    /** Work that belongs to each read, awaited before the next one is planned. */
    afterRead?: (status: IStatus) => Promise<void>;
  }) {
    this.client = options.client;
    this._afterRead = options.afterRead ?? (() => Promise.resolve());
    this._reads = new Poll({
      auto: false,
      factory: () => this._read(),
      frequency: { interval: POLL_MS, backoff: false, max: POLL_MS },
      standby: 'never',
      name: 'jupyter-idle-ext:status'
    });
    this._ticks = new Poll({
      auto: false,
      factory: async () => this._ticked.emit(undefined),
      frequency: { interval: 1000, backoff: false, max: 1000 },
      standby: 'never',
      name: 'jupyter-idle-ext:countdown'
    });
  }

  readonly client: IdleClient;
  /** The last status read, and when (Date.now()). */
  status: IStatus | null = null;
  receivedAt = 0;
  /** Reads failed since the last one that worked. */
  failures = 0;

  /** Seconds since the status was read. */
  elapsed(): number {
    return (Date.now() - this.receivedAt) / 1000;
  }

  /** Each status read. */
  get changed(): ISignal<this, IStatus> {
    return this._changed;
  }

  /** Each read that failed (the server may be gone). */
  get failed(): ISignal<this, unknown> {
    return this._failed;
  }

  /** Each second, for the countdowns. */
  get ticked(): ISignal<this, void> {
    return this._ticked;
  }

  get isDisposed(): boolean {
    return this._reads.isDisposed;
  }

  /** Start reading (once the application is restored: earlier notifications are dropped). */
  start(): void {
    void this._reads.start();
    void this._ticks.start();
  }

  /** Read now; resolves once that read and its work are done (a read asked for earlier and
   * still under way may predate what the caller just did: it is waited for, then one more). */
  async refresh(): Promise<void> {
    if (this.isDisposed || this._stopped) {
      return;
    }
    if (this._reads.state.phase === 'refreshed') {
      await this._reads.tick;
    }
    await this._reads.refresh();
    await this._reads.tick;
  }

  /** Whether the server is gone (no more reads). */
  get stopped(): boolean {
    return this._stopped;
  }

  /** No more reads or ticks, for good: the server is gone. */
  stop(): void {
    this._stopped = true;
    void this._reads.stop();
    void this._ticks.stop();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._reads.dispose();
    this._ticks.dispose();
    Signal.clearData(this);
  }

  private async _read(): Promise<void> {
    try {
      const status = await this.client.read();
      this.status = status;
      this.receivedAt = Date.now();
      this.failures = 0;
      this._changed.emit(status);
      await this._afterRead(status);
    } catch (error) {
      this.failures += 1;
      this._failed.emit(error);
    } finally {
      if (!this.isDisposed) {
        // the next read at the pace this one asks for (a failed read: as the last good one)
        this._reads.frequency = {
          interval: pollInterval(this.status, this.elapsed()),
          backoff: false,
          max: POLL_MS
        };
      }
    }
  }

  private _afterRead: (status: IStatus) => Promise<void>;
  private _stopped = false;
  private _reads: Poll;
  private _ticks: Poll;
  private _changed = new Signal<this, IStatus>(this);
  private _failed = new Signal<this, unknown>(this);
  private _ticked = new Signal<this, void>(this);
}
