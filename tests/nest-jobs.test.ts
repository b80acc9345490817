import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { Controller, Get, Injectable, Module, UseGuards } from '@nestjs/common';

import {
  LeaderElectionConfigError,
  LeaderElectorCore,
  LeaderElectorModule,
  LeaderElectorService,
  LeaderGuard,
  LeaderOnly,
  lockIdForName,
  type LeaderJobContext,
} from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, sleep, waitFor, withClient } from './helpers.js';
import { type FixtureApp, killAll, startFixture } from './fixture-app.js';
import { getJson, nestApps, startError } from './nest-app.js';

const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;

@Injectable()
class Jobs {
  runs: Record<string, number> = { app: 0, alpha: 0, beta: 0 };
  contexts: (LeaderJobContext | undefined)[] = [];

  @LeaderOnly()
  app(): string {
    this.runs['app']!++;
    return 'app';
  }

  @LeaderOnly('alpha')
  alpha(): string {
    this.runs['alpha']!++;
    this.contexts.push(LeaderElectorService.current());
    return 'alpha';
  }

  @LeaderOnly({ name: 'beta', onFollower: 'throw' })
  async beta(): Promise<string> {
    this.runs['beta']!++;
    await sleep(1);
    this.contexts.push(LeaderElectorService.current());
    return 'beta';
  }
}

@Controller('jobs')
class JobsController {
  @Get('alpha')
  @UseGuards(LeaderGuard.for('alpha'))
  alpha(): { ran: 'alpha' } {
    return { ran: 'alpha' };
  }
}

/** The module of an app with the app-wide election, `alpha`, `beta` (by use) and `gamma` (declared). */
function namedModule(schema: string, extra: object = {}) {
  @Module({
    imports: [
      LeaderElectorModule.forRoot({
        connectionString: DATABASE_URL,
        schema,
        lockId: 31,
        ...FAST,
        spread: { checkInterval: 200, discoveryInterval: 1500 },
        ...extra,
      }),
      LeaderElectorModule.forFeature([{ name: 'gamma', leaseDuration: 2000 }]),
    ],
    controllers: [JobsController],
    providers: [Jobs],
  })
  class AppModule {}
  return AppModule;
}

