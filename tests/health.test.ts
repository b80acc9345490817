// Health: status() says whether the elector reaches its store, and LeaderElectionHealthIndicator reports
// it to @nestjs/terminus in a real NestJS app: up for the leader and the follower, down within the bound
// once the database is stopped (a throwaway PostgreSQL of this test's own), up again when it is back.
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Controller, Get, Module, type INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';

import {
  LeaderElectionConfigError,
  LeaderElectionHealthIndicator,
  LeaderElectorCore,
  LeaderElectorModule,
  LeaderElectorService,
} from '../dist/index.js';
import { FAST, sleep } from './helpers.js';

const PG = join(__dirname, '..', 'scripts', 'throwaway-pg.sh');
const pg = (...args: string[]) => execFileSync('bash', [PG, ...args], { encoding: 'utf8' }).trim();
/** The same without blocking the event loop (the electors under test run on it). */
const pgAsync = async (...args: string[]) => (await promisify(execFile)('bash', [PG, ...args])).stdout.trim();

/** The bound given to the indicator: down once the store has been unreachable this long. */
const UNREACHABLE_FOR = 1000;

let dir = '';
let url = '';
before(() => {
  dir = pg('start');
  url = execFileSync('cat', [join(dir, 'url')], { encoding: 'utf8' }).trim();
  // Removed even if this process dies.
  execFileSync('bash', ['-c', `setsid nohup bash ${PG} watch ${dir} ${process.pid} >/dev/null 2>&1 &`]);
});
after(() => {
  if (dir) pg('destroy', dir);
});

@Controller()
class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly leaderElection: LeaderElectionHealthIndicator,
  ) {}

  @Get('health')
  @HealthCheck()
  check() {
    return this.health.check([() => this.leaderElection.isHealthy('leaderElection', { unreachableFor: UNREACHABLE_FOR })]);
  }
}

async function healthApp(): Promise<{ app: INestApplication; base: string; elector: LeaderElectorService }> {
  @Module({
    imports: [TerminusModule, LeaderElectorModule.forRoot({ connectionString: url, lockId: 41, ...FAST })],
    controllers: [HealthController],
  })
  class AppModule {}
  const app = await NestFactory.create(AppModule, { logger: false });
  await app.listen(0, '127.0.0.1');
  const port = (app.getHttpServer().address() as AddressInfo).port;
  return { app, base: `http://127.0.0.1:${port}`, elector: app.get(LeaderElectorService) };
}

interface Health {
  code: number;
  body: { status: string; details: { leaderElection: Record<string, unknown> } };
}

async function health(base: string): Promise<Health> {
  const res = await fetch(`${base}/health`);
  return { code: res.status, body: (await res.json()) as Health['body'] };
}

/**
 * Polls `base`'s health every 50 ms until `want` holds; returns the ms from `from` (default: now) until
 * then, or null after `limit`.
 */
async function until(base: string, want: (h: Health) => boolean, limit: number, from = Date.now()): Promise<number | null> {
  const start = Date.now();
  while (Date.now() - start < limit) {
    if (want(await health(base))) return Date.now() - from;
    await sleep(50);
  }
  return null;
}

