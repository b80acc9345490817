// How named elections spread over the instances of a NestJS app (issue 22): starts instances of the worker
// in tests/fixtures/jobs-app.ts (built by `npm run build:ts`), each declaring the same named elections
// (`LeaderElectorModule.forFeature`; on PostgreSQL they are spread by the fleet's plan), and follows
// every name's leader through the instances' `elected` / `revoked` lines.
//
//   node bench/spread.mjs [--scenarios together,rolling,kill,sigterm,restart,wide] [--instances 3]
//                         [--names 30] [--lease 3000] [--steady 300] [--json]
//
// Scenarios: `together` (all instances start at once), `rolling` (5 s apart), `kill` (one SIGKILLed once
// balanced), `sigterm` (one SIGTERMed), `restart` (each instance in turn SIGTERMed and started again with
// its id), `wide` (300 names over 5 instances, started together). After the scenario's change, the
// instances run `--steady` seconds more: the moves then are the steady-state moves.
// Per scenario: the moves (a name led by another instance than before), their optimum, max - min of the
// names led after settling, the time from the last membership change to balance, the longest time any name
// had no leader during a planned move (SIGTERM, restart, joins), overlaps (two instances leading a name
// at once by their lines' times), the most moves of one name. `--json` prints one JSON array on stdout.
// Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), a schema of its own per scenario.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import pg from 'pg';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = join(root, 'dist-tests', 'fixtures', 'jobs-app.js');
const ALL = ['together', 'rolling', 'kill', 'sigterm', 'restart', 'wide'];
let values;
try {
  ({ values } = parseArgs({
    options: {
      scenarios: { type: 'string', default: ALL.join(',') },
      instances: { type: 'string', default: '3' },
      names: { type: 'string', default: '30' },
      lease: { type: 'string', default: '3000' },
      steady: { type: 'string', default: '300' },
      json: { type: 'boolean', default: false },
    },
  }));
  for (const k of ['instances', 'names', 'lease', 'steady']) {
    if (!(Number(values[k]) > 0)) throw new Error(`--${k} needs a positive number (got ${values[k]})`);
  }
  for (const s of values.scenarios.split(',')) if (!ALL.includes(s)) throw new Error(`unknown scenario ${s} (known: ${ALL.join(', ')})`);
} catch (e) {
  console.error(`${e.message}\nusage: node bench/spread.mjs [--scenarios ${ALL.join(',')}] [--instances N] [--names N] [--lease MS] [--steady S] [--json]`);
  process.exit(2);
}
const lease = Number(values.lease);
const steady = Number(values.steady) * 1000;
const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(...a);

/** One scenario's instances and what their lines say. */
class Run {
  constructor(names) {
    this.names = names;
    this.schema = `ll_spread_${randomBytes(4).toString('hex')}`;
    this.procs = new Map(); // id -> { child, exited }
    this.leaders = new Map(); // name -> Set of instance ids leading it now
    this.last = new Map(); // name -> the last instance that led it
    this.moves = new Map(); // name -> moves
    this.unledSince = new Map(); // name -> time it lost its last leader
    this.maxGap = 0;
    this.intervals = new Map(); // name -> [{ id, from, to }] by the lines' times
    this.planned = false; // gaps count only during planned moves
  }

  start(id) {
    const child = spawn(process.execPath, [fixture], {
      env: {
        ...process.env,
        DATABASE_URL,
        LL_SCHEMA: this.schema,
        LL_INSTANCE: id,
        LL_JOB_MS: '0',
        LL_NAMES: String(this.names),
        LL_LEASE: String(lease),
        LL_RENEWAL: String(Math.round(lease / 6)),
        LL_JITTER: String(Math.round(lease / 15)),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((r) => child.on('exit', r));
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let e;
        try {
          e = JSON.parse(line);
        } catch {
          continue;
        }
        if (e.event === 'elected') this.#elected(e.name, id, e.t);
        if (e.event === 'revoked') this.#revoked(e.name, id, e.t);
      }
    });
    child.on('exit', () => {
      // A SIGKILLed instance prints no `revoked`: it stops leading when its process ends.
      for (const [name, set] of this.leaders) if (set.has(id)) this.#revoked(name, id, Date.now());
    });
    this.procs.set(id, { child, exited });
  }