describe('named elections in three NestJS apps', () => {
  const schema = randomSchema();
  const { apps, start } = nestApps(schema);

  test('each name has one leader, on its own lock id; names spread; @LeaderOnly(name), election(name), LeaderGuard.for(name) follow it', async () => {
    for (let i = 0; i < 3; i++) await start([namedModule(schema)], { listen: true });
    const services = apps.map((a) => a.get(LeaderElectorService));
    const names = ['alpha', 'beta', 'gamma'] as const;
    const leaderOf = (name: string | null) =>
      services.filter((s) => (name === null ? s : s.election(name)).amILeader());
    assert.ok(
      await waitFor(() => [null, ...names].every((n) => leaderOf(n).length === 1), 8000),
      'one leader per election within 8 s',
    );
    for (let i = 0; i < 20; i++) {
      for (const n of [null, ...names]) assert.ok(leaderOf(n).length <= 1, `never two leaders of ${n ?? 'the app'}`);
      await sleep(25);
    }

    // The lease rows: the app-wide one and one per name, at the documented lock ids.
    const rows = await withClient((c) =>
      c.query<{ id: number; leader_id: string }>(`SELECT id, leader_id FROM ${quote(schema)}.leader_lease ORDER BY id`),
    );
    assert.deepEqual(
      rows.rows.map((r) => r.id),
      [31, ...names.map(lockIdForName)].sort((a, b) => a - b),
    );

    // Four elections over three apps: spreading gives every app at least one leadership.
    const spreadOk = await waitFor(() => {
      const per = services.map((s) => names.filter((n) => s.election(n).amILeader()).length);
      return per.every((k) => k === 1);
    }, 20_000);
    const per = services.map((s) => names.filter((n) => s.election(n).amILeader()));
    assert.ok(spreadOk, `the three names spread over the three apps within 20 s: ${JSON.stringify(per)}`);

    // @LeaderOnly(name) runs where that name leads; the context names it and carries its term.
    const jobs = apps.map((a) => a.get(Jobs));
    const alphaLeader = services.findIndex((s) => s.election('alpha').amILeader());
    assert.deepEqual(
      jobs.map((j) => j.alpha()),
      services.map((_, i) => (i === alphaLeader ? 'alpha' : undefined)),
    );
    const ctx = jobs[alphaLeader]!.contexts.at(-1)!;
    assert.equal(ctx.name, 'alpha');
    assert.equal(ctx.term, services[alphaLeader]!.election('alpha').term());
    assert.equal(ctx.signal.aborted, false);
    assert.equal(LeaderElectorService.current(), undefined, 'no context outside a job');
    const betaLeader = services.findIndex((s) => s.election('beta').amILeader());
    for (const [i, j] of jobs.entries()) {
      if (i === betaLeader) {
        assert.equal(await j.beta(), 'beta');
        assert.equal(j.contexts.at(-1)?.name, 'beta', 'the context survives an await');
      } else {
        await assert.rejects(j.beta(), { code: 'ERR_NOT_LEADER' });
      }
    }
    const appLeader = services.findIndex((s) => s.amILeader());
    assert.deepEqual(
      jobs.map((j) => j.app()),
      services.map((_, i) => (i === appLeader ? 'app' : undefined)),
      'the unnamed @LeaderOnly() follows the app-wide election',
    );

    // LeaderGuard.for('alpha'): 200 on alpha's leader, 503 naming it elsewhere.
    const alphaId = services[alphaLeader]!.election('alpha').instanceId;
    assert.equal(alphaId, services[alphaLeader]!.instanceId, 'named elections share the app instance id');
    // An app that just gave alpha up (spreading) learns its new leader at its next look, after standing back.
    assert.ok(
      await waitFor(() => services.every((s) => s.election('alpha').leader()?.leaderId === alphaId), 3000),
      'every app knows alpha\'s leader within 3 s',
    );
    for (const [i, app] of apps.entries()) {
      const res = await getJson(app, '/jobs/alpha');
      if (i === alphaLeader) assert.deepEqual(res, { status: 200, body: { ran: 'alpha' } });
      else {
        assert.equal(res.status, 503);
        assert.equal(res.body.leaderId, alphaId);
      }
    }

    // election(name) has the service's API: events, release (another app takes over), runWhileLeader.
    const alpha = services[alphaLeader]!.election('alpha');
    const firstTerm = alpha.term()!;
    let revoked = 0;
    alpha.on('revoked', () => revoked++);
    await alpha.release();
    assert.equal(revoked, 1);
    assert.ok(
      await waitFor(() => leaderOf('alpha').length === 1 && !alpha.amILeader(), 3000),
      'alpha handed over within 3 s',
    );
    assert.ok(leaderOf('alpha')[0]!.election('alpha').term()! > firstTerm);
    const named = await leaderOf('alpha')[0]!.election('alpha').runWhileLeader(async () => LeaderElectorService.current()?.name);
    assert.equal(named, 'alpha');
  });
});

