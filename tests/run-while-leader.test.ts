import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { ElectorShutDownError, LeaderElectorCore } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema } from './helpers.js';

describe('runWhileLeader', () => {
  const schema = randomSchema();
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  });

  test('runs fn once leading; its signal aborts when leadership is released; a follower waits', async () => {
    const a = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 5, instanceId: 'a' });
    electors.push(a);
    const leaderAtStart: boolean[] = [];
    const firstRun = a.runWhileLeader(async (signal) => {
      leaderAtStart.push(a.amILeader());
      assert.equal(signal.aborted, false);
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      return { abortedBy: (signal.reason as Error).name, stillLeader: a.amILeader() };
    });

    // A second candidate waits for leadership.
    const b = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 5, instanceId: 'b' });
    electors.push(b);
    let bStarted = false;
    const secondRun = b.runWhileLeader(async () => {
      bStarted = true;
      return b.amILeader();
    });
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(leaderAtStart, [true]);
    assert.equal(bStarted, false, 'a follower does not run fn');

    await a.release();
    const result = await firstRun;
    assert.deepEqual(result, { abortedBy: 'AbortError', stillLeader: false });
    assert.equal(await secondRun, true, 'b runs fn once it leads');
  });

  test('rejects when the elector shuts down before leading, or when the caller aborts', async () => {
    const c = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 6, instanceId: 'c' });
    electors.push(c);
    const d = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 6, instanceId: 'd' });
    electors.push(d);
    // Let one of them win first.
    const end = Date.now() + 5000;
    while (!c.amILeader() && !d.amILeader() && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
    assert.ok(c.amILeader() || d.amILeader(), 'one leads');
    const f = c.amILeader() ? d : c;
    const controller = new AbortController();
    const aborted = f.runWhileLeader(() => 'ran', { signal: controller.signal });
    controller.abort(new Error('caller gave up'));
    await assert.rejects(aborted, /caller gave up/);
    const pending = assert.rejects(f.runWhileLeader(() => 'ran'), (err) => err instanceof ElectorShutDownError);
    await f.shutdown();
    await pending;
  });
});
