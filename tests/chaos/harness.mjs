// The chaos harness (docs/chaos.md): a throwaway PostgreSQL, one TCP proxy per candidate, Node and Rust
// candidate processes campaigning for one lock id through their proxies, faults injected at random, then
// the checker over everything the candidates recorded. Run it through `npm run chaos` (scripts/chaos.sh),
// which builds what it needs first.
//
//   node tests/chaos/harness.mjs [--minutes 2] [--seed S] [--node 3] [--rust 3] [--lease 2000]
//       [--renewal 600] [--jitter 200] [--safety-margin MS] [--operation-timeout MS] [--slack 500]
//       [--faults kill,stop,terminate,pg-restart,latency,partition,graceful] [--out DIR] [--quiet]
//       [--node-answer status]
//
// The candidates run from a copy of the package (package.json, dist/, native/) and of the candidate
// programs taken into the run directory at the start, so that a rebuild in the working tree during a long run does
// not mix versions. Even-numbered Rust candidates start with connect_shared, the others with connect.
// --node-answer status makes the Node candidates answer from the last status event instead of amILeader()
// (a stored boolean, as nest-leader-election 1.1.2 does): a check that the checker catches the overlaps
// that answer causes.
//
// Exit status 0 when the checker finds no violation, 1 when it does, 2 on bad arguments or a harness error.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { check, summarize } from './check.mjs';
import { ThrowawayPostgres } from './pg.mjs';
import { Proxy } from './proxy.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const require = createRequire(path.join(ROOT, 'package.json'));

const ALL_FAULTS = ['kill', 'stop', 'terminate', 'pg-restart', 'latency', 'partition', 'graceful'];
const LOCK_ID = 7;
const SCHEMA = 'chaos';

