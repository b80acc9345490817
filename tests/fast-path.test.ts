import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LeaderElectorCore } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

// amILeader() answers from a copy of the native lease deadline kept in JavaScript: it must still step
// down by itself when renewals stop arriving, before the database lets anyone else in.
test('amILeader() turns false at the local deadline, before the database expiry, with renewals blocked', async () => {
  const schema = randomSchema();
  const lease = { leaseDuration: 4000, renewalInterval: 1000, jitterRange: 200 };
  const e = await LeaderElectorCore.connect(DATABASE_URL, { ...lease, schema });
  try {
    assert.ok(await waitFor(() => e.amILeader(), 5000), 'leads');
    const term = e.term();
    await withClient(async (blocker) => {
      // Hold the lease row's lock: every renewal waits and times out.
      await blocker.query('BEGIN');
      await blocker.query(`SELECT 1 FROM "${schema}".leader_lease WHERE id = 1 FOR UPDATE`);
      let stepped = false;
      const until = Date.now() + 6000;
      while (Date.now() < until && !(stepped = !e.amILeader())) {
        await new Promise((r) => setImmediate(r));
      }
      assert.ok(stepped, 'stepped down');
      assert.equal(e.term(), null);
      const { rows } = await withClient((c) =>
        c.query(`SELECT expires_at > clock_timestamp() AS live FROM "${schema}".leader_lease WHERE id = 1`),
      );
      assert.equal(rows[0].live, true, 'the database still held the lease when amILeader() said false');
      // Let renewals through only once the lease has expired in the database.
      while (
        (await withClient((c) =>
          c.query(`SELECT expires_at > clock_timestamp() AS live FROM "${schema}".leader_lease WHERE id = 1`),
        )).rows[0].live
      ) {
        await new Promise((r) => setTimeout(r, 50));
      }
      // A renewal sent before the expiry and still waiting on the lock would go through on ROLLBACK
      // (its condition was checked when it started, and the row did not change): safe, since nobody
      // could take the locked row meanwhile, but it keeps the term. Wait until such renewals have timed
      // out (operation timeout: renewalInterval / 2), so that the next one finds the lease expired.
      await new Promise((r) => setTimeout(r, 800));
      await blocker.query('ROLLBACK');
    });
    assert.ok(await waitFor(() => e.amILeader(), 8000), 'leads again once renewals pass');
    assert.ok(e.term()! > term!, 'with a new term');
  } finally {
    await e.shutdown();
    await dropSchema(schema);
  }
});

test('release() makes amILeader() false before it even returns', async () => {
  const schema = randomSchema();
  const e = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema });
  try {
    assert.ok(await waitFor(() => e.amILeader(), 3000), 'leads');
    const released = e.release();
    assert.equal(e.amILeader(), false);
    assert.equal(e.term(), null);
    await released;
    assert.equal(e.amILeader(), false);
  } finally {
    await e.shutdown();
    await dropSchema(schema);
  }
});

// The status and the lease copy arrive through two native callbacks in no fixed order: an `elected`
// listener, and runWhileLeader, must still see amILeader() true.
test('elected listeners and runWhileLeader see amILeader() true, on many elections at once', async () => {
  const schema = randomSchema();
  const electors = await Promise.all(
    Array.from({ length: 20 }, (_, i) => LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: i + 1 })),
  );
  try {
    const seen = await Promise.all(
      electors.map(
        (e) =>
          new Promise<boolean>((resolve) => {
            if (e.amILeader()) return resolve(true);
            e.once('elected', () => resolve(e.amILeader()));
          }),
      ),
    );
    assert.deepEqual(seen, seen.map(() => true), 'amILeader() inside every elected listener');
    const ran = await Promise.all(
      electors.map((e) =>
        Promise.race([
          e.runWhileLeader(() => e.amILeader()),
          new Promise<string>((r) => setTimeout(() => r('timed out'), 3000).unref()),
        ]),
      ),
    );
    assert.deepEqual(ran, ran.map(() => true), 'every runWhileLeader ran while leading');
  } finally {
    await Promise.all(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  }
});