describe('health', () => {
  test('terminus: leader and follower up; database stopped: down within the bound; back: up', async () => {
    const a = await healthApp();
    const b = await healthApp();
    try {
      // One leads, and the other has seen it (a follower's first read may come a moment after the election).
      const one = await until(
        a.base,
        () => (a.elector.amILeader() || b.elector.amILeader()) && a.elector.leader() !== null && b.elector.leader() !== null,
        5000,
      );
      assert.notEqual(one, null, 'nobody leads, or the follower has not seen the leader');
      const [leader, follower] = a.elector.amILeader() ? [a, b] : [b, a];
      const hl = await health(leader.base);
      const hf = await health(follower.base);
      assert.equal(hl.code, 200, JSON.stringify(hl.body));
      assert.equal(hf.code, 200, JSON.stringify(hf.body));
      assert.equal(hl.body.details.leaderElection['status'], 'up');
      assert.equal(hl.body.details.leaderElection['leading'], true);
      assert.equal(hl.body.details.leaderElection['term'], leader.elector.term());
      assert.equal(hl.body.details.leaderElection['leaderId'], leader.elector.instanceId);
      assert.equal(hf.body.details.leaderElection['leading'], false);
      assert.equal(hf.body.details.leaderElection['leaderId'], leader.elector.instanceId);
      assert.equal(hf.body.details.leaderElection['connected'], true);

      // Stop the database: both go down, not before UNREACHABLE_FOR and within UNREACHABLE_FOR plus
      // the time to notice (a leader at its next renewal, a follower at its next read: at the latest
      // when the lease it saw expires) plus the operation timeout, with slack for a busy machine.
      const stoppedAt = Date.now();
      await pgAsync('stop', dir, 'immediate');
      const bound = UNREACHABLE_FOR + FAST.leaseDuration + 2500;
      const downs = await Promise.all(
        [leader, follower].map((x) => until(x.base, (h) => h.code === 503, bound + 2000, stoppedAt)),
      );
      const since = Date.now() - stoppedAt;
      for (const [i, d] of downs.entries()) {
        assert.notEqual(d, null, `${i === 0 ? 'leader' : 'follower'} never down (${since} ms)`);
        assert.ok(d! <= bound, `${i === 0 ? 'leader' : 'follower'} down after ${d} ms > ${bound} ms`);
        assert.ok(d! >= UNREACHABLE_FOR, `down after ${d} ms, before the ${UNREACHABLE_FOR} ms allowed`);
      }
      const hd = await health(follower.base);
      assert.equal(hd.body.details.leaderElection['status'], 'down');
      assert.equal(hd.body.details.leaderElection['connected'], false);
      assert.match(String(hd.body.details.leaderElection['message']), /unreachable for \d+ ms/);
      assert.ok(hd.body.details.leaderElection['lastError']);
      const st = follower.elector.status();
      assert.equal(st.connected, false);
      assert.ok(st.lastError);
      assert.ok(Date.now() - st.since > UNREACHABLE_FOR);

      // Back: both up again, one leads, the other follows (and is up).
      const startedAt = Date.now();
      await pgAsync('start-again', dir);
      const ups = await Promise.all(
        [leader, follower].map((x) => until(x.base, (h) => h.code === 200, 10_000, startedAt)),
      );
      assert.ok(ups.every((u) => u !== null), `not up again: ${JSON.stringify(ups)}`);
      console.log(
        `health: database stopped: leader down after ${downs[0]} ms, follower after ${downs[1]} ms ` +
          `(unreachableFor ${UNREACHABLE_FOR} ms, bound ${bound} ms); started again: up after ${ups[0]} / ${ups[1]} ms`,
      );
      await until(a.base, () => a.elector.amILeader() || b.elector.amILeader(), 5000);
      const leaders = [a, b].filter((x) => x.elector.amILeader());
      assert.equal(leaders.length, 1);
      for (const x of [a, b]) {
        const h = await health(x.base);
        assert.equal(h.code, 200);
        assert.equal(h.body.details.leaderElection['connected'], true);
        assert.equal(h.body.details.leaderElection['leading'], x.elector.amILeader());
      }
    } finally {
      await a.app.close();
      await b.app.close();
    }
  });

  test('status(): connected before the outage, with since; a stopped elector is down', async () => {
    const e = await LeaderElectorCore.connect(url, { lockId: 42, ...FAST });
    const before = Date.now();
    const s = e.status();
    assert.equal(s.connected, true);
    assert.equal(s.lastError, null);
    assert.ok(s.since <= before && s.since > before - 60_000, String(s.since));
    const indicator = new LeaderElectionHealthIndicator(e as LeaderElectorService);
    const up = await indicator.isHealthy('x');
    assert.equal((up['x'] as { status: string }).status, 'up');
    await assert.rejects(indicator.isHealthy('x', { unreachableFor: -1 }), LeaderElectionConfigError);
    await e.shutdown();
    const down = await indicator.isHealthy('x');
    assert.equal((down['x'] as { status: string }).status, 'down');
    assert.equal(e.status().connected, false);
  });
});
