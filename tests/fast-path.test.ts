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