describe('lock ids of named elections', () => {
  test('the documented rule: 0x40000000 + FNV-1a-32(name) mod 2^30', () => {
    // FNV-1a-32 test vectors: "" -> 0x811c9dc5, "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968.
    assert.equal(lockIdForName(''), 0x40000000 + (0x811c9dc5 % 0x40000000));
    assert.equal(lockIdForName('a'), 0x40000000 + (0xe40c292c % 0x40000000));
    assert.equal(lockIdForName('foobar'), 0x7f9cf968);
  });

  test('bad names and lock ids in the decorator and forFeature: typed errors naming the field', () => {
    for (const [make, field] of [
      [() => LeaderOnly(''), /`name` must be a non-empty string/],
      [() => LeaderOnly({ lockId: 3 }), /`lockId` needs a `name`/],
      [() => LeaderOnly({ name: 'x', lockId: 2 ** 31 }), /`lockId` must be an integer between/],
      [() => LeaderOnly({ name: 'x', lockId: 1.5 }), /`lockId` must be an integer between/],
      [() => LeaderElectorModule.forFeature([{ name: '' }]), /`name` must be a non-empty string/],
      [() => LeaderGuard.for(''), /`name` must be a non-empty string/],
    ] as const) {
      assert.throws(make, (err: unknown) => {
        assert.ok(err instanceof LeaderElectionConfigError, String(err));
        assert.equal(err.code, 'ERR_INVALID_CONFIG');
        assert.match(err.message, field);
        return true;
      });
    }
  });

  test('two names on one lock id, or a name on the app-wide lock id: the app does not start, with a typed error', async () => {
    // Two names whose derived lock ids collide: found by trying names (about 40,000 on average).
    const seen = new Map<number, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined; i++) {
      const name = `job-${i}`;
      const id = lockIdForName(name);
      const other = seen.get(id);
      if (other !== undefined) pair = [other, name];
      else seen.set(id, name);
    }
    const schema = randomSchema();
    const start = (modules: unknown[]) =>
      startError([LeaderElectorModule.forRoot({ connectionString: DATABASE_URL, schema, ...FAST }), ...(modules as [])]);
    try {
      const derived = await start([LeaderElectorModule.forFeature(pair.map((name) => ({ name })))]);
      assert.ok(derived instanceof LeaderElectionConfigError, String(derived));
      assert.equal(derived.code, 'ERR_INVALID_CONFIG');
      assert.match(derived.message, new RegExp(`lockId\` ${lockIdForName(pair[0])} of election '${pair[1]}' \\(derived from its name\\) is already the lock id of election '${pair[0]}'`));

      @Injectable()
      class OnAppLock {
        @LeaderOnly({ name: 'clash', lockId: 1 })
        run(): void {}
      }
      @Module({ providers: [OnAppLock] })
      class ClashModule {}
      const explicit = await start([ClashModule]);
      assert.ok(explicit instanceof LeaderElectionConfigError, String(explicit));
      assert.match(explicit.message, /`lockId` 1 of election 'clash' is already the lock id of the app-wide election/);

      // A name only a LeaderGuard.for(name) uses is checked at the start too.
      @Controller('clash')
      @UseGuards(LeaderGuard.for(pair[1]))
      class GuardedController {
        @Get()
        get(): string {
          return 'ok';
        }
      }
      @Module({ controllers: [GuardedController] })
      class GuardedModule {}
      const guarded = await start([LeaderElectorModule.forFeature([{ name: pair[0] }]), GuardedModule]);
      assert.ok(guarded instanceof LeaderElectionConfigError, String(guarded));
      assert.match(guarded.message, new RegExp(`election '${pair[1]}'.* is already the lock id of election '${pair[0]}'`));

      // An explicit lockId settles a clash.
      const settled = await start([
        LeaderElectorModule.forFeature([{ name: pair[0] }, { name: pair[1], lockId: 4242 }]),
      ]);
      assert.equal(settled, null);
    } finally {
      await dropSchema(schema);
    }
  });
});

describe('the signal of a leader-only job', () => {
  const schema = randomSchema();
  const { start } = nestApps(schema);

  @Injectable()
  class Waiter {
    abortedAt: number[] = [];
    started = 0;

    /** Runs until its leadership ends. */
    @LeaderOnly('waiter')
    async wait(): Promise<void> {
      const { signal } = LeaderElectorService.current()!;
      this.started++;
      // The moment the signal aborts (its 'abort' event is dispatched synchronously by abort()).
      await new Promise<void>((resolve) =>
        signal.addEventListener(
          'abort',
          () => {
            this.abortedAt.push(performance.now());
            resolve();
          },
          { once: true },
        ),
      );
    }
  }

  test('aborts within 50 ms of a forced loss: release(), and a lease taken over in the database', async (t) => {
    @Module({
      imports: [LeaderElectorModule.forRoot({ connectionString: DATABASE_URL, schema, lockId: 41, ...FAST, spread: false })],
      providers: [Waiter],
    })
    class AppModule {}
    const app = await start([AppModule]);
    const service = app.get(LeaderElectorService);
    const waiter = app.get(Waiter);
    const election = service.election('waiter');
    assert.ok(await waitFor(() => election.amILeader(), 5000), 'leads waiter');

    // 1. release(): the signal aborts at once, and the release waits for the job (it returns on abort).
    const run1 = waiter.wait();
    assert.equal(election.runningJobs, 1);
    const releasedAt = performance.now();
    await election.release();
    await run1;
    const byRelease = waiter.abortedAt[0]! - releasedAt;
    t.diagnostic(`aborted ${byRelease.toFixed(2)} ms after release() was called`);
    assert.ok(byRelease < 50, `aborted ${byRelease.toFixed(1)} ms after release()`);
    assert.equal(election.runningJobs, 0);

    // 2. Another node takes the lease over in the database: the next renewal finds no row of ours.
    assert.ok(await waitFor(() => election.amILeader(), 5000), 'leads waiter again');
    const run2 = waiter.wait();
    let lostAt = 0;
    const sampler = setInterval(() => {
      if (lostAt === 0 && !election.amILeader()) lostAt = performance.now();
    }, 1);
    await withClient((c) =>
      c.query(`UPDATE ${quote(schema)}.leader_lease SET leader_id = 'intruder' WHERE id = $1`, [lockIdForName('waiter')]),
    );
    await run2;
    clearInterval(sampler);
    if (lostAt === 0) lostAt = performance.now();
    const byTakeover = waiter.abortedAt[1]! - lostAt;
    t.diagnostic(`aborted ${byTakeover.toFixed(2)} ms after amILeader() turned false (lease taken over)`);
    assert.ok(byTakeover < 50, `aborted ${byTakeover.toFixed(1)} ms after amILeader() turned false`);
    assert.equal(waiter.started, 2);
  });
});

