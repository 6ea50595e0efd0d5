/**
 * The status document of GET api/idle (jupyter_idle_ext/rest-api.yml), as the page reads it.
 */

/** One thing a reason says (its text in jupyter_idle_ext/reasons.json, by ``says``). */
export interface IClause {
  says: string;
  rule?: string;
  limit?: number;
  subject?: string;
  count?: number;
  at?: string;
  detail?: string;
}

/** Why a decision was made, as data: its clauses and its durations when read (seconds). */
export interface IWhy {
  clauses: IClause[];
  seconds: Record<string, number>;
}

export interface IDecided {
  action: string;
  reason: string;
  why?: IWhy;
}

export interface IKernelStatus extends IDecided {
  id: string;
  name: string;
  execution_state: string;
  idle_seconds: number;
  busy_seconds: number | null;
  connections: number | null;
  remote?: string | null;
  cull_at: string | null;
}

export interface ITerminalStatus extends IDecided {
  name: string;
  cull_at: string | null;
}

export interface ISourceStatus {
  kind: string;
  name: string;
  detail: string;
  busy_seconds: number | null;
  reason: string;
  why?: IWhy;
}

/** One of the recent actions: a cull, a warning, a stop. */
export interface IRecent {
  action: string;
  kind?: string;
  id?: string;
  name?: string;
  remote?: string;
  reason: string;
  rule?: string;
  time: string;
}

/** A document saved at the stop: in place, or beside it when it had changed on disk. */
export interface ISaved {
  path: string;
  saved_as: string;
  by?: string;
  changed_on_disk: boolean;
}

export interface IUnsavedStatus {
  documents: string[];
  note: string;
  saving: boolean;
  saved: ISaved[];
  /** In the reply to a page's report: the paths whose copy from that page the server holds. */
  copies?: string[];
}

export interface IServerStatus {
  action: 'keep' | 'warn' | 'shutdown';
  rule: string | null;
  reason: string;
  why?: IWhy;
  shutdown_at: string | null;
  seconds_to_shutdown: number | null;
  warning: { shutdown_at: string; rule: string; reason: string } | null;
  kept_by: { what: string; busy_seconds: number } | null;
}

export interface IStatus {
  now: string;
  last_activity: string;
  idle_seconds: number;
  server: IServerStatus;
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
