// leaderlease against nest-leader-election 1.1.2: same machine, same PostgreSQL, same settings.
// Started by scripts/bench.sh (`npm run bench`), which provides a throwaway PostgreSQL logging every
// statement (log_statement = all, log_line_prefix '%n|%a|%p| '):
//   BENCH_DATABASE_URL   the server
//   BENCH_PG_LOG         its log file (statements are counted there, per application_name)
// Flags: --quick (short settings only, fewer rounds, shorter windows), --settings short|default|both,
//   --only leaderlease|nest-leader-election, --takeovers N, --handovers N, --pauses N (per settings),
//   --elections N (0 skips), --window S (statement-rate window, seconds), --json FILE, --markdown FILE.
import { fork } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { readFileSync, writeFileSync, openSync, readSync, closeSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';

import { PACKAGES } from './electors.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const URL_ = process.env.BENCH_DATABASE_URL;
const LOG = process.env.BENCH_PG_LOG;
if (!URL_ || !LOG) {
  console.error('bench/run.mjs: run it through `npm run bench` (scripts/bench.sh), which starts the database');
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------------
// Settings

/** The same for both packages. "default" is the documented default of both packages, passed explicitly
 * (nest-leader-election 1.1.2's code has other defaults than its README: lease 30 s, renewal lease / 3,
 * cleanup 2 x lease). The jitter at short settings must be below the renewal interval for leaderlease. */
const SETTINGS = {
  short: { leaseDuration: 3000, renewalInterval: 1000, jitterRange: 500, baseCleanInterval: 18000 },
  default: { leaseDuration: 10000, renewalInterval: 3000, jitterRange: 2000, baseCleanInterval: 60000 },
};
const LOCK = { short: 1, default: 2, cost: 3, many: 1001 };
const SCHEMA = { leaderlease: 'bench_leaderlease', 'nest-leader-election': 'bench_nle' };
const TAG = { leaderlease: 'll', 'nest-leader-election': 'nle' };
const CANDIDATES = 3;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    settings: { type: 'string' },
    only: { type: 'string' },
    takeovers: { type: 'string' },
    handovers: { type: 'string' },
    pauses: { type: 'string' },
    window: { type: 'string' },
    elections: { type: 'string' },
    json: { type: 'string' },
    markdown: { type: 'string' },
  },
});
const quick = Boolean(args.quick);
const settingsList = args.settings && args.settings !== 'both' ? [args.settings] : quick ? ['short'] : ['short', 'default'];
const packages = args.only ? [args.only] : PACKAGES;
const rounds = {
  short: { takeovers: 10, handovers: 10, pauses: 1, window: 20 },
  default: { takeovers: 3, handovers: 5, pauses: 1, window: 20 },
};
if (quick) rounds.short = { takeovers: 2, handovers: 3, pauses: 1, window: 10 };
for (const s of Object.keys(rounds)) {
  for (const k of ['takeovers', 'handovers', 'pauses']) if (args[k] !== undefined) rounds[s][k] = Number(args[k]);
  if (args.window !== undefined) rounds[s].window = Number(args.window);
}
const elections = args.elections !== undefined ? Number(args.elections) : quick ? 200 : 1000;
const ELECTIONS_START_BOUND_S = 120;
const ELECTIONS_WINDOW_S = quick ? 10 : 20;

for (const s of settingsList) if (!SETTINGS[s]) throw new Error(`unknown --settings ${s}`);
for (const p of packages) if (!PACKAGES.includes(p)) throw new Error(`unknown --only ${p}`);

// ---------------------------------------------------------------------------------------------------
// Helpers

const now = () => Number(process.hrtime.bigint());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const db = new pg.Client({ connectionString: URL_, application_name: 'bench' });
const children = new Set();


