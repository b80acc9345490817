// Metrics: three NestJS processes with `metrics: true` expose /metrics (prom-client). Their
// leader_election_master_status, scraped every 10 ms, sums to 1 in steady state and never shows two
// leaders across handovers: a release, a leader paused past its lease (SIGSTOP, then SIGCONT), a leader
// killed. The other metrics are there with plausible values.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { Registry } from 'prom-client';

import { LeaderElectorCore, METRIC_NAMES } from '../dist/index.js';
import { type FixtureApp, killAll, lineOf, startFixture } from './fixture-app.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, runScript, sleep, waitFor } from './helpers.js';

const LOCK_ID = 51;
/** The fixture's lease duration (ms). */
const LEASE = 3000;

const schemas: string[] = [];
after(async () => {
  for (const s of schemas) await dropSchema(s);
});

/** One tests/fixtures/metrics-app.ts in its own process, listening on `port`. */
type App = FixtureApp & { port: number };

async function startApp(schema: string, index: number): Promise<App> {
  const app = startFixture('metrics-app', `app-${index}`, { LL_SCHEMA: schema, LL_LOCK_ID: String(LOCK_ID) });
  try {
    const { port } = await lineOf(app, (l) => typeof l['port'] === 'number');
    return Object.assign(app, { port: port as number });
  } catch (err) {
    await killAll([app]);
    throw err;
  }
}

/** One scrape: the value of every metric line, and when the app read its registry (ns, CLOCK_MONOTONIC). */
interface Scrape {
  at: bigint;
  values: Map<string, number>;
}

