import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';

import { Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { connect } from 'nats';

import { LeaderElectorCore, LeaderElectorModule, LeaderElectorService } from '../dist/index.js';
import { FAST, waitFor } from './helpers.js';

const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
const buckets: string[] = [];

function randomBucket(): string {
  const b = `ll_node_${randomBytes(5).toString('hex')}`;
  buckets.push(b);
  return b;
}

after(async () => {
  const nc = await connect({ servers: NATS_URL });
  const jsm = await nc.jetstreamManager();
  for (const b of buckets) await jsm.streams.delete(`KV_${b}`).catch(() => undefined);
  await nc.close();
});

test('on NATS: one leader, release handed over through the watch, terms grow', async () => {
  const bucket = randomBucket();
  const a = await LeaderElectorCore.connectNats(NATS_URL, { ...FAST, bucket, instanceId: 'a' });
  assert.ok(await waitFor(() => a.amILeader(), 3000), 'a leads');
  const b = await LeaderElectorCore.connectNats(NATS_URL, { ...FAST, bucket, instanceId: 'b' });
  assert.ok(await waitFor(() => b.leader() !== null, 3000), 'b sees a');
  assert.equal(b.amILeader(), false);
  const termA = a.term()!;

  const released = performance.now();
  await a.release();
  assert.ok(await waitFor(() => b.amILeader(), 2000), 'b takes over');
  const took = performance.now() - released;
  assert.ok(took < 1000, `handover took ${took} ms`);
  assert.ok(b.term()! > termA);
  assert.equal(a.amILeader(), false);
  await a.shutdown();
  await b.shutdown();
});

test('on NATS: one bucket holds elections of different lease durations (per-key TTL)', async () => {
  const bucket = randomBucket();
  const a = await LeaderElectorCore.connectNats(NATS_URL, { ...FAST, bucket, lockId: 1 });
  const b = await LeaderElectorCore.connectNats(NATS_URL, {
    leaseDuration: 4000,
    renewalInterval: 1000,
    jitterRange: 200,
    bucket,
    lockId: 2,
  });
  assert.ok(await waitFor(() => a.amILeader() && b.amILeader(), 3000), 'both elections have a leader');
  // Past the shorter lease's TTL (2 s): each keeps its own key alive.
  const terms = [a.term(), b.term()];
  await new Promise((r) => setTimeout(r, 2500));
  assert.deepEqual([a.term(), b.term()], terms);
  assert.ok(a.amILeader() && b.amILeader());
  await a.shutdown();
  await b.shutdown();
});

test('on NATS: a bucket without per-key TTL whose max_age is another lease is refused with InvalidBucketError', async () => {
  const bucket = randomBucket();
  const nc = await connect({ servers: NATS_URL });
  // As an older leaderlease (or NATS 2.10) made it: max_age 3 s, no per-message TTL.
  await (await nc.jetstream().views.kv(bucket, { history: 1, ttl: 3000 })).status();
  await nc.close();
  await assert.rejects(
    LeaderElectorCore.connectNats(NATS_URL, { ...FAST, bucket }),
    (err: Error & { code?: string }) =>
      err.name === 'InvalidBucketError' && err.code === 'ERR_INVALID_BUCKET' && /max_age 3000 ms/.test(err.message),
  );
});

test('LeaderElectorModule.forRoot({ backend: { nats } }) runs without TypeORM or PostgreSQL', async () => {
  const bucket = randomBucket();
  @Module({ imports: [LeaderElectorModule.forRoot({ ...FAST, backend: { nats: { servers: NATS_URL, bucket } } })] })
  class AppModule {}
  const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
  const app = moduleRef.createNestApplication();
  await app.init();
  const elector = app.get(LeaderElectorService);
  assert.ok(await waitFor(() => elector.amILeader(), 3000), 'the app leads');
  await app.close();
  assert.equal(elector.amILeader(), false);
});

test('on NATS: no server at the address rejects with StoreUnreachableError naming it', async () => {
  // A port nothing listens on (bound, then closed).
  const { createServer } = await import('node:net');
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  await assert.rejects(
    LeaderElectorCore.connectNats(`nats://127.0.0.1:${port}`, { ...FAST, bucket: randomBucket() }),
    (err: Error & { code?: string }) =>
      err.name === 'StoreUnreachableError' &&
      err.code === 'ERR_STORE_UNREACHABLE' &&
      err.message.includes(`127.0.0.1:${port}`),
  );
});

test('NATS is its own source: connect() with an empty url is a config error naming `url`, also with backend.nats', async () => {
  const bucket = randomBucket();
  for (const config of [FAST, { ...FAST, backend: { nats: { servers: NATS_URL, bucket } } }]) {
    await assert.rejects(
      LeaderElectorCore.connect('', config),
      (err: Error & { code?: string }) => err.code === 'ERR_INVALID_CONFIG' && /`url`/.test(err.message),
    );
  }
  await assert.rejects(
    LeaderElectorCore.connectNats('', { ...FAST, bucket }),
    (err: Error & { code?: string }) => err.code === 'ERR_INVALID_CONFIG' && /`servers`/.test(err.message),
  );
  // The constructor takes NATS as a source of its own; several servers are separated by commas.
  const e = new LeaderElectorCore({ nats: { servers: `${NATS_URL},${NATS_URL}`, bucket } }, FAST);
  await e.ready();
  assert.ok(await waitFor(() => e.amILeader(), 3000), 'leads');
  await e.shutdown();
});