/** A child process (candidate.mjs or many.mjs) and every message it sent. */
class Child {
  constructor(script, opts) {
    this.opts = opts;
    this.id = opts.app;
    this.events = [];
    this.leading = false;
    this.waiters = new Set();
    this.stderr = '';
    this.proc = fork(`${HERE}${script}`, [JSON.stringify(opts)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    children.add(this);
    this.proc.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d).slice(-4000);
    });
    this.exitCode = undefined;
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        children.delete(this);
        this.#notify();
        resolve();
      });
    });
    this.proc.on('message', (m) => {
      this.events.push(m);
      if (m.type === 'leader') this.leading = m.value;
      this.#notify();
    });
    this.proc.on('error', () => undefined);
  }

  #notify() {
    for (const w of this.waiters) w();
  }

  /** The first message (already received or to come) matching `pred`, or null after `timeoutMs`. */
  waitFor(pred, timeoutMs) {
    return waitAny([this], pred, timeoutMs).then((r) => r?.event ?? null);
  }

  send(msg) {
    if (this.proc.connected) this.proc.send(msg);
  }

  async request(cmd, type, timeoutMs = 10_000) {
    const from = this.events.length;
    this.send({ cmd });
    const ev = await waitAny([this], (e, i) => e.type === type && i >= from, timeoutMs);
    if (!ev) throw new Error(`${this.id}: no '${type}' reply${this.#why()}`);
    return ev.event;
  }

  #why() {
    return this.exitCode !== undefined ? ` (exited: ${this.exitCode})\n${this.stderr}` : '';
  }

  async kill(signal = 'SIGKILL') {
    if (this.exitCode === undefined) this.proc.kill(signal);
    await this.exited;
  }
}

/** The first message of any of `kids` matching `pred(event, index, child)`: { child, event } or null. */
function waitAny(kids, pred, timeoutMs) {
  return new Promise((resolve) => {
    let timer;
    const cleanup = () => {
      clearTimeout(timer);
      for (const k of kids) k.waiters.delete(check);
    };
    const check = () => {
      for (const child of kids) {
        const i = child.events.findIndex((e, idx) => pred(e, idx, child));
        if (i >= 0) {
          cleanup();
          return resolve({ child, event: child.events[i] });
        }
      }
      if (kids.every((k) => k.exitCode !== undefined)) {
        cleanup();
        resolve(null);
      }
    };
    for (const k of kids) k.waiters.add(check);
    timer = setTimeout(() => {
      cleanup();
      resolve(null);
    }, timeoutMs);
    check();
  });
}

async function waitUntil(cond, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** The database clock minus the monotonic clock, in ms (from the quickest of 7 round trips). */
async function dbOffset() {
  let best = null;
  for (let i = 0; i < 7; i++) {
    const t0 = now();
    const r = await db.query('SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms');
    const t1 = now();
    if (best === null || t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: r.rows[0].ms - (t0 + t1) / 2e6 };
  }
  return best;
}

async function readLease(schema, lockId) {
  const r = await db.query(
    `SELECT leader_id, (extract(epoch FROM expires_at) * 1000)::float8 AS expires_ms,
            (extract(epoch FROM created_at) * 1000)::float8 AS created_ms
     FROM "${schema}".leader_lease WHERE id = $1`,
    [lockId],
  );
  const row = r.rows[0];
  return row ? { leaderId: row.leader_id, expiresMs: row.expires_ms, createdMs: row.created_ms } : null;
}

const CLK_TCK = 100; // Linux's USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

/** CPU time (ms) the server's backends of each application_name have used so far. */
async function serverCpuMs(apps) {
  const r = await db.query('SELECT pid, application_name AS app FROM pg_stat_activity WHERE application_name = ANY($1)', [apps]);
  const out = Object.fromEntries(apps.map((a) => [a, 0]));
  for (const { pid, app } of r.rows) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
      out[app] += ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
    } catch {
      // the backend has gone
    }
  }
  return out;
}

function stats(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const at = (q) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(q * v.length) - 1))];
  return { n: v.length, median: v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2, p90: at(0.9), max: v[v.length - 1], min: v[0] };
}

// ---------------------------------------------------------------------------------------------------
// Statement counting: every statement the server runs is one log line `<epoch>|<app>|<pid>| LOG:  statement: ...`
// (simple protocol) or `... LOG:  execute <name>: ...` (extended protocol). A window is delimited by two
// marker statements of this process, so the count is exact.

let markerSeq = 0;
async function marker() {
  const name = `bench-marker-${process.pid}-${++markerSeq}`;
  const offset = statSync(LOG).size;
  await db.query(`SELECT '${name}'`);
  return { name, offset, t: now() };
}

const STMT = /^[\d.]+\|([^|]*)\|\d+\| LOG:  (?:statement|execute [^:]*): (.*)$/;

