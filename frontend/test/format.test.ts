/**
 * The page's pure functions (src/format.ts): what it says and how often it reads, from a status.
 * Run by `jlpm test` (node's own test runner, on the compiled files; times in UTC, en-GB).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  beside,
  cullNotice,
  describe,
  describeSaves,
  DUE_POLL_MS,
  duration,
  explain,
  isEditKey,
  keepWorkingSeconds,
  NEAR_POLL_MS,
  POLL_MS,
  pollInterval,
  reasonText,
  spawnUrl,
  stoppedMessage,
  stoppingSoon,
  warningMessage
} from '../src/format';
import type { IServerStatus, IStatus, IWhy } from '../src/status';
import cases from './reasons.cases.json';

function status(server: Partial<IServerStatus> = {}, rest: Partial<IStatus> = {}): IStatus {
  return {
    now: '2026-12-05T17:00:00Z',
    last_activity: '2026-12-05T16:59:00Z',
    idle_seconds: 60,
    server: {
      action: 'keep',
      rule: 'server_idle_timeout',
      reason: 'idle 60 s < server_idle_timeout 3600 s',
      shutdown_at: '2026-12-05T17:59:00Z',
      seconds_to_shutdown: 3540,
      warning: null,
      kept_by: null,
      ...server
    },
    keepalive: null,
    keepalive_cap_seconds: 7200,
    stop_when_done: null,
    kernels: [],
    terminals: [],
    sources: [],
    recent: [],
    policy: { server_idle_timeout: 3600, cull_idle_timeout: 3600 },
    ...rest
  };
}

const warned = (left: number) =>
  status({
    action: 'warn',
    shutdown_at: '2026-12-05T17:05:00Z',
    seconds_to_shutdown: left,
    warning: {
      shutdown_at: '2026-12-05T17:05:00Z',
      rule: 'server_idle_timeout',
      reason: 'idle'
    }
  });

test('durations as a person says them', () => {
  assert.equal(duration(0), '0 s');
  assert.equal(duration(-3), '0 s');
  assert.equal(duration(44.6), '45 s');
  assert.equal(duration(119), '119 s');
  assert.equal(duration(120), '2 min');
  assert.equal(duration(119 * 60), '119 min');
  assert.equal(duration(2 * 3600 + 3 * 60), '2 h 03 min');
});

test('keys that edit a document, and keys that do not', () => {
  const key = (k: string, mods: Partial<{ ctrlKey: boolean; metaKey: boolean }> = {}) =>
    isEditKey({ key: k, ctrlKey: false, metaKey: false, altKey: false, ...mods });
  for (const k of ['a', 'Z', ' ', '1', 'Backspace', 'Delete', 'Enter', 'Tab']) {
    assert.ok(key(k), k);
  }
  for (const k of ['ArrowLeft', 'Shift', 'Control', 'Escape', 'PageDown', 'F5']) {
    assert.ok(!key(k), k);
  }
  assert.ok(
    key('v', { ctrlKey: true }) && key('x', { metaKey: true }) && key('z', { ctrlKey: true })
  );
  assert.ok(
    !key('c', { ctrlKey: true }) && !key('s', { metaKey: true }) && !key('a', { ctrlKey: true })
  );
});

test('a version that must not overwrite goes beside the file, stamped in UTC', () => {
  const now = new Date('2026-12-05T17:45:12.345Z');
  assert.equal(beside('notes.txt', now), 'notes.unsaved-20261205T174512Z.txt');
  assert.equal(beside('a/b/report.ipynb', now), 'a/b/report.unsaved-20261205T174512Z.ipynb');
  assert.equal(beside('data.tar.gz', now), 'data.unsaved-20261205T174512Z.tar.gz');
  assert.equal(beside('dir/.bashrc', now), 'dir/.bashrc.unsaved-20261205T174512Z');
  assert.equal(beside('Makefile', now), 'Makefile.unsaved-20261205T174512Z');
  assert.equal(beside('notes.txt', now, 2), 'notes.unsaved-20261205T174512Z-2.txt');
});

test('what the stop did with unsaved documents', () => {
  assert.equal(
    describeSaves([
      { path: 'a.md', saved_as: 'a.md', changed_on_disk: false },
      { path: 'b.md', saved_as: 'b.unsaved-x.md', changed_on_disk: true }
    ]),
    'a.md was saved before the stop. b.md had changed on disk: it is kept as it was, and ' +
      'your unsaved version is in b.unsaved-x.md.'
  );
  assert.equal(describeSaves([]), '');
});

test('the indicator counts down between reads and names what keeps the server', () => {
  assert.equal(describe(status({ seconds_to_shutdown: 50 }), 5), 'Idle shutdown in 45 s');
  assert.equal(describe(status({ action: 'shutdown' }), 0), 'Stopping the server now');
  assert.equal(
    describe(status({ rule: 'max_server_age', seconds_to_shutdown: 600 }), 0),
    'Server stops in 10 min (maximum age)'
  );
  const kept = status({
    rule: null,
    seconds_to_shutdown: null,
    kept_by: { what: 'kernel python3 busy', busy_seconds: 100 },
    reason: 'kernel python3 busy 100 s'
  });
  assert.equal(describe(kept, 30), 'Kept: kernel python3 busy 2 min');
  const done = { ...kept, stop_when_done: { since: '2026-12-05T17:00:00Z', waiting_for: 'x' } };
  assert.equal(describe(done, 0), 'Kept: kernel python3 busy 100 s · stops when done');
  const keepalive = status(
    { rule: 'keepalive' },
    { keepalive: { until: '2026-12-05T18:30:00Z', seconds_left: 5400 } }
  );
  assert.equal(describe(keepalive, 0), 'Keep-alive until 18:30');
});

test('reads come every 30 s, every 5 s near a stop, and each second at it', () => {
  assert.equal(pollInterval(null, 0), POLL_MS);
  assert.equal(pollInterval(status(), 0), POLL_MS);
  assert.equal(pollInterval(status({ seconds_to_shutdown: 100 }), 0), NEAR_POLL_MS);
  assert.equal(pollInterval(status({ seconds_to_shutdown: 125 }), 10), NEAR_POLL_MS);
  assert.equal(pollInterval(warned(60), 0), NEAR_POLL_MS);
  assert.equal(pollInterval(warned(8), 3), DUE_POLL_MS);
  assert.equal(pollInterval(status({ action: 'shutdown' }), 0), DUE_POLL_MS);
  const saving = status({}, { unsaved: { documents: [], note: '', saving: true, saved: [] } });
  assert.equal(pollInterval(saving, 0), DUE_POLL_MS);
  assert.equal(pollInterval(status({ rule: null, seconds_to_shutdown: null }), 0), POLL_MS);
});

test('a lost connection is the stop only when the last read announced it', () => {
  assert.equal(stoppingSoon(null, 0), false);
  assert.equal(stoppingSoon(status(), 0), false);
  assert.equal(stoppingSoon(warned(300), 0), true);
  assert.equal(stoppingSoon(status({ seconds_to_shutdown: 20 }), 0), false);
  assert.equal(stoppingSoon(status({ seconds_to_shutdown: 20 }), 6), true);
  assert.equal(stoppingSoon(status({ rule: null, seconds_to_shutdown: null }), 1e6), false);
});

test('the warning says when, and why', () => {
  assert.equal(warningMessage(status(), 0), null);
  assert.equal(
    warningMessage(warned(60), 15),
    'The server will stop at 17:05 (in 45 s): nothing has run or changed.'
  );
  const unsaved = {
    ...warned(60),
    unsaved: {
      documents: ['a.md'],
      note: '1 document unsaved: it will be saved before the stop',
      saving: false,
      saved: []
    }
  };
  assert.match(
    warningMessage(unsaved, 0) ?? '',
    /: nothing has run; 1 document unsaved: it will be saved before the stop\.$/
  );
  const done = { ...warned(60), server: { ...warned(60).server, rule: 'stop_when_done' } };
  assert.match(warningMessage(done, 0) ?? '', /: you asked to stop when done\.$/);
  assert.equal(keepWorkingSeconds(warned(60)), 3600);
  assert.equal(keepWorkingSeconds(status({}, { keepalive_cap_seconds: 1200 })), 1200);
  assert.equal(keepWorkingSeconds(null), 0);
});

test('the notice of a culled kernel names it, where it ran, when and why', () => {
  const entry = {
    action: 'kernel_culled',
    id: 'k1',
    name: 'python3',
    reason: 'idle 3600 s >= cull_idle_timeout 3600 s',
    time: '2026-12-05T17:10:00Z'
  };
  assert.equal(
    cullNotice(entry, 'work/a.ipynb'),
    'Kernel python3 of work/a.ipynb was stopped at 17:10 because it was idle: idle 3600 s >= ' +
      'cull_idle_timeout 3600 s. Its variables are gone; run the notebook again to get them back.'
  );
  const remote = cullNotice({ ...entry, remote: 'http://gw:8888' }, 'a.ipynb');
  assert.match(remote, /^Kernel python3 on the gateway http:\/\/gw:8888 of a\.ipynb was stopped/);
  const removed = cullNotice(
    { ...entry, action: 'kernel_removed', reason: 'its process died' },
    'a'
  );
  assert.match(removed, /stopped at 17:10: its process died\. Its variables/);
});

test('the stopped dialog says who stopped the server, when, and what was saved', () => {
  const now = new Date('2026-12-05T18:00:00Z');
  const idle = stoppedMessage({ status: warned(0), byUser: false, saved: [], now });
  assert.equal(idle.title, 'Server stopped for idleness');
  assert.equal(idle.at, '17:05');
  assert.equal(
    idle.body,
    'Nothing ran or changed on it for 60 min, so it was stopped at 17:05 to free what it held. ' +
      'Your saved files are kept.'
  );
  const mine = stoppedMessage({ status: status(), byUser: true, saved: [], now });
  assert.deepEqual(
    [mine.title, mine.body],
    ['Server stopped', 'You stopped the server. Your saved files are kept.']
  );
  const aged = { ...warned(0), server: { ...warned(0).server, rule: 'max_server_age' } };
  assert.match(stoppedMessage({ status: aged, byUser: false, saved: [], now }).body, /maximum age/);
  // the page's saves and the server's, each once
  const server = {
    ...warned(0),
    unsaved: {
      documents: [],
      note: '',
      saving: false,
      saved: [
        { path: 'a.md', saved_as: 'a.md', changed_on_disk: false },
        { path: 'b.md', saved_as: 'b.unsaved-x.md', changed_on_disk: true }
      ]
    }
  };
  const both = stoppedMessage({
    status: server,
    byUser: false,
    saved: [{ path: 'a.md', saved_as: 'a.md', changed_on_disk: false }],
    now
  });
  assert.equal(both.body.split('a.md was saved before the stop.').length, 2);
  assert.match(both.body, /your unsaved version is in b\.unsaved-x\.md\.$/);
  // no status read ever: the time is now
  assert.equal(stoppedMessage({ status: null, byUser: false, saved: [], now }).at, '18:00');
});

test("the indicator's panel lists only what there is", () => {
  const s = status(
    {},
    {
      kernels: [
        {
          id: '0123456789abcdef',
          name: 'python3',
          execution_state: 'idle',
          idle_seconds: 10,
          busy_seconds: null,
          connections: 1,
          remote: 'http://gw',
          cull_at: '2026-12-05T18:00:00Z',
          action: 'keep',
          reason: 'idle 10 s < cull_idle_timeout 3600 s'
        }
      ]
    }
  );
  const { lines, sections, rule } = explain(s, 0);
  assert.deepEqual(lines, [
    'Idle shutdown in 59 min',
    'Why: idle 60 s < server_idle_timeout 3600 s.'
  ]);
  assert.deepEqual(sections, [
    [
      'Kernels',
      [
        'python3 (01234567) on the gateway http://gw, idle: idle 10 s < cull_idle_timeout 3600 s; ' +
          'stopped at 18:00 if nothing happens'
      ]
    ]
  ]);
  assert.match(rule, /^The rule: the server stops after 60 min without activity/);
});

test("the Hub's spawn page of this server, named servers included", () => {
  const hub = { hubHost: '', hubPrefix: '/hub/', hubUser: 'alice', hubServerName: '' };
  assert.equal(spawnUrl({ ...hub, hubPrefix: '' }), null);
  assert.equal(spawnUrl(hub), '/hub/spawn/alice');
  assert.equal(spawnUrl({ ...hub, hubServerName: 'gpu run' }), '/hub/spawn/alice/gpu%20run');
  assert.equal(
    spawnUrl({ ...hub, hubHost: 'https://hub.example.org', hubPrefix: '/jh/hub', hubUser: 'a@b' }),
    'https://hub.example.org/jh/hub/spawn/a%40b'
  );
  assert.equal(spawnUrl({ ...hub, hubUser: '' }), '/hub/spawn');
});

test("reasons read as the server's own, their durations moving on after the read", () => {
  // written by tests/test_reasons.py from the policy's decisions: one case per text and more
  assert.ok(cases.length > 40);
  for (const c of cases) {
    assert.equal(reasonText(c.why as IWhy, c.elapsed), c.text, c.name);
  }
});

test('the panel renders each decision from its why, counted to now', () => {
  const s = status(
    {
      reason: 'idle 60 s of server_idle_timeout 3600 s',
      why: {
        clauses: [{ says: 'idle_of', rule: 'server_idle_timeout', limit: 3600 }],
        seconds: { idle: 60, left: 3540 }
      }
    },
    {
      kernels: [
        {
          id: '3f2a5b1c-0000',
          name: 'python3',
          execution_state: 'busy',
          idle_seconds: 0,
          busy_seconds: 5,
          connections: 1,
          cull_at: null,
          action: 'keep',
          reason: 'busy for 5 s',
          why: { clauses: [{ says: 'busy_for', subject: 'busy' }], seconds: { busy: 5 } }
        }
      ]
    }
  );
  const panel = explain(s, 30);
  assert.equal(panel.lines[1], 'Why: idle 90 s of server_idle_timeout 3600 s.');
  assert.deepEqual(panel.sections[0], ['Kernels', ['python3 (3f2a5b1c), busy: busy for 35 s']]);
});