async function scrape(app: App, timeoutMs = 300): Promise<Scrape | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${app.port}/metrics`, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    const values = new Map<string, number>();
    for (const line of text.split('\n')) {
      if (line.startsWith('#') || line === '') continue;
      const i = line.lastIndexOf(' ');
      values.set(line.slice(0, i), Number(line.slice(i + 1)));
    }
    return { at: BigInt(res.headers.get('x-sampled-at')!), values };
  } catch {
    return null;
  }
}

const STATUS = `${METRIC_NAMES.masterStatus}{name="${LOCK_ID}"}`;

interface Sample {
  app: number;
  at: bigint;
  leading: boolean;
  phase: string;
}

describe('metrics', () => {
  test('three Nest processes: master_status sums to 1, never 2 across handovers', async () => {
    const schema = randomSchema();
    schemas.push(schema);
    const apps: App[] = [];
    for (let i = 0; i < 3; i++) apps.push(await startApp(schema, i));
    const samples: Sample[] = [];
    let phase = 'start';
    let sampling = true;
    // One sampler per app, every 10 ms, so that a paused app does not slow the others down.
    const samplers = apps.map(async (app, i) => {
      const t0 = performance.now();
      for (let n = 0; sampling; n++) {
        if (app.exit !== null) break;
        const s = await scrape(app, 200);
        if (s !== null && s.values.has(STATUS)) samples.push({ app: i, at: s.at, leading: s.values.get(STATUS) === 1, phase });
        const wait = t0 + (n + 1) * 10 - performance.now();
        if (wait > 0) await sleep(wait);
        else n = Math.floor((performance.now() - t0) / 10);
      }
    });
    /**
     * The one app whose latest sample (taken after `since`) says it leads while the others' say they do
     * not, or -1.
     */
    const leaderIndex = (since = 0n) => {
      const latest = apps.map((a, i) => {
        if (a.exit !== null) return undefined;
        for (let k = samples.length - 1; k >= 0; k--) if (samples[k]!.app === i && samples[k]!.at > since) return samples[k];
        return undefined;
      });
      const leading = latest.flatMap((s, i) => (s?.leading ? [i] : []));
      return leading.length === 1 && latest.every((s, i) => apps[i]!.exit !== null || s !== undefined) ? leading[0]! : -1;
    };
    const steady = async (label: string, ms: number) => {
      const since = process.hrtime.bigint();
      assert.ok(await waitFor(() => leaderIndex(since) >= 0, 10_000), `${label}: no single leader`);
      await sleep(300);
      phase = `steady:${label}`;
      await sleep(ms);
      phase = 'transition';
    };
    try {
      await steady('initial', 2000);

      // 1. A release: the leader hands over.
      let leader = leaderIndex();
      const released = await fetch(`http://127.0.0.1:${apps[leader]!.port}/release`, { method: 'POST' });
      assert.equal(released.status, 201);
      await steady('after release', 1500);

      // 2. The leader paused past its lease, then resumed: it reports 0 once it runs again.
      leader = leaderIndex();
      apps[leader]!.child.kill('SIGSTOP');
      await sleep(LEASE + 1000);
      apps[leader]!.child.kill('SIGCONT');
      await steady('after SIGSTOP', 1500);

      // 3. The leader killed.
      leader = leaderIndex();
      const exited = new Promise((resolve) => apps[leader]!.child.once('exit', resolve));
      apps[leader]!.child.kill('SIGKILL');
      await exited;
      await steady('after SIGKILL', 1500);
    } finally {
      sampling = false;
      await Promise.all(samplers);
    }
    try {
      // Steady state: in each steady phase one app says 1 in every sample and the others 0 in every one,
      // so any moment's sum is 1.
      const phases = [...new Set(samples.map((s) => s.phase).filter((p) => p.startsWith('steady')))];
      assert.equal(phases.length, 4, phases.join());
      let steadyCount = 0;
      for (const p of phases) {
        const inPhase = samples.filter((s) => s.phase === p);
        steadyCount += inPhase.length;
        const leaders = new Set(inPhase.filter((s) => s.leading).map((s) => s.app));
        assert.equal(leaders.size, 1, `${p}: leaders ${[...leaders].join()}`);
        const [only] = leaders;
        const wrong = inPhase.filter((s) => s.leading !== (s.app === only));
        const summary = apps.map((_, i) => {
          const mine = inPhase.filter((s) => s.app === i);
          return `app ${i}: ${mine.filter((s) => s.leading).length} leading / ${mine.length}`;
        });
        assert.deepEqual(wrong.length, 0, `${p}: ${wrong.length} samples disagree (${summary.join('; ')})`);
        const apps_ = new Set(inPhase.map((s) => s.app));
        assert.ok(apps_.size >= 2, `${p}: samples of ${apps_.size} app(s) only`);
      }
      // Never two: no app is seen leading between two consecutive samples (< 100 ms apart) of another
      // app that both say it leads, by the moment each app read its registry (one monotonic clock).
      const byApp = apps.map((_, i) => samples.filter((s) => s.app === i).sort((x, y) => (x.at < y.at ? -1 : 1)));
      const overlaps: string[] = [];
      for (const s of samples) {
        if (!s.leading) continue;
        for (let j = 0; j < apps.length; j++) {
          if (j === s.app) continue;
          const other = byApp[j]!;
          const k = other.findIndex((o) => o.at > s.at);
          if (k <= 0) continue;
          const before = other[k - 1]!;
          const after = other[k]!;
          if (before.leading && after.leading && after.at - before.at < 100_000_000n) {
            overlaps.push(`app ${s.app} leads at ${s.at} between app ${j}'s leading samples ${before.at}..${after.at}`);
          }
        }
      }
      assert.deepEqual(overlaps.slice(0, 5), [], `${overlaps.length} overlaps`);
      // The sum over 10 ms windows (each app's latest sample in the window), as a scrape of all three would see it.
      const windows = new Map<bigint, Map<number, boolean>>();
      for (const s of [...samples].sort((x, y) => (x.at < y.at ? -1 : 1))) {
        const w = s.at / 10_000_000n;
        if (!windows.has(w)) windows.set(w, new Map());
        windows.get(w)!.set(s.app, s.leading);
      }
      const sums = [...windows.values()].map((m) => [...m.values()].filter(Boolean).length);
      const perSecond = samples.length / (Number(byApp.flat().at(-1)!.at - byApp.flat()[0]!.at) / 1e9 || 1);
      console.log(
        `metrics: ${samples.length} samples (${steadyCount} in steady phases, all one leader), ` +
          `${windows.size} 10 ms windows, max window sum ${Math.max(...sums)}, ${overlaps.length} overlaps, ` +
          `${Math.round(perSecond)} samples/s`,
      );

      // The other metrics, on the last leader and a follower.
      const live = apps.filter((a) => a.exit === null);
      const scrapes = (await Promise.all(live.map((a) => scrape(a, 2000)))).filter((s) => s !== null);
      const lead = scrapes.find((s) => s.values.get(STATUS) === 1);
      const follow = scrapes.find((s) => s.values.get(STATUS) === 0);
      assert.ok(lead && follow);
      const v = (s: Scrape, key: string) => s.values.get(key);
      const name = `name="${LOCK_ID}"`;
      assert.ok(v(lead, `${METRIC_NAMES.renewals}{${name},outcome="success"}`)! > 0);
      // A leader that was paused past its lease may have found its row gone at its first renewal after.
      assert.ok(v(lead, `${METRIC_NAMES.renewals}{${name},outcome="lost"}`)! >= 0);
      assert.ok(v(lead, `${METRIC_NAMES.renewalDuration}_count{${name}}`)! > 0);
      const left = v(lead, `${METRIC_NAMES.leaseRemaining}{${name}}`)!;
      assert.ok(left > 0 && left <= LEASE / 1000, String(left));
      assert.equal(v(follow, `${METRIC_NAMES.leaseRemaining}{${name}}`), 0);
      assert.ok(v(lead, `${METRIC_NAMES.leadershipChanges}{${name},transition="elected"}`)! >= 1);
    } catch (err) {
      // What the apps printed besides their JSON lines (their warnings), for the report.
      for (const a of apps) if (a.stderr.trim() !== '') console.log(`${a.instance}: ${a.stderr.trim()}`);
      throw err;
    } finally {
      await killAll(apps);
    }
  });

  test('metrics on a registry passed in, with a name; removed at shutdown', async () => {
    const schema = randomSchema();
    schemas.push(schema);
    const registry = new Registry();
    const e = await LeaderElectorCore.connect(DATABASE_URL, {
      schema,
      lockId: 52,
      ...FAST,
      metrics: { registry, name: 'nightly' },
    });
    try {
      assert.ok(await waitFor(() => e.amILeader(), 5000));
      const text = await registry.metrics();
      assert.match(text, /^leader_election_master_status\{name="nightly"\} 1$/m);
      assert.match(text, /^leader_election_leadership_changes_total\{name="nightly",transition="elected"\} 1$/m);
      assert.match(text, /^leader_election_lease_remaining_seconds\{name="nightly"\} [0-9.]+$/m);
      for (const n of Object.values(METRIC_NAMES)) assert.ok(text.includes(`# TYPE ${n}`), n);
    } finally {
      await e.shutdown();
    }
    assert.doesNotMatch(await registry.metrics(), /leader_election_master_status\{name="nightly"\}/);
  });

  test('without prom-client or @nestjs/terminus: a typed error naming the missing package', async () => {
    const schema = randomSchema();
    schemas.push(schema);
    const dist = join(__dirname, '..', 'dist', 'index.js');
    // The two packages made unfindable, as in an app that did not install them.
    const out = await runScript(`
      const Module = require('node:module');
      const resolve = Module._resolveFilename;
      Module._resolveFilename = function (request, ...rest) {
        if (request === 'prom-client' || request === '@nestjs/terminus') {
          const err = new Error("Cannot find module '" + request + "'");
          err.code = 'MODULE_NOT_FOUND';
          throw err;
        }
        return resolve.call(this, request, ...rest);
      };
      const { LeaderElectorCore, LeaderElectionHealthIndicator } = require(${JSON.stringify(dist)});
      const pick = (e) => ({ name: e.name, code: e.code, message: e.message });
      (async () => {
        const url = ${JSON.stringify(DATABASE_URL)};
        let metrics = null;
        try {
          await LeaderElectorCore.connect(url, { schema: ${JSON.stringify(schema)}, lockId: 53, metrics: true });
        } catch (e) { metrics = pick(e); }
        const e = await LeaderElectorCore.connect(url, { schema: ${JSON.stringify(schema)}, lockId: 53 });
        let health = null;
        try { await new LeaderElectionHealthIndicator(e).isHealthy(); } catch (x) { health = pick(x); }
        await e.shutdown();
        process.stdout.write(JSON.stringify({ metrics, health }));
      })();
    `);
    const { metrics, health } = out as Record<string, { name: string; code: string; message: string }>;
    assert.equal(metrics?.name, 'MissingPeerDependencyError');
    assert.equal(metrics?.code, 'ERR_MISSING_DEPENDENCY');
    assert.match(metrics!.message, /"prom-client".*npm install prom-client/);
    assert.equal(health?.name, 'MissingPeerDependencyError');
    assert.match(health!.message, /"@nestjs\/terminus"/);
  });
});