/** Statements per application_name between two markers: { app: { total, kinds: { WORD: n } } }. */
async function countStatements(a, b) {
  await sleep(100);
  const size = statSync(LOG).size;
  const fd = openSync(LOG, 'r');
  const buf = Buffer.alloc(size - a.offset);
  readSync(fd, buf, 0, buf.length, a.offset);
  closeSync(fd);
  const lines = buf.toString('utf8').split('\n');
  const out = {};
  let inside = false;
  for (const line of lines) {
    const m = STMT.exec(line);
    if (!m) continue;
    if (m[1] === 'bench') {
      if (m[2].includes(a.name)) inside = true;
      if (m[2].includes(b.name)) break;
      continue;
    }
    if (!inside) continue;
    const o = (out[m[1]] ??= { total: 0, kinds: {} });
    o.total++;
    const word = (m[2].trim().match(/^\w+/)?.[0] ?? '?').toUpperCase();
    o.kinds[word] = (o.kinds[word] ?? 0) + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Candidates

function candidate(pkg, settings, lockId, app, pollMs, mode) {
  return new Child('candidate.mjs', {
    pkg,
    url: URL_,
    app,
    schema: SCHEMA[pkg],
    config: { ...SETTINGS[settings], lockId, instanceId: app },
    pollMs,
    mode,
  });
}

class Group {
  constructor(pkg, settings, pollMs) {
    this.pkg = pkg;
    this.settings = settings;
    this.lockId = LOCK[settings];
    this.pollMs = pollMs;
    this.members = [];
    this.seq = 0;
  }

  async add() {
    const app = `${TAG[this.pkg]}-${this.settings}-c${++this.seq}`;
    const c = candidate(this.pkg, this.settings, this.lockId, app, this.pollMs);
    const ready = await c.waitFor((e) => e.type === 'ready', 60_000);
    if (!ready) {
      await c.kill();
      throw new Error(`${app} did not start: ${c.stderr}`);
    }
    this.members.push(c);
    return c;
  }

  async start(n = CANDIDATES) {
    for (let i = 0; i < n; i++) await this.add();
    await this.stable();
    return this;
  }

  remove(c) {
    this.members = this.members.filter((m) => m !== c);
  }

  leaders() {
    return this.members.filter((m) => m.leading);
  }

  /** Exactly one member leads and the lease row names it. */
  async stable(timeoutMs = 300_000) {
    await waitUntil(
      async () => {
        const l = this.leaders();
        if (l.length !== 1) return false;
        const row = await readLease(SCHEMA[this.pkg], this.lockId);
        return row?.leaderId === l[0].id;
      },
      timeoutMs,
      `one ${this.pkg} leader (${this.settings})`,
    );
    return this.leaders()[0];
  }

  async stop() {
    await Promise.all(this.members.map((m) => m.kill()));
    this.members = [];
  }
}

/** Generous bound for a new leader to appear: the original waits for its cleanup (hard-coded 15 s lease,
 * rows expired 5 s, cleanup every baseCleanInterval). */
function leaderBoundMs(settings) {
  const s = SETTINGS[settings];
  return 2 * (15_000 + 5_000 + s.baseCleanInterval + s.renewalInterval) + 10_000;
}

const randomPhase = (settings) => sleep(Math.random() * SETTINGS[settings].renewalInterval);

/**
 * Before a kill: a random moment of the cycles the takeover depends on. For leaderlease that is the renewal
 * cycle. The original's takeover waits for a cleanup job of a surviving candidate, whose timer runs from the
 * candidate's start; candidates are replaced at the end of each round and a round lasts about two cleanup
 * intervals, so without a wait over a whole cleanup interval every kill would fall at the same point of
 * those timers.
 */
const killPhase = (g) =>
  sleep(Math.random() * (g.pkg === 'nest-leader-election' ? SETTINGS[g.settings].baseCleanInterval : SETTINGS[g.settings].renewalInterval));

async function takeover(g) {
  const { settings, pkg } = g;
  const schema = SCHEMA[pkg];
  await g.stable();
  await killPhase(g);
  const leader = await g.stable();
  const before = await readLease(schema, g.lockId);
  const off = await dbOffset();
  const tKill = now();
  await leader.kill('SIGKILL');
  g.remove(leader);
  await sleep(20);
  const after = await readLease(schema, g.lockId);
  const lease = after?.leaderId === leader.id ? after : before;
  const won = await waitAny(g.members, (e) => e.type === 'leader' && e.value && e.t > tKill, leaderBoundMs(settings));
  const r = { killed: leader.id, expiryAfterKillMs: lease.expiresMs - (tKill / 1e6 + off.offset) };
  if (!won) {
    r.timedOut = true;
    r.killToLeadMs = Infinity;
  } else {
    // The original reports leadership before its transaction commits: wait for the row to show.
    let row = await readLease(schema, g.lockId);
    for (let i = 0; i < 500 && row?.leaderId !== won.child.id; i++) {
      await sleep(10);
      row = await readLease(schema, g.lockId);
    }
    r.newLeader = won.child.id;
    r.killToLeadMs = (won.event.t - tKill) / 1e6;
    r.expiryToLeadMs = won.event.t / 1e6 + off.offset - lease.expiresMs;
    r.expiryToTermMs = row?.leaderId === won.child.id ? row.createdMs - lease.expiresMs : null;
  }
  await g.add();
  return r;
}

async function handover(g) {
  const leader = await g.stable();
  await randomPhase(g.settings);
  leader.send({ cmd: 'shutdown' });
  const start = await leader.waitFor((e) => e.type === 'shutdown-start', 10_000);
  const others = g.members.filter((m) => m !== leader);
  const won = await waitAny(others, (e) => e.type === 'leader' && e.value && e.t > start.t, leaderBoundMs(g.settings));
  const done = await leader.waitFor((e) => e.type === 'shutdown-done', 30_000);
  await leader.kill('SIGKILL');
  g.remove(leader);
  const r = {
    released: leader.id,
    handoverMs: won ? (won.event.t - start.t) / 1e6 : Infinity,
    shutdownMs: done ? (done.t - start.t) / 1e6 : null,
  };
  await g.add();
  return r;
}

async function pause(g) {
  const leader = await g.stable();
  await randomPhase(g.settings);
  const others = g.members.filter((m) => m !== leader);
  const tStop = now();
  leader.proc.kill('SIGSTOP');
  const won = await waitAny(others, (e) => e.type === 'leader' && e.value && e.t > tStop, leaderBoundMs(g.settings));
  await sleep(100);
  const tCont = now();
  leader.proc.kill('SIGCONT');
  const r = { paused: leader.id, tookOver: Boolean(won), pausedMs: (tCont - tStop) / 1e6 };
  const gap = await leader.waitFor((e) => e.type === 'gap' && e.to > tCont, 10_000);
  if (gap) {
    r.saidYes = gap.value;
    r.firstSampleAfterContMs = (gap.to - tCont) / 1e6;
    if (gap.value) {
      const observeMs = 10_000;
      const no = await leader.waitFor((e) => e.type === 'leader' && !e.value && e.t >= gap.to, observeMs);
      r.yesForMs = no ? (no.t - gap.to) / 1e6 : Infinity;
      // The new leader was still leading at that sample: two processes said amILeader() true at once.
      r.twoLeaders = Boolean(
        won && !won.child.events.some((e) => e.type === 'leader' && !e.value && e.t > won.event.t && e.t <= gap.to),
      );
    } else {
      r.yesForMs = 0;
      r.twoLeaders = false;
    }
  }
  await leader.kill('SIGKILL');
  g.remove(leader);
  await g.add();
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Phases

const results = { settings: SETTINGS, started: new Date().toISOString(), phases: {} };

async function statementWindow(settings) {
  const seconds = rounds[settings].window;
  log(`statements, CPU and memory at ${settings} settings: both packages, ${CANDIDATES} candidates each, ${seconds} s`);
  const groups = [];
  for (const pkg of packages) groups.push(await new Group(pkg, settings, 50).start());
  await sleep(2 * SETTINGS[settings].renewalInterval);
  const all = groups.flatMap((g) => g.members);
  const leaderBefore = new Map(groups.map((g) => [g, g.leaders()[0]]));
  const s0 = new Map(await Promise.all(all.map(async (c) => [c, await c.request('stats', 'stats')])));
  const srv0 = await serverCpuMs(all.map((c) => c.id));
  const a = await marker();
  await sleep(seconds * 1000);
  const b = await marker();
  const srv1 = await serverCpuMs(all.map((c) => c.id));
  const s1 = new Map(await Promise.all(all.map(async (c) => [c, await c.request('stats', 'stats')])));
  const counts = await countStatements(a, b);
  const windowS = (b.t - a.t) / 1e9;
  const out = {};
  for (const g of groups) {
    const leader = leaderBefore.get(g);
    if (g.leaders()[0] !== leader || leader.events.some((e) => e.type === 'leader' && e.t > a.t)) {
      throw new Error(`${g.pkg}: the leader changed during the statement window`);
    }
    const per = (c) => ({
      statementsPerS: (counts[c.id]?.total ?? 0) / windowS,
      kinds: counts[c.id]?.kinds ?? {},
      cpuMsPerS: (s1.get(c).cpuUs - s0.get(c).cpuUs) / 1000 / windowS,
      serverCpuMsPerS: (srv1[c.id] - srv0[c.id]) / windowS,
      rssMB: s1.get(c).rss / 2 ** 20,
    });
    const followers = g.members.filter((m) => m !== leader).map(per);
    const mean = (k) => followers.reduce((x, f) => x + f[k], 0) / followers.length;
    out[g.pkg] = {
      windowS,
      leader: per(leader),
      follower: {
        statementsPerS: mean('statementsPerS'),
        cpuMsPerS: mean('cpuMsPerS'),
        serverCpuMsPerS: mean('serverCpuMsPerS'),
        rssMB: mean('rssMB'),
        each: followers,
      },
    };
  }
  for (const g of groups) await g.stop();
  return out;
}

async function failovers(pkg, settings) {
  const r = rounds[settings];
  log(`${pkg} at ${settings} settings: ${r.takeovers} takeovers, ${r.handovers} handovers, ${r.pauses} pauses`);
  const g = await new Group(pkg, settings, 1).start();
  const out = { takeovers: [], handovers: [], pauses: [] };
  try {
    for (let i = 0; i < r.takeovers; i++) {
      const t = await takeover(g);
      out.takeovers.push(t);
      log(`  takeover ${i + 1}: kill -> leader ${fmt(t.killToLeadMs)} ms, expiry -> leader ${fmt(t.expiryToLeadMs)} ms, expiry -> new term (db) ${fmt(t.expiryToTermMs)} ms`);
    }
    for (let i = 0; i < r.handovers; i++) {
      const h = await handover(g);
      out.handovers.push(h);
      log(`  handover ${i + 1}: ${fmt(h.handoverMs)} ms (shutdown() took ${fmt(h.shutdownMs)} ms)`);
    }
    for (let i = 0; i < r.pauses; i++) {
      const p = await pause(g);
      out.pauses.push(p);
      log(`  pause ${i + 1}: paused ${fmt(p.pausedMs)} ms, took over: ${p.tookOver}, amILeader() after SIGCONT: ${p.saidYes}, for ${fmt(p.yesForMs)} ms`);
    }
  } finally {
    await g.stop();
  }
  return out;
}

async function cost(pkg) {
  const c = candidate(pkg, 'default', LOCK.cost, `${TAG[pkg]}-cost`, 1000, 'cost');
  const r = await c.waitFor((e) => e.type === 'cost', 120_000);
  await c.kill();
  if (!r) throw new Error(`${pkg}: no amILeader() cost measured: ${c.stderr}`);
  log(`amILeader() ${pkg}: ${r.ns.toFixed(1)} ns/call (plain JS function ${r.plainNs.toFixed(1)} ns)`);
  return r;
}

async function many(pkg, settings) {
  const app = `${TAG[pkg]}-many`;
  log(`${pkg}: ${elections} elections in one process at ${settings} settings (start bound ${ELECTIONS_START_BOUND_S} s)`);
  const c = new Child('many.mjs', {
    pkg,
    url: URL_,
    app,
    schema: SCHEMA[pkg],
    config: { ...SETTINGS[settings], instanceId: app },
    n: elections,
    firstLockId: LOCK.many,
  });
  const out = { n: elections, settings };
  try {
    const ready = await c.waitFor((e) => e.type === 'ready', ELECTIONS_START_BOUND_S * 1000);
    const progress = c.events.filter((e) => e.type === 'progress').at(-1);
    if (!ready) {
      out.started = progress?.started ?? 0;
      out.failed = c.exitCode !== undefined ? `exited (${c.exitCode}): ${c.stderr.trim().split('\n').slice(-3).join(' / ')}` : `started ${out.started} of ${elections} in ${ELECTIONS_START_BOUND_S} s`;
      log(`  ${out.failed}`);
      return out;
    }
    out.started = ready.started;
    out.startS = ready.startMs / 1000;
    await sleep(2 * SETTINGS[settings].leaseDuration);
    const s0 = await c.request('stats', 'stats', 60_000);
    const srv0 = await serverCpuMs([app]);
    const a = await marker();
    await sleep(ELECTIONS_WINDOW_S * 1000);
    const b = await marker();
    const srv1 = await serverCpuMs([app]);
    const s1 = await c.request('stats', 'stats', 60_000);
    const counts = await countStatements(a, b);
    const conns = await db.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [app]);
    const windowS = (b.t - a.t) / 1e9;
    Object.assign(out, {
      windowS,
      statementsPerS: (counts[app]?.total ?? 0) / windowS,
      kinds: counts[app]?.kinds ?? {},
      leadersAtStart: s0.leaders,
      leadersAtEnd: s1.leaders,
      connections: conns.rows[0].n,
      cpuMsPerS: (s1.cpuUs - s0.cpuUs) / 1000 / windowS,
      serverCpuMsPerS: (srv1[app] - srv0[app]) / windowS,
      rssMB: s1.rss / 2 ** 20,
    });
    log(`  started in ${out.startS.toFixed(1)} s, ${out.statementsPerS.toFixed(0)} statements/s, leaders ${s1.leaders}/${elections}, ${out.connections} connections, RSS ${out.rssMB.toFixed(0)} MB`);
    return out;
  } finally {
    await c.kill();
  }
}

// ---------------------------------------------------------------------------------------------------
// Report

const fmt = (x, d = 0) => (x === null || x === undefined ? '—' : x === Infinity ? '∞' : Number(x).toFixed(d));

function triple(xs, d = 0) {
  const s = stats(xs);
  if (!s) return { text: '—', key: null };
  const timeouts = xs.filter((x) => x === Infinity).length;
  const text = `${fmt(s.median, d)} / ${fmt(s.p90, d)} / ${fmt(s.max, d)}${timeouts ? ` (+${timeouts} timed out)` : ''}`;
  return { text, key: s.median, stats: s };
}

function ratio(a, b) {
  if (a === null || b === null || a === undefined || b === undefined) return '—';
  if (a <= 0) return '—';
  const r = b / a;
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 0.1 ? `${r.toFixed(1)}×` : `${r.toPrecision(1)}×`;
}

function buildRows() {
  const P = results.phases;
  const rows = [];
  const ll = 'leaderlease';
  const nle = 'nest-leader-election';
  const get = (pkg, settings, k) => P[`${pkg}/${settings}`]?.[k] ?? [];
  for (const s of settingsList) {
    const cells = (label, key, field, d = 0) => {
      const a = triple(get(ll, s, key).map((r) => r[field]), d);
      const b = triple(get(nle, s, key).map((r) => r[field]), d);
      rows.push({ metric: label, settings: s, ll: a.text, nle: b.text, ratio: ratio(a.key, b.key) });
    };
    cells('takeover after SIGKILL: kill → new leader, ms (median / p90 / max)', 'takeovers', 'killToLeadMs');
    cells('takeover: lease expiry → new leader says amILeader(), ms', 'takeovers', 'expiryToLeadMs');
    cells('takeover: lease expiry → new term in the table (db clock), ms', 'takeovers', 'expiryToTermMs');
    cells('handover after shutdown(): call → new leader, ms', 'handovers', 'handoverMs');
    const paused = (pkg) => {
      const ps = get(pkg, s, 'pauses');
      if (ps.length === 0) return { text: '—' };
      const yes = ps.filter((p) => p.saidYes).length;
      const dur = stats(ps.filter((p) => p.saidYes).map((p) => p.yesForMs));
      const two = ps.filter((p) => p.twoLeaders).length;
      const also = two === yes ? ', the new leader too' : two > 0 ? `, the new leader too in ${two}` : '';
      return {
        text: yes === 0 ? `no (${ps.length}/${ps.length})` : `yes (${yes}/${ps.length}${also}), for ${fmt(dur.median)} ms (max ${fmt(dur.max)})`,
      };
    };
    rows.push({ metric: 'paused past its lease: amILeader() right after SIGCONT', settings: s, ll: paused(ll).text, nle: paused(nle).text, ratio: '—' });
    const w = P[`window/${s}`];
    if (w) {
      const v = (pkg, role, k) => w[pkg]?.[role]?.[k];
      for (const [label, role, k, d] of [
        ['statements/s, leader', 'leader', 'statementsPerS', 2],
        ['statements/s, follower', 'follower', 'statementsPerS', 2],
        ['process CPU ms/s, leader', 'leader', 'cpuMsPerS', 2],
        ['process CPU ms/s, follower', 'follower', 'cpuMsPerS', 2],
        ['database server CPU ms/s for the leader', 'leader', 'serverCpuMsPerS', 1],
        ['database server CPU ms/s for a follower', 'follower', 'serverCpuMsPerS', 1],
        ['RSS MB, leader', 'leader', 'rssMB', 1],
        ['RSS MB, follower', 'follower', 'rssMB', 1],
      ]) {
        rows.push({ metric: label, settings: s, ll: fmt(v(ll, role, k), d), nle: fmt(v(nle, role, k), d), ratio: ratio(v(ll, role, k), v(nle, role, k)) });
      }
    }
  }
  const c = P.cost;
  if (c) {
    rows.push({ metric: 'amILeader() cost, ns/call (in-process loop, leading)', settings: 'default', ll: fmt(c[ll]?.ns, 1), nle: fmt(c[nle]?.ns, 1), ratio: ratio(c[ll]?.ns, c[nle]?.ns) });
  }
  const m = P.many;
  if (m) {
    const s = m[ll]?.settings ?? m[nle]?.settings;
    const cell = (r, f) => (!r ? '—' : r.failed ? `could not: ${r.failed}` : f(r));
    const row = (label, f, k) => rows.push({ metric: `${elections} elections in one process: ${label}`, settings: s, ll: cell(m[ll], f), nle: cell(m[nle], f), ratio: k && !m[ll]?.failed && !m[nle]?.failed ? ratio(m[ll]?.[k], m[nle]?.[k]) : '—' });
    row('time to start all, s', (r) => fmt(r.startS, 1), 'startS');
    row('leaders at the end of the window', (r) => `${r.leadersAtEnd}/${r.n}`);
    row('statements/s (all elections)', (r) => fmt(r.statementsPerS, 0), 'statementsPerS');
    row('server connections', (r) => String(r.connections), 'connections');
    row('process CPU ms/s', (r) => fmt(r.cpuMsPerS, 0), 'cpuMsPerS');
    row('database server CPU ms/s', (r) => fmt(r.serverCpuMsPerS, 0), 'serverCpuMsPerS');
    row('RSS MB', (r) => fmt(r.rssMB, 0), 'rssMB');
  }
  return rows;
}

function targets() {
  const P = results.phases;
  const out = [];
  for (const s of settingsList) {
    const t = stats((P[`leaderlease/${s}`]?.takeovers ?? []).map((r) => r.expiryToLeadMs ?? Infinity));
    if (t) out.push({ target: `takeover after a crash within 100 ms of the lease's expiry (${s})`, measured: `median ${fmt(t.median)} ms, p90 ${fmt(t.p90)} ms, max ${fmt(t.max)} ms`, met: t.max <= 100 });
    const h = stats((P[`leaderlease/${s}`]?.handovers ?? []).map((r) => r.handoverMs));
    if (h) out.push({ target: `handover after release under 50 ms at p90 (${s})`, measured: `p90 ${fmt(h.p90)} ms (median ${fmt(h.median)} ms)`, met: h.p90 < 50 });
  }
  const c = P.cost?.leaderlease;
  if (c) out.push({ target: 'amILeader() under 100 ns', measured: `${fmt(c.ns, 1)} ns`, met: c.ns < 100 });
  return out;
}

function table(rows) {
  const head = ['', 'settings', 'leaderlease', 'nest-leader-election 1.1.2', 'ratio'];
  const body = rows.map((r) => [r.metric, r.settings, r.ll, r.nle, r.ratio]);
  const md = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i >= 2 ? '---:' : '---')).join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)];
  const w = head.map((h, i) => Math.max(h.length, ...body.map((r) => String(r[i]).length)));
  const txt = [head, ...body].map((r) => r.map((c, i) => (i >= 2 ? String(c).padStart(w[i]) : String(c).padEnd(w[i]))).join('  '));
  return { md: md.join('\n'), txt: txt.join('\n') };
}

