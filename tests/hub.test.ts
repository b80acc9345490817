import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { LeaderElectorCore } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, sleep, waitFor, withClient } from './helpers.js';

/** DATABASE_URL with an application_name of its own, so the test can count its connections. */
function urlWithApp(app: string): string {
  const u = new URL(DATABASE_URL);
  u.searchParams.set('application_name', app);
  return u.toString();
}

async function connectionsOf(app: string): Promise<number> {
  return withClient(async (c) => {
    const r = await c.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [app]);
    return r.rows[0].n as number;
  });
}

describe('elections of one process share their connections', () => {
  const schema = randomSchema();
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  });

  test('30 elections on one URL hold at most 5 connections, all closed at shutdown', async () => {
    const app = `ll_hub_${randomBytes(4).toString('hex')}`;
    const url = urlWithApp(app);
    for (let lockId = 1; lockId <= 30; lockId++) {
      electors.push(await LeaderElectorCore.connect(url, { ...FAST, schema, lockId }));
    }
    assert.ok(await waitFor(() => electors.every((e) => e.amILeader()), 10_000), 'all 30 lead');
    await sleep(1200); // a few renewals
    assert.ok(electors.every((e) => e.amILeader()), 'all 30 keep leading');
    const n = await connectionsOf(app);
    assert.ok(n >= 1 && n <= 5, `30 elections hold ${n} connections (a pool of at most 4 and one LISTEN)`);
    await Promise.all(electors.map((e) => e.shutdown()));
    // shutdown() resolves once the hub's sockets are closed; the server ends their backends a moment
    // later (an exiting backend stays in pg_stat_activity until it is gone), so the count is given 2 s.
    let left = await connectionsOf(app);
    for (const end = Date.now() + 2000; left > 0 && Date.now() < end; left = await connectionsOf(app)) {
      await sleep(50);
    }
    assert.equal(left, 0, 'the connections close with the last election');
  });
});

describe('release handover', () => {
  const schema = randomSchema();
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  });

  test('a follower that would poll only every 4 s takes over within a second of a release', async () => {
    // Two "processes": each its own URL, so each has its own pool and LISTEN connection.
    const slow = { leaseDuration: 6000, renewalInterval: 4000, jitterRange: 200, schema, lockId: 3 };
    const a = await LeaderElectorCore.connect(urlWithApp('ll_hub_a'), { ...slow, instanceId: 'a' });
    electors.push(a);
    assert.ok(await waitFor(() => a.amILeader(), 3000), 'a leads');
    const b = await LeaderElectorCore.connect(urlWithApp('ll_hub_b'), { ...slow, instanceId: 'b' });
    electors.push(b);
    assert.ok(await waitFor(() => b.leader()?.leaderId === 'a', 3000), 'b sees a');
    await sleep(300);
    const termA = a.term()!;
    const t0 = performance.now();
    await a.release();
    assert.ok(await waitFor(() => b.amILeader(), 5000), 'b takes over');
    const took = performance.now() - t0;
    assert.ok(took < 1000, `handover took ${took.toFixed(0)} ms: the release did not wake b`);
    assert.ok(b.term()! > termA, 'the term grows');
  });
});