// ---------------------------------------------------------------------------------------------- settings

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const name = a.slice(2);
    if (name === 'quiet' || name === 'help') {
      opts[name] = true;
      continue;
    }
    const v = argv[++i];
    if (v === undefined) throw new Error(`${a} needs a value`);
    opts[name] = v;
  }
  if (opts.help) {
    const header = fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n\n')[0];
    process.stdout.write(`${header.replace(/^\/\/ ?/gm, '')}\n`);
    process.exit(0);
  }
  const num = (name, dflt) => {
    if (opts[name] === undefined) return dflt;
    const n = Number(opts[name]);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: not a non-negative number: ${opts[name]}`);
    return n;
  };
  const known = new Set([
    'minutes', 'seed', 'node', 'rust', 'lease', 'renewal', 'jitter', 'safety-margin', 'operation-timeout',
    'slack', 'faults', 'out', 'quiet', 'rust-bin', 'node-answer',
  ]);
  for (const k of Object.keys(opts)) if (!known.has(k)) throw new Error(`unknown option --${k}`);
  const lease = num('lease', 2000);
  const renewal = num('renewal', 600);
  const jitter = num('jitter', 200);
  const s = {
    minutes: num('minutes', 2),
    seed: opts.seed !== undefined ? Number(opts.seed) >>> 0 : (Math.random() * 2 ** 32) >>> 0,
    node: num('node', 3),
    rust: num('rust', 3),
    lease,
    renewal,
    jitter,
    // The core's defaults, written out so that the bound below uses the values the candidates run with.
    safetyMargin: num('safety-margin', Math.max(Math.floor(lease / 10), 50)),
    operationTimeout: num('operation-timeout', Math.min(Math.floor(renewal / 2), 2000)),
    slack: num('slack', 500),
    faults: (opts.faults ?? ALL_FAULTS.join(',')).split(',').filter(Boolean),
    quiet: Boolean(opts.quiet),
    rustBin: opts['rust-bin'] ?? path.join(ROOT, 'target/release-fast/examples/chaos_candidate'),
    lockId: LOCK_ID,
    nodeAnswer: opts['node-answer'] ?? 'amILeader',
  };
  if (!['amILeader', 'status'].includes(s.nodeAnswer)) throw new Error(`--node-answer: amILeader or status`);
  for (const f of s.faults) if (!ALL_FAULTS.includes(f)) throw new Error(`unknown fault kind ${f} (known: ${ALL_FAULTS.join(', ')})`);
  if (s.node + s.rust < 2) throw new Error('at least two candidates are needed');
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  s.out = path.resolve(opts.out ?? path.join(ROOT, 'target/chaos', `${stamp}-seed${s.seed}`));
  return s;
}

/** mulberry32: a small seeded generator, so a seed replays the same choices (not the same timings). */
function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    uniform: (lo, hi) => lo + (hi - lo) * next(),
    int: (lo, hi) => Math.floor(lo + (hi - lo + 1) * next()),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  };
}

// ---------------------------------------------------------------------------------------------- the run

const T0 = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - T0);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const secs = (ns) => (ns / 1e9).toFixed(3);

class Harness {
  constructor(s) {
    this.s = s;
    this.r = rng(s.seed);
    this.dir = s.out;
    this.pg = null;
    this.slots = [];
    this.procs = new Set();
    this.faultCounts = {};
    this.aborting = false;
    this.unexpected = [];
  }

  log(msg) {
    if (!this.s.quiet) process.stdout.write(`[${secs(now()).padStart(8)}s] ${msg}\n`);
  }

  appendJson(file, obj) {
    fs.appendFileSync(path.join(this.dir, file), `${JSON.stringify(obj)}\n`);
  }

  get bound() {
    const { lease, renewal, jitter, operationTimeout, slack } = this.s;
    return lease + renewal + jitter / 2 + 2 * operationTimeout + slack;
  }

  writeRun(extra = {}) {
    const s = this.s;
    const run = {
      seed: s.seed,
      settings: {
        minutes: s.minutes,
        node: s.node,
        rust: s.rust,
        lease: s.lease,
        renewal: s.renewal,
        jitter: s.jitter,
        safetyMargin: s.safetyMargin,
        operationTimeout: s.operationTimeout,
        slack: s.slack,
        faults: s.faults,
        lockId: s.lockId,
        nodeAnswer: s.nodeAnswer,
        schema: SCHEMA,
      },
      bound_ms: this.bound,
      bound_formula: `${s.lease} + ${s.renewal} + ${s.jitter / 2} + 2 x ${s.operationTimeout} + ${s.slack}`,
      start_bound_ms: 20_000 + this.bound,
      command: `node tests/chaos/harness.mjs ${process.argv.slice(2).join(' ')}`.trim(),
      ...this.runExtra,
      ...extra,
    };
    this.runExtra = { ...this.runExtra, ...extra };
    fs.writeFileSync(path.join(this.dir, 'run.json'), `${JSON.stringify(run, null, 2)}\n`);
  }

  /** Copies what the candidates run into the run directory. */
  snapshot() {
    const s = this.s;
    this.pkgDir = path.join(this.dir, 'pkg');
    if (s.node > 0) {
      const addons = fs.existsSync(path.join(ROOT, 'native')) ? fs.readdirSync(path.join(ROOT, 'native')).filter((f) => f.endsWith('.node')) : [];
      if (!fs.existsSync(path.join(ROOT, 'dist/index.js')) || addons.length === 0) {
        throw new Error('dist/ or native/*.node is missing: build them with scripts/chaos.sh');
      }
      fs.mkdirSync(path.join(this.pkgDir, 'native'), { recursive: true });
      fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(this.pkgDir, 'package.json'));
      fs.cpSync(path.join(ROOT, 'dist'), path.join(this.pkgDir, 'dist'), { recursive: true });
      for (const f of ['index.js', 'index.d.ts', ...addons]) {
        fs.copyFileSync(path.join(ROOT, 'native', f), path.join(this.pkgDir, 'native', f));
      }
    }
    this.nodeCandidate = path.join(this.dir, 'bin', 'node-candidate.mjs');
    fs.mkdirSync(path.dirname(this.nodeCandidate), { recursive: true });
    fs.copyFileSync(path.join(HERE, 'node-candidate.mjs'), this.nodeCandidate);
    this.rustBin = path.join(this.dir, 'bin', 'chaos_candidate');
    if (s.rust > 0) {
      if (!fs.existsSync(s.rustBin)) throw new Error(`${s.rustBin} is missing: build it with scripts/chaos.sh`);
      fs.mkdirSync(path.dirname(this.rustBin), { recursive: true });
      fs.copyFileSync(s.rustBin, this.rustBin);
      fs.chmodSync(this.rustBin, 0o755);
    }
  }

  // --- candidates

  spawnCandidate(slot) {
    slot.gen += 1;
    const id = `${slot.name}-g${slot.gen}`;
    const s = this.s;
    const url = `postgres://postgres@127.0.0.1:${slot.proxy.port}/postgres?application_name=chaos-${id}`;
    const args = [
      '--id', id, '--url', url, '--dir', this.dir, '--t0', String(T0), '--lock-id', String(s.lockId),
      '--schema', SCHEMA, '--lease', String(s.lease), '--renewal', String(s.renewal), '--jitter', String(s.jitter),
      '--safety-margin', String(s.safetyMargin), '--operation-timeout', String(s.operationTimeout),
    ];
    if (slot.lang === 'node') args.push('--package', this.pkgDir, '--answer', s.nodeAnswer);
    else if (slot.shared) args.push('--shared');
    const [cmd, argv] =
      slot.lang === 'node' ? [process.execPath, [this.nodeCandidate, ...args]] : [this.rustBin, args];
    const stderr = fs.openSync(path.join(this.dir, `${id}.stderr`), 'a');
    const child = spawn(cmd, argv, {
      stdio: ['pipe', 'pipe', stderr],
      env: { ...process.env, RUST_LOG: process.env.CHAOS_RUST_LOG ?? 'warn' },
    });
    fs.closeSync(stderr);
    const proc = {
      id,
      slot,
      lang: slot.lang,
      child,
      pid: child.pid,
      state: 'starting',
      term: null,
      stopped: false,
      expected: null,
      exited: false,
      spawnedNs: now(),
    };
    proc.exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        proc.exited = true;
        proc.state = 'exited';
        const rec = {
          candidate: id,
          lang: slot.lang,
          pid: child.pid,
          spawned_ns: proc.spawnedNs,
          exited_ns: now(),
          exit_code: code,
          signal,
          expected: proc.expected,
        };
        this.appendJson('processes.jsonl', rec);
        this.procs.delete(proc);
        const fine = (proc.expected === 'sigkill' && signal === 'SIGKILL') || (proc.expected === 'sigterm' && code === 0);
        if (!fine) {
          this.unexpected.push(rec);
          this.log(`!! ${id} exited with ${signal ?? `status ${code}`}${proc.expected ? ` (expected ${proc.expected})` : ' unasked'}; see ${id}.stderr`);
          if (!proc.expected && !this.aborting && !this.stopping) setTimeout(() => this.spawnCandidate(slot), 1000);
        }
        resolve();
      });
    });
    child.on('error', (err) => this.log(`!! ${id}: ${err.message}`));
    child.stdin.on('error', () => undefined);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      if (ev.ev === 'ready') proc.state = 'follower';
      else if (ev.ev === 'lead') {
        proc.state = 'leader';
        proc.term = ev.term;
        this.log(`${id} leads (term ${ev.term})`);
      } else if (ev.ev === 'follow') {
        proc.state = 'follower';
        this.log(`${id} stepped down (term ${proc.term})`);
      }
    });
    slot.proc = proc;
    this.procs.add(proc);
    return proc;
  }

  /** The leader as the candidates' own reports show it (highest term among those that say they lead). */
  leader() {
    let best = null;
    for (const p of this.procs) {
      if (p.state === 'leader' && !p.stopped && !p.exited && (best === null || p.term > best.term)) best = p;
    }
    return best;
  }

  alive() {
    return [...this.procs].filter((p) => !p.exited && !p.stopped && p.expected === null);
  }

  async waitForLeader(timeoutMs) {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until && !this.aborting) {
      const l = this.leader();
      if (l) return l;
      await sleep(10);
    }
    return this.leader();
  }

  /** The leader with probability `p` (when there is one), else any live candidate. */
  target(p = 1) {
    const l = this.leader();
    if (l && this.r.chance(p)) return l;
    const all = this.alive();
    return all.length > 0 ? this.r.pick(all) : l;
  }

  // --- faults

  async inject(kind) {
    const s = this.s;
    const r = this.r;
    const f = { kind };
    if (['kill', 'stop', 'latency', 'partition', 'graceful'].includes(kind) && this.target() === null) {
      this.log(`fault ${kind} skipped: no live candidate`);
      return null;
    }
    switch (kind) {
      case 'kill': {
        const p = this.target();
        f.target = p.id;
        p.expected = 'sigkill';
        f.inject_ns = now();
        p.child.kill('SIGKILL');
        f.ref_ns = f.heal_ns = f.inject_ns;
        this.log(`fault kill: SIGKILL ${p.id}`);
        await p.exit;
        await sleep(r.uniform(200, 1500));
        this.spawnCandidate(p.slot);
        break;
      }
      case 'stop': {
        const p = this.target();
        f.target = p.id;
        const hold = Math.round(r.uniform(1.2, 2.5) * s.lease);
        f.detail = `${hold} ms`;
        p.stopped = true;
        f.inject_ns = now();
        p.child.kill('SIGSTOP');
        f.ref_ns = f.inject_ns;
        this.log(`fault stop: SIGSTOP ${p.id} for ${hold} ms`);
        await sleep(hold);
        p.child.kill('SIGCONT');
        p.stopped = false;
        f.heal_ns = now();
        this.log(`SIGCONT ${p.id}`);
        break;
      }
      case 'terminate': {
        const leader = this.leader();
        const all = !leader || r.chance(0.5);
        f.target = all ? 'all' : leader.id;
        const where = all ? `application_name LIKE 'chaos-%'` : `application_name = 'chaos-${leader.id}'`;
        f.inject_ns = now();
        const n = await this.sql(`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE ${where} AND pid <> pg_backend_pid()`);
        f.ref_ns = f.heal_ns = now();
        f.detail = `${n?.[0]?.n ?? '?'} sessions`;
        this.log(`fault terminate: pg_terminate_backend of ${f.target}'s sessions (${f.detail})`);
        break;
      }
      case 'pg-restart': {
        // Half of the time a restart, half of the time an outage longer than the lease (every lease
        // expires by the database's clock meanwhile).
        const outage = r.chance(0.5) ? Math.round(r.uniform(1.2, 2.5) * s.lease) : 0;
        f.target = 'postgres';
        f.inject_ns = now();
        if (outage === 0) {
          this.log('fault pg-restart: pg_ctl restart -m fast');
          await this.pg.restart();
        } else {
          this.log(`fault pg-restart: pg_ctl stop -m fast, start after ${outage} ms`);
          await this.pg.stop();
          await sleep(outage);
          await this.pg.startAgain();
        }
        f.ref_ns = f.heal_ns = now();
        f.detail = `${outage === 0 ? 'restart' : 'outage'}, ${((f.heal_ns - f.inject_ns) / 1e6).toFixed(0)} ms down`;
        this.log(`postgres back (${f.detail})`);
        break;
      }
      case 'latency': {
        const p = this.target(0.7);
        f.target = p.id;
        const ms = r.int(20, 400);
        const hold = Math.round(r.uniform(1, 3) * s.lease);
        f.detail = `${ms} ms each way for ${hold} ms`;
        f.inject_ns = now();
        p.slot.proxy.latency(ms);
        this.log(`fault latency: ${p.id} ${f.detail}`);
        await sleep(hold);
        p.slot.proxy.heal();
        f.ref_ns = f.heal_ns = now();
        this.log(`latency of ${p.id} removed`);
        break;
      }
      case 'partition': {
        const p = this.target(0.7);
        f.target = p.id;
        const mode = r.pick(['drop', 'hold', 'reset']);
        const hold = Math.round(r.uniform(1, 2.5) * s.lease);
        f.detail = `${mode} for ${hold} ms`;
        f.inject_ns = now();
        p.slot.proxy.partition(mode);
        this.log(`fault partition: ${p.id} ${f.detail}`);
        await sleep(hold);
        p.slot.proxy.heal();
        f.heal_ns = now();
        // Held data reaches the server at heal time, so a lease may be extended then; dropped data never.
        f.ref_ns = mode === 'hold' ? f.heal_ns : f.inject_ns;
        this.log(`partition of ${p.id} healed`);
        break;
      }
      case 'graceful': {
        const p = this.target();
        f.target = p.id;
        p.expected = 'sigterm';
        f.inject_ns = now();
        p.child.kill('SIGTERM');
        f.ref_ns = f.heal_ns = f.inject_ns;
        this.log(`fault graceful: SIGTERM ${p.id} (shutdown releases the lease)`);
        const done = await Promise.race([p.exit.then(() => true), sleep(s.lease + 10_000).then(() => false)]);
        if (!done) {
          this.log(`!! ${p.id} did not exit within ${s.lease + 10_000} ms of SIGTERM; SIGKILL`);
          p.child.kill('SIGKILL');
          await p.exit;
        }
        await sleep(r.uniform(200, 1000));
        this.spawnCandidate(p.slot);
        break;
      }
      default:
        throw new Error(`unknown fault ${kind}`);
    }
    this.faultCounts[kind] = (this.faultCounts[kind] ?? 0) + 1;
    this.appendJson('faults.jsonl', f);
    return f;
  }

  async sql(text) {
    const { Client } = require('pg');
    const client = new Client({ connectionString: this.pg.url, connectionTimeoutMillis: 5000 });
    try {
      await client.connect();
      const res = await client.query(text);
      return res.rows;
    } catch (err) {
      this.log(`!! harness query failed: ${err.message}`);
      return null;
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  // --- the whole run

  async run() {
    const s = this.s;
    fs.mkdirSync(this.dir, { recursive: true });
    for (const f of ['faults.jsonl', 'processes.jsonl']) fs.writeFileSync(path.join(this.dir, f), '');
    this.writeRun({ t0_clock_monotonic_ns: String(T0) });
    this.snapshot();
    this.pg = await new ThrowawayPostgres().start();
    this.log(`throwaway PostgreSQL on 127.0.0.1:${this.pg.port} (${this.pg.dir}); records in ${this.dir}`);
    for (let i = 1; i <= s.node; i++) this.slots.push({ name: `n${i}`, lang: 'node', gen: 0 });
    for (let i = 1; i <= s.rust; i++) this.slots.push({ name: `r${i}`, lang: 'rust', gen: 0, shared: i % 2 === 0 });
    for (const slot of this.slots) slot.proxy = await new Proxy(this.pg.port).listen();
    this.writeRun({ candidates_started_ns: now() });
    for (const slot of this.slots) this.spawnCandidate(slot);

    const first = await this.waitForLeader(20_000 + this.bound);
    if (!first) this.log('!! no leader after the start bound');
    await sleep(1000);
    const endNs = now() + s.minutes * 60e9;
    while (!this.aborting && now() < endNs) {
      const kind = this.r.pick(s.faults);
      await this.inject(kind);
      if (this.aborting) break;
      const l = await this.waitForLeader(this.bound + 2000);
      if (!l) this.log(`!! no leader ${this.bound + 2000} ms after the ${kind} fault`);
      await sleep(this.r.uniform(500, 1500));
    }
    // The end of the fault phase: a leader must stand (the last gap is checked up to here, so waiting past
    // the bound lets the checker see a cluster left without a leader).
    await this.waitForLeader(2 * this.bound + 5000);
    this.writeRun({ phase_end_ns: now() });
    await this.stop();
    return this.checkAndReport();
  }

  async stop() {
    this.stopping = true;
    for (const slot of this.slots) slot.proxy?.heal();
    const procs = [...this.procs];
    for (const p of procs) {
      if (p.stopped) p.child.kill('SIGCONT');
      p.stopped = false;
      if (!p.exited) {
        p.expected = 'sigterm';
        p.child.kill('SIGTERM');
      }
    }
    const all = Promise.all(procs.map((p) => p.exit));
    const done = await Promise.race([all.then(() => true), sleep(this.s.lease + 15_000).then(() => false)]);
    if (!done) {
      for (const p of this.procs) {
        this.log(`!! ${p.id} did not exit after SIGTERM; SIGKILL`);
        p.child.kill('SIGKILL');
      }
      await all;
    }
    for (const slot of this.slots) await slot.proxy?.close();
    await this.pg?.destroy();
    this.pg = null;
  }

  checkAndReport() {
    const result = check(this.dir);
    const text = summarize(result);
    fs.writeFileSync(path.join(this.dir, 'summary.txt'), `${text}\n`);
    process.stdout.write(`\n${text}\nrecords: ${this.dir}\n`);
    if (result.violations.length === 0) {
      // The copies of the package and the binary are only worth keeping to replay a failure.
      fs.rmSync(path.join(this.dir, 'pkg'), { recursive: true, force: true });
      fs.rmSync(path.join(this.dir, 'bin'), { recursive: true, force: true });
      return 0;
    }
    return 1;
  }

  /** Ctrl-C, SIGTERM or a harness error: everything it started is stopped and removed. */
  async abort(reason) {
    if (this.aborting) return;
    this.aborting = true;
    process.stderr.write(`chaos: aborting (${reason}); stopping the candidates and the throwaway PostgreSQL\n`);
    for (const p of this.procs) {
      p.expected = 'sigkill';
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    }
    await Promise.race([Promise.all([...this.procs].map((p) => p.exit)), sleep(5000)]);
    for (const slot of this.slots) await slot.proxy?.close().catch(() => undefined);
    await this.pg?.destroy().catch(() => undefined);
    this.pg = null;
  }
}

let settings;
try {
  settings = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`chaos: ${err.message}\n`);
  process.exit(2);
}
const harness = new Harness(settings);
process.stdout.write(
  `chaos: seed ${settings.seed}, ${settings.minutes} min of faults (${settings.faults.join(', ')}), ${settings.node} Node + ${settings.rust} Rust candidates, lease ${settings.lease} ms, gap bound ${harness.bound} ms\n`,
);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    void harness.abort(sig).finally(() => process.exit(130));
  });
}
process.on('exit', () => {
  // Last resort if something above did not get to clean up.
  for (const p of harness.procs) {
    try {
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  harness.pg?.destroySync();
});
try {
  const code = await harness.run();
  process.exit(code);
} catch (err) {
  process.stderr.write(`chaos: harness error: ${err?.stack ?? err}\n`);
  await harness.abort('harness error');
  process.exit(2);
}