// ---------------------------------------------------------------------------------------------------
// Main

/** RSS of a Node process that loaded nothing, for scale. */
function emptyNodeRss() {
  return new Promise((resolve) => {
    const c = fork(`${HERE}candidate.mjs`, ['--rss-only'], { stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
    c.on('message', (m) => resolve(m.rss / 2 ** 20));
    c.on('exit', () => resolve(null));
  });
}

async function main() {
  await db.connect();
  const version = (await db.query('SHOW server_version')).rows[0].server_version;
  results.machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    node: process.version,
    postgres: version,
    addon: process.env.BENCH_ADDON ?? 'native/ (npm run build or build:fast)',
    revision: process.env.BENCH_REV ?? null,
    original: JSON.parse(readFileSync(`${HERE}node_modules/nest-leader-election/package.json`, 'utf8')).version,
    emptyNodeRssMB: await emptyNodeRss(),
    loadAtStart: loadavg()[0],
  };
  for (const pkg of Object.values(SCHEMA)) {
    await db.query(`DROP SCHEMA IF EXISTS "${pkg}" CASCADE`);
    await db.query(`CREATE SCHEMA "${pkg}"`);
  }
  const t0 = now();
  log(`machine: ${results.machine.cpus} cores (${results.machine.cpuModel}), Node ${results.machine.node}, PostgreSQL ${version}`);

  results.phases.cost = {};
  for (const pkg of packages) results.phases.cost[pkg] = await cost(pkg);

  for (const s of settingsList) {
    results.phases[`window/${s}`] = await statementWindow(s);
    for (const pkg of packages) results.phases[`${pkg}/${s}`] = await failovers(pkg, s);
  }
  if (elections > 0) {
    results.phases.many = {};
    for (const pkg of packages) results.phases.many[pkg] = await many(pkg, 'short');
  }

  results.durationS = (now() - t0) / 1e9;
  results.machine.loadAtEnd = loadavg()[0];
  const load = `load average (1 min) ${results.machine.loadAtStart.toFixed(1)} at the start, ${results.machine.loadAtEnd.toFixed(1)} at the end`;
  const rows = buildRows();
  const tg = targets();
  const t = table(rows);
  const settingsText = settingsList.map((s) => `${s}: ${Object.entries(SETTINGS[s]).map(([k, v]) => `${k} ${v}`).join(', ')}`).join('; ');
  console.log('');
  console.log(t.txt);
  console.log('');
  console.log('ratio = nest-leader-election / leaderlease (median where three values are given)');
  console.log(`settings (both packages): ${settingsText}`);
  console.log(`machine: ${results.machine.cpus} cores, ${results.machine.cpuModel}; Node ${results.machine.node}; PostgreSQL ${version}; leaderlease ${results.machine.revision ?? ''}, addon ${results.machine.addon}; an empty Node process has RSS ${fmt(results.machine.emptyNodeRssMB, 1)} MB; ${load}; run took ${(results.durationS / 60).toFixed(1)} min`);
  console.log('');
  console.log("leaderlease's own targets:");
  for (const x of tg) console.log(`  ${x.met ? 'met    ' : 'NOT met'}  ${x.target}: ${x.measured}`);
  results.rows = rows;
  results.targets = tg;
  if (args.json) writeFileSync(args.json, JSON.stringify(results, (k, v) => (v === Infinity ? 'Infinity' : v), 2));
  if (args.markdown) {
    const tgMd = tg.map((x) => `| ${x.target} | ${x.measured} | ${x.met ? 'met' : '**not met**'} |`).join('\n');
    writeFileSync(
      args.markdown,
      `${t.md}\n\nratio = nest-leader-election / leaderlease (of the medians where three values are given).\n` +
        `Settings (both packages): ${settingsText}.\n` +
        `Machine: ${results.machine.cpus} cores, ${results.machine.cpuModel}; Node ${results.machine.node}; PostgreSQL ${version}; leaderlease ${results.machine.revision ?? ''}, addon ${results.machine.addon}; an empty Node process has RSS ${fmt(results.machine.emptyNodeRssMB, 1)} MB; ${load}; the run took ${(results.durationS / 60).toFixed(1)} min.\n\n` +
        `| target | measured | |\n|---|---|---|\n${tgMd}\n`,
    );
  }
}

const stopAll = async () => {
  await Promise.all([...children].map((c) => c.kill('SIGKILL')));
};
process.on('SIGINT', async () => {
  await stopAll();
  process.exit(130);
});
process.on('SIGTERM', async () => {
  await stopAll();
  process.exit(143);
});

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await stopAll();
  await db.end().catch(() => undefined);
}
