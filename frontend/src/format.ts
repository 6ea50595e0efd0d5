/**
 * Pure functions: what the page says and decides from a status read, with no DOM and no
 * JupyterLab, so that they are unit-tested on their own (test/format.test.ts).
 */
import reasons from './reasons.json';
import type { IRecent, ISaved, IStatus, IWhy } from './status';

/** How often the status is read; more often when a shutdown is near, each second at its time. */
export const POLL_MS = 30_000;
export const NEAR_POLL_MS = 5_000;
export const NEAR_S = 120;
export const DUE_POLL_MS = 1_000;

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

/**
 * Where a version that must not overwrite ``path`` goes: "notes.unsaved-<time>.txt" (UTC), or
 * "notes.unsaved-<time>-<n>.txt" for the n-th in the same second (as the server names them).
 */
export function beside(path: string, now: Date, n = 1): string {
  const slash = path.lastIndexOf('/');
  const directory = path.slice(0, slash + 1);
  const name = path.slice(slash + 1);
  const dot = name.startsWith('.') ? -1 : name.indexOf('.');
  const stem = dot < 0 ? name : name.slice(0, dot);
  const extension = dot < 0 ? '' : name.slice(dot);
  const stamp =
    now
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z') + (n > 1 ? `-${n}` : '');
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

/** A duration as the server's reasons say it: "12 s" (jupyter_idle_ext/reasons.py, seconds). */
function reasonSeconds(value: number): string {
  return `${Math.round(Math.max(0, value))} s`;
}

/**
 * A reason's text from its ``why``, ``elapsed`` seconds after the read: the server's texts
 * (reasons.json), with its durations moved on ("idle 12 s" becomes "idle 42 s" 30 s later).
 */
export function reasonText(why: IWhy, elapsed: number): string {
  const phrases: Record<string, string> = reasons.phrases;
  const joins: Record<string, string> = reasons.joins;
  const values: Record<string, string> = {};
  for (const [name, value] of Object.entries(why.seconds ?? {})) {
    values[name] = reasonSeconds(name === 'left' ? value - elapsed : value + elapsed);
  }
  return why.clauses
    .map((clause, i) => {
      const fields: Record<string, string> = { ...values };
      for (const [name, value] of Object.entries(clause)) {
        fields[name] = String(value);
      }
      if (clause.limit !== undefined && clause.limit !== null) {
        fields.limit = reasonSeconds(clause.limit);
      }
      // a field the clause does not have says nothing, as on the server
      const text = (phrases[clause.says] ?? clause.says).replace(/\{(\w+)\}/g, (_field, name) =>
        name in fields ? fields[name] : ''
      );
      return (i ? (joins[clause.says] ?? '; ') : '') + text;
    })
    .join('');
}

/** A reason as of ``elapsed`` seconds after the read (its text when it has no why). */
export function reasonOf(said: { reason: string; why?: IWhy }, elapsed: number): string {
  return said.why ? reasonText(said.why, elapsed) : said.reason;
}

/** A time of day in the person's locale ("14:05"), or "" for none. */
export function clock(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Seconds to the shutdown, ``elapsed`` seconds after the status was read; null: none planned. */
export function secondsLeft(status: IStatus, elapsed: number): number | null {
  const left = status.server.seconds_to_shutdown;
  return left === null || left === undefined ? null : left - elapsed;
}

/** The indicator's text: when the server stops, or what keeps it. */
export function describe(status: IStatus, elapsed: number): string {
  const server = status.server;
  if (server.action === 'shutdown') {
    return 'Stopping the server now';
  }
  const left = secondsLeft(status, elapsed);
  if (server.rule === null) {
    // what the policy itself says keeps the server, with its clock moving between reads
    const keptBy = server.kept_by;
    const kept = keptBy
      ? `${keptBy.what} ${duration(keptBy.busy_seconds + elapsed)}`
      : reasonOf(server, elapsed);
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

/** Did the last status say the server was about to stop (so its absence is that stop)? */
export function stoppingSoon(status: IStatus | null, elapsed: number): boolean {
  if (!status) {
    return false;
  }
  if (status.server.action !== 'keep') {
    return true;
  }
  const left = secondsLeft(status, elapsed);
  return left !== null && left < 15;
}

/** When to read the status next, in ms: every 30 s, every 5 s near a stop, each second at it. */
export function pollInterval(status: IStatus | null, elapsed: number): number {
  if (!status) {
    return POLL_MS;
  }
  const left = secondsLeft(status, elapsed);
  const due =
    status.server.action === 'shutdown' ||
    Boolean(status.unsaved?.saving) ||
    (left !== null && left < NEAR_POLL_MS / 1000 + 1);
  if (due) {
    return DUE_POLL_MS;
  }
  const near = status.server.action !== 'keep' || (left !== null && left < NEAR_S);
  return near ? NEAR_POLL_MS : POLL_MS;
}

/** How long "Keep working" asks for: the server's cap, at most an hour. */
export function keepWorkingSeconds(status: IStatus | null): number {
  return Math.min(status?.keepalive_cap_seconds ?? 0, 3600);
}

/** The warning's text, or null while no shutdown is announced. */
export function warningMessage(status: IStatus, elapsed: number): string | null {
  const warning = status.server.warning;
  if (!warning) {
    return null;
  }
  const left = duration(secondsLeft(status, elapsed) ?? 0);
  const why =
    status.server.rule === 'stop_when_done'
      ? 'you asked to stop when done'
      : status.unsaved?.note
        ? `nothing has run; ${status.unsaved.note}`
        : 'nothing has run or changed';
  return `The server will stop at ${clock(warning.shutdown_at)} (in ${left}): ${why}.`;
}

/** The notice of a kernel of this page (open at ``path``) that was culled or removed. */
export function cullNotice(entry: IRecent, path: string): string {
  const where = entry.remote ? ` on the gateway ${entry.remote}` : '';
  const why =
    entry.action === 'kernel_culled'
      ? ` because it was idle: ${entry.reason}.`
      : `: ${entry.reason}.`;
  return (
    `Kernel ${entry.name ?? ''}${where} of ${path} was stopped at ${clock(entry.time)}${why}` +
    ' Its variables are gone; run the notebook again to get them back.'
  );
}

/** What the page says once the server has stopped: its title, its text, and when (a time of day). */
export function stoppedMessage(options: {
  status: IStatus | null;
  byUser: boolean;
  saved: ISaved[];
  now: Date;
}): { title: string; body: string; at: string } {
  const { status, byUser, saved } = options;
  const at = clock(status?.server.shutdown_at ?? null) || clock(options.now.toISOString());
  const kept = 'Your saved files are kept.';
  let body = `Nothing ran or changed on it for ${duration(Number(status?.policy.server_idle_timeout ?? 0))}, so it was stopped at ${at} to free what it held. ${kept}`;
  if (byUser) {
    body = `You stopped the server. ${kept}`;
  } else if (status?.server.rule === 'stop_when_done') {
    body = `You asked to stop the server when your work was done; it stopped at ${at}. ${kept}`;
  } else if (status?.server.rule === 'max_server_age') {
    body = `The server reached its maximum age and was stopped at ${at}. ${kept}`;
  }
  const saves = [...saved];
  for (const entry of status?.unsaved?.saved ?? []) {
    if (!saves.some(s => s.path === entry.path)) {
      saves.push(entry);
    }
  }
  if (saves.length) {
    body = `${body} ${describeSaves(saves)}`;
  }
  return { title: byUser ? 'Server stopped' : 'Server stopped for idleness', body, at };
}

/** The indicator's panel: what it says first, then its lists, then the rule. */
export function explain(
  status: IStatus,
  elapsed: number
): { lines: string[]; sections: [string, string[]][]; rule: string } {
  const lines = [describe(status, elapsed), `Why: ${reasonOf(status.server, elapsed)}.`];
  if (status.keepalive) {
    lines.push(`Keep-alive until ${clock(status.keepalive.until)}.`);
  }
  if (status.stop_when_done) {
    const waiting = status.stop_when_done.waiting_for;
    lines.push(
      `Stop when done (asked at ${clock(status.stop_when_done.since)})${waiting ? `, waiting for: ${waiting}` : ''}.`
    );
  }
  const sections: [string, string[]][] = [
    [
      'Kernels',
      status.kernels.map(
        k =>
          `${k.name} (${k.id.slice(0, 8)})${k.remote ? ` on the gateway ${k.remote}` : ''}, ${k.execution_state}: ${reasonOf(k, elapsed)}` +
          (k.cull_at ? `; stopped at ${clock(k.cull_at)} if nothing happens` : '')
      )
    ],
    ['Terminals', status.terminals.map(t => `${t.name}: ${reasonOf(t, elapsed)}`)],
    ['Other activity', status.sources.map(s => reasonOf(s, elapsed))],
    [
      'Recently',
      status.recent
        .slice(0, 5)
        .map(r => `${clock(r.time)} ${r.action.replace(/_/g, ' ')}: ${r.reason}`)
    ]
  ];
  const policy = status.policy;
  const rule =
    `The rule: the server stops after ${duration(Number(policy.server_idle_timeout))} without ` +
    'activity (running code, its output, typing in a terminal, saving a document, input ' +
    'to a proxied app, a working process); an open tab is not activity. ' +
    `Kernels stop after ${duration(Number(policy.cull_idle_timeout))} idle.`;
  return { lines, sections: sections.filter(([, items]) => items.length > 0), rule };
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
  const prefix = options.hubPrefix.endsWith('/') ? options.hubPrefix : `${options.hubPrefix}/`;
  return options.hubHost + prefix + parts.join('/');
}