describe('a leader job that releases its own leadership', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('is not waited for by that release (no wait for the rest of the lease, no drain warning)', async () => {
    const elector = await LeaderElectorCore.connect(DATABASE_URL, { schema, lockId: 43, leaseDuration: 6000, renewalInterval: 1000, jitterRange: 200 });
    const warnings: string[] = [];
    const onWarning = (w: Error & { code?: string }) => warnings.push(String(w.code));
    process.on('warning', onWarning);
    try {
      const took = await elector.runWhileLeader(async (signal) => {
        const t = performance.now();
        await elector.release();
        assert.equal(signal.aborted, true, 'its own signal is aborted by the release');
        return performance.now() - t;
      });
      assert.ok(took < 1000, `the release inside the job took ${took.toFixed(0)} ms`);
      await sleep(10);
      assert.ok(!warnings.includes('LEADERLEASE_DRAIN_TIMEOUT'), warnings.join(', '));
    } finally {
      process.off('warning', onWarning);
      await elector.shutdown();
    }
  });
});

/** One tests/fixtures/jobs-app.ts in its own process. */
const startJobsApp = (instance: string, env: Record<string, string>): FixtureApp => startFixture('jobs-app', instance, env);

describe('drained handover: a NestJS worker SIGTERMed in the middle of a 1.5 s job', () => {
  const schema = randomSchema();
  const procs: FixtureApp[] = [];
  after(async () => {
    await killAll(procs);
    await dropSchema(schema);
  });

  test("the next leader's first run starts after the old run ended, well within a lease; runs never overlap", async (t) => {
    const lease = 3000;
    const env = { LL_SCHEMA: schema, LL_JOB_MS: '1500', LL_LEASE: String(lease), LL_RENEWAL: '500', LL_JITTER: '200' };
    for (let i = 0; i < 3; i++) procs.push(startJobsApp(`w${i}`, env));
    const runs = () => procs.flatMap((p) => p.lines.filter((l) => l['event'] === 'run-start' || l['event'] === 'run-end'));
    const handovers: number[] = [];
    for (let round = 0; round < 2; round++) {
      // Wait until a run has been going for 500-800 ms, then SIGTERM its instance.
      let victim: FixtureApp | undefined;
      let startT = 0;
      const ok = await waitFor(() => {
        const alive = procs.filter((p) => p.exit === null);
        for (const p of alive) {
          const last = p.lines.filter((l) => l['event'] === 'run-start' || l['event'] === 'run-end').at(-1);
          if (last?.['event'] === 'run-start' && Date.now() - last['t'] >= 500 && Date.now() - last['t'] < 800) {
            victim = p;
            startT = last['t'];
            return true;
          }
        }
        return false;
      }, 60_000);
      assert.ok(ok, `round ${round}: a run in progress within 60 s: ${procs.map((p) => `${p.instance}: ${p.stderr}`).join('; ')}`);
      victim!.child.kill('SIGTERM');
      await victim!.exited;
      const oldEnd = victim!.lines.find((l) => l['event'] === 'run-end' && l['t'] >= startT);
      assert.ok(oldEnd, `round ${round}: the run of ${victim!.instance} ended before its process exited (drained)`);
      assert.ok(
        await waitFor(() => runs().some((l) => l['event'] === 'run-start' && l['t'] > startT && l.instance !== victim!.instance), 10_000),
        `round ${round}: another instance runs the job within 10 s`,
      );
      const next = runs().find((l) => l['event'] === 'run-start' && l['t'] > startT && l.instance !== victim!.instance)!;
      assert.ok(next['t'] >= oldEnd['t'], `the next leader's first run (${next['t']}) starts after the old one ended (${oldEnd['t']})`);
      assert.ok(next['term'] > oldEnd['term'], 'with a higher term');
      handovers.push(next['t'] - oldEnd['t']);
      t.diagnostic(`round ${round}: old run ended at +${oldEnd['t'] - startT} ms, next leader's first run ${next['t'] - oldEnd['t']} ms later`);
      procs.push(startJobsApp(`w${procs.length}`, env));
    }
    for (const h of handovers) assert.ok(h < lease / 2, `handover ${h} ms, well under the ${lease} ms lease`);

    // No two runs of the job overlap, on any instance, over the whole test.
    const ended = procs.flatMap((p) => {
      const out: [number, number][] = [];
      let open: number | null = null;
      for (const l of p.lines) {
        if (l['event'] === 'run-start') open = l['t'];
        if (l['event'] === 'run-end' && open !== null) {
          out.push([open, l['t']]);
          open = null;
        }
      }
      if (open !== null) out.push([open, Infinity]);
      return out;
    });
    ended.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < ended.length; i++) {
      assert.ok(ended[i]![0] >= ended[i - 1]![1], `runs overlap: ${JSON.stringify(ended[i - 1])} and ${JSON.stringify(ended[i])}`);
    }
  });
});