  #elected(name, id, t) {
    const set = this.leaders.get(name) ?? new Set();
    this.leaders.set(name, set);
    set.add(id);
    const list = this.intervals.get(name) ?? [];
    this.intervals.set(name, list);
    list.push({ id, from: t, to: Infinity });
    const prev = this.last.get(name);
    if (prev !== undefined && prev !== id) this.moves.set(name, (this.moves.get(name) ?? 0) + 1);
    this.last.set(name, id);
    const since = this.unledSince.get(name);
    if (since !== undefined) {
      if (this.planned) this.maxGap = Math.max(this.maxGap, t - since);
      this.unledSince.delete(name);
    }
  }

  #revoked(name, id, t) {
    const set = this.leaders.get(name);
    if (!set?.delete(id)) return;
    const open = (this.intervals.get(name) ?? []).findLast((i) => i.id === id && i.to === Infinity);
    if (open) open.to = t;
    if (set.size === 0) this.unledSince.set(name, t);
  }

  /** Names led by each live instance. */
  loads() {
    const live = (id) => this.procs.get(id).child.exitCode === null && this.procs.get(id).child.signalCode === null;
    const per = new Map([...this.procs.keys()].filter(live).map((id) => [id, 0]));
    for (const set of this.leaders.values()) for (const id of set) if (per.has(id)) per.set(id, per.get(id) + 1);
    return [...per.values()];
  }

  balanced() {
    const l = this.loads();
    const led = [...this.leaders.values()].filter((s) => s.size === 1).length;
    return led === this.names && l.length > 0 && Math.max(...l) - Math.min(...l) <= 1;
  }

  /** Waits until balanced; returns the time it took (null after `limit`). */
  async settle(limit = 60_000) {
    const t0 = Date.now();
    while (Date.now() - t0 < limit) {
      if (this.balanced()) return Date.now() - t0;
      await sleep(20);
    }
    return null;
  }

  /**
   * Pairs of leaderships of one name by two instances that overlap by the lines' times (`elected` and
   * `revoked` carry Date.now() of the moment each instance's event loop got to them: an upper bound of
   * the old leader's end, so a late `revoked` line can show an overlap that the instances' own
   * amILeader() never had; the chaos checker samples that).
   */
  overlaps() {
    let n = 0;
    for (const list of this.intervals.values()) {
      for (let i = 0; i < list.length; i++) {
        for (let j = i + 1; j < list.length; j++) {
          const [a, b] = [list[i], list[j]];
          if (a.id !== b.id && a.from < b.to && b.from < a.to) n++;
        }
      }
    }
    return n;
  }

  totalMoves() {
    let n = 0;
    for (const m of this.moves.values()) n += m;
    return n;
  }

  async stop(id, signal) {
    const p = this.procs.get(id);
    p.child.kill(signal);
    await p.exited;
  }

  async close() {
    for (const p of this.procs.values()) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
    await Promise.all([...this.procs.values()].map((p) => p.exited));
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS "${this.schema}" CASCADE`);
    await client.end();
  }
}

async function scenario(kind) {
  const m = kind === 'wide' ? 5 : Number(values.instances);
  const n = kind === 'wide' ? 300 : Number(values.names);
  const run = new Run(n);
  const ids = Array.from({ length: m }, (_, i) => `i${i}`);
  let optimal = 0;
  let balanceMs = null;
  try {
    if (kind === 'rolling') {
      run.planned = true;
      for (const [k, id] of ids.entries()) {
        run.start(id);
        if (k > 0) optimal += Math.floor(n / (k + 1)); // the joiner's share
        if (k < ids.length - 1) await sleep(5000);
      }
      balanceMs = await run.settle();
    } else {
      for (const id of ids) run.start(id);
      balanceMs = await run.settle();
      if (kind === 'kill' || kind === 'sigterm') {
        await sleep(2000);
        run.moves.clear();
        run.planned = kind === 'sigterm';
        const victim = ids[1];
        const held = [...run.leaders.values()].filter((s) => s.has(victim)).length;
        optimal = held;
        await run.stop(victim, kind === 'kill' ? 'SIGKILL' : 'SIGTERM');
        balanceMs = await run.settle();
      } else if (kind === 'restart') {
        await sleep(2000);
        run.moves.clear();
        run.planned = true;
        for (const id of ids) {
          const held = [...run.leaders.values()].filter((s) => s.has(id)).length;
          optimal += held + Math.floor(n / m); // its names go away, a share comes back
          await run.stop(id, 'SIGTERM');
          await run.settle();
          run.start(id);
          balanceMs = await run.settle();
        }
      } else {
        // together, wide: the start itself; the first leaders are whoever came first.
        optimal = 0;
      }
    }
    const moves = run.totalMoves();
    const maxMovesPerName = Math.max(0, ...run.moves.values());
    const loads = run.loads();
    // Steady state: nothing changes; every move now is a steady-state move.
    const before = run.totalMoves();
    await sleep(steady);
    const steadyMoves = run.totalMoves() - before;
    return {
      scenario: kind,
      members: kind === 'kill' || kind === 'sigterm' ? m - 1 : m,
      names: n,
      moves,
      optimalMoves: optimal,
      steadyMoves,
      maxMinusMin: loads.length > 0 ? Math.max(...loads) - Math.min(...loads) : null,
      balanceMs,
      maxGapMs: run.maxGap,
      overlaps: run.overlaps(),
      maxMovesPerName,
      loads,
      steadySeconds: steady / 1000,
    };
  } finally {
    await run.close();
  }
}

const results = [];
for (const s of values.scenarios.split(',')) {
  log(`spread: ${s} ...`);
  results.push(await scenario(s));
  log(`spread: ${JSON.stringify(results.at(-1))}`);
}
if (values.json) {
  process.stdout.write(`${JSON.stringify(results)}\n`);
} else {
  console.log('| scenario | members | names | moves (optimum) | steady moves | max - min | balanced in | longest planned gap | overlaps | most moves of a name |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    console.log(
      `| ${r.scenario} | ${r.members} | ${r.names} | ${r.moves} (${r.optimalMoves}) | ${r.steadyMoves} in ${r.steadySeconds} s | ${r.maxMinusMin} | ` +
        `${r.balanceMs === null ? 'never' : `${r.balanceMs} ms`} | ${r.maxGapMs} ms | ${r.overlaps} | ${r.maxMovesPerName} |`,
    );
  }
}