describe('module options the Nest way', () => {
  const schema = randomSchema();
  const { start } = nestApps(schema);

  test('forRootAsync with useExisting, extraProviders and isGlobal: false; forFeature settings; election(name) before the start', async () => {
    const SETTINGS = 'SETTINGS';
    class Options {
      createLeaderElectorOptions() {
        return { connectionString: DATABASE_URL, schema, lockId: 51, ...FAST, spread: false };
      }
    }
    /** Asks for its election while the app initialises, before the elections start. */
    @Injectable()
    class EarlyUser {
      constructor(readonly elector: LeaderElectorService) {}
      early: LeaderElectorService | undefined;
      onModuleInit(): void {
        this.early = this.elector.election('early');
      }
    }
    @Module({
      imports: [
        LeaderElectorModule.forRootAsync({
          isGlobal: false,
          useExisting: Options,
          extraProviders: [Options, { provide: SETTINGS, useValue: 'extra' }],
        }),
        LeaderElectorModule.forFeature([{ name: 'slow', leaseDuration: 4000, renewalInterval: 1000 }]),
      ],
      providers: [EarlyUser],
    })
    class AppModule {}
    const app = await start([AppModule]);
    const service = app.get(LeaderElectorService);
    assert.equal(app.get(SETTINGS, { strict: false }), 'extra', 'extraProviders are registered');
    const early = app.get(EarlyUser).early!;
    assert.equal(early, service.election('early'), 'election(name) gives one elector per name');
    assert.ok(await waitFor(() => early.amILeader() && service.election('slow').amILeader() && service.amILeader(), 5000));
    assert.equal(early.instanceId, service.instanceId, 'made before the start, it still takes the app instance id');
    // `slow`'s own lease duration (4000 ms) is what its row gets; the app-wide one keeps FAST's 1500 ms.
    const rows = await withClient((c) =>
      c.query<{ id: number; ms: number }>(
        `SELECT id, extract(epoch FROM expires_at - renewed_at) * 1000 AS ms FROM ${quote(schema)}.leader_lease`,
      ),
    );
    const ms = new Map(rows.rows.map((r) => [Number(r.id), Math.round(Number(r.ms))]));
    assert.equal(ms.get(lockIdForName('slow')), 4000);
    assert.equal(ms.get(51), FAST.leaseDuration);

    // isGlobal: the original's module is global, and stays so unless told otherwise.
    assert.equal(LeaderElectorModule.forRoot({ connectionString: DATABASE_URL }).global, true);
    assert.equal(LeaderElectorModule.forRoot({ connectionString: DATABASE_URL, isGlobal: false }).global, false);
    assert.equal(LeaderElectorModule.forRootAsync({ useFactory: () => ({}) }).global, true);
  });
});
