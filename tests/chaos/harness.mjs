// The chaos harness (docs/chaos.md): a throwaway PostgreSQL (or NATS server with JetStream), one TCP proxy
// per candidate, Node, Rust and Nest candidate processes campaigning for one or more lock ids through their
// proxies, faults injected at random with voluntary handovers in between, then the checker over everything
// the candidates recorded. Run it through `npm run chaos` (scripts/chaos.sh), which builds what it needs.
//
//   node tests/chaos/harness.mjs [--profile short|long] [--store pg|nats|both] [--minutes M]
//       [--nats-minutes M] [--seed S] [--node 3] [--rust 3] [--nest 1] [--cli 2] [--no-twin] [--elections N]
//       [--handover-every MS] [--lease 2000] [--renewal 600] [--jitter 200] [--safety-margin MS]
//       [--operation-timeout MS] [--max-event-loop-stall MS] [--slack 500] [--faults kill,stop,...]
//       [--out DIR] [--quiet] [--node-answer status]
//
// Profiles (explicit options override them): short (the default) = PostgreSQL 1.75 min, then NATS 0.75 min
// of faults, 3 lock ids per candidate, a handover every 400 ms of quiet; long = PostgreSQL 20 min, then
// NATS 10 min, 6 lock ids per candidate, a handover every 150 ms of quiet. --store picks the legs,
// --minutes the PostgreSQL leg's length (or the only leg's), --nats-minutes the NATS leg's.
// Fault kinds: kill, stop, graceful, latency, partition, handover, stall, nest-term (both stores);
// terminate, pg-restart, down-up, twin, cli (PostgreSQL only); lost-ack, nats-restart (NATS only). --faults keeps
// those named (each leg runs the ones that apply to its store).
//
// Command-line candidates (PostgreSQL only, --cli 3): `leaderlease run --restart -- chaos_candidate
// --cli-child ...` for a lock id of their own (the one after the other candidates' lock ids), the
// odd-numbered ones through the npm package's bin (`node dist/cli.js run`, the process a user of `npx
// leaderlease` signals; its native command line stays its child), the others the native binary itself
// (native/leaderlease-<platform>, scripts/build-cli.sh). The command leads for as long as it runs: it
// samples and records itself as the other candidates do. The fault kind `cli`: SIGKILL of the leading
// command-line candidate, then SIGSTOP of the next leading one for 1.2-2.5 leases, then SIGCONT.
//
// The candidates run from a copy of the package (package.json, dist/, native/) and of the candidate
// programs taken into the run directory at the start, so that a rebuild in the working tree during a long run does
// not mix versions. Even-numbered Rust candidates start with connect_shared, the others with connect; on
// PostgreSQL the second Rust slot also runs a twin (a second elector for the first lock id with the same
// instance id on the same hub), unless --no-twin. The Nest candidates run one election (the first lock id).
// --node-answer status makes the Node candidates answer from the last status event instead of amILeader()
// (a stored boolean, as nest-leader-election 1.1.2 does): a check that the checker catches the overlaps
// that answer causes.
//
// Exit status 0 when the checker finds no violation in any leg, 1 when it does, 2 on bad arguments or a
// harness error.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { candidateArgv } from './candidate-args.mjs';
import { check, summarize } from './check.mjs';
import { ThrowawayNats } from './nats.mjs';
import { ThrowawayPostgres } from './pg.mjs';
import { Proxy } from './proxy.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const require = createRequire(path.join(ROOT, 'package.json'));

const ALL_FAULTS = [
  'kill', 'stop', 'terminate', 'pg-restart', 'latency', 'partition', 'graceful', 'handover', 'down-up', 'twin',
  'stall', 'lost-ack', 'nats-restart', 'nest-term', 'cli',
];
const PG_ONLY = new Set(['terminate', 'pg-restart', 'down-up', 'twin', 'cli']);
const NATS_ONLY = new Set(['lost-ack', 'nats-restart']);
const faultsFor = (store, faults) => faults.filter((f) => !(store === 'pg' ? NATS_ONLY : PG_ONLY).has(f));
const LOCK_ID = 7;
const SCHEMA = 'chaos';
const BUCKET = 'chaos';
const PROFILES = {
  short: { minutes: 1.75, natsMinutes: 0.75, store: 'both', elections: 3, handoverEvery: 400 },
  long: { minutes: 20, natsMinutes: 10, store: 'both', elections: 6, handoverEvery: 150 },
};

// ---------------------------------------------------------------------------------------------- settings

function parseSettings(argv) {
  const str = { type: 'string' };
  const { values: opts } = parseArgs({
    args: argv,
    strict: true,
    options: {
      profile: str, store: str, minutes: str, 'nats-minutes': str, seed: str, node: str, rust: str, nest: str, cli: str,
      'no-twin': { type: 'boolean' }, elections: str, 'handover-every': str, lease: str, renewal: str, jitter: str,
      'safety-margin': str, 'operation-timeout': str, 'max-event-loop-stall': str, slack: str, faults: str,
      out: str, quiet: { type: 'boolean' }, 'rust-bin': str, 'node-answer': str, help: { type: 'boolean' },
    },
  });
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
  const profileName = opts.profile ?? 'short';
  const profile = PROFILES[profileName];
  if (!profile) throw new Error(`--profile: short or long (got ${profileName})`);
  const lease = num('lease', 2000);
  const renewal = num('renewal', 600);
  const jitter = num('jitter', 200);
  const safetyMargin = num('safety-margin', Math.max(Math.floor(lease / 10), 50));
  const s = {
    profile: profileName,
    store: opts.store ?? profile.store,
    minutes: num('minutes', profile.minutes),
    natsMinutes: num('nats-minutes', opts.store === 'nats' && opts.minutes !== undefined ? num('minutes') : profile.natsMinutes),
    seed: opts.seed !== undefined ? Number(opts.seed) >>> 0 : (Math.random() * 2 ** 32) >>> 0,
    node: num('node', 3),
    rust: num('rust', 3),
    nest: num('nest', 1),
    cli: num('cli', 3),
    twin: !opts['no-twin'],
    elections: Math.max(1, Math.floor(num('elections', profile.elections))),
    handoverEvery: num('handover-every', profile.handoverEvery),
    lease,
    renewal,
    jitter,
    // The core's defaults, written out so that the bound below uses the values the candidates run with.
    safetyMargin,
    operationTimeout: num('operation-timeout', Math.min(Math.floor(renewal / 2), 2000)),
    // Passed to the candidates only when given; the bound uses the default the fix documents otherwise.
    maxEventLoopStall: opts['max-event-loop-stall'] !== undefined ? num('max-event-loop-stall') : undefined,
    stallBound: num('max-event-loop-stall', lease - safetyMargin),
    slack: num('slack', 500),
    faults: (opts.faults ?? ALL_FAULTS.join(',')).split(',').filter(Boolean),
    quiet: Boolean(opts.quiet),
    rustBin: opts['rust-bin'] ?? path.join(ROOT, 'target/release-fast/examples/chaos_candidate'),
    lockId: LOCK_ID,
    nodeAnswer: opts['node-answer'] ?? 'amILeader',
  };
  if (!['amILeader', 'status'].includes(s.nodeAnswer)) throw new Error(`--node-answer: amILeader or status`);
  if (!['pg', 'nats', 'both'].includes(s.store)) throw new Error(`--store: pg, nats or both`);
  for (const f of s.faults) if (!ALL_FAULTS.includes(f)) throw new Error(`unknown fault kind ${f} (known: ${ALL_FAULTS.join(', ')})`);
  if (s.node + s.rust + s.nest + s.cli < 2) throw new Error('at least two candidates are needed');
  s.legs = (s.store === 'both' ? ['pg', 'nats'] : [s.store])
    .map((store) => ({ store, minutes: store === 'pg' ? s.minutes : s.natsMinutes, faults: faultsFor(store, s.faults) }))
    .filter((leg) => leg.minutes > 0 && leg.faults.length > 0);
  if (s.legs.length === 0) throw new Error('no leg to run: no fault kind applies to the chosen store(s), or 0 minutes');
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
  /** One leg: `store` 'pg' or 'nats', `minutes` of faults of the kinds `faults`, records in `dir`. */
  constructor(s, leg, dir) {
    this.s = s;
    this.leg = leg;
    this.store = leg.store;
    this.r = rng(leg.store === 'pg' ? s.seed : (s.seed ^ 0x9e3779b9) >>> 0);
    this.dir = dir;
    this.server = null;
    this.slots = [];
    this.procs = new Set();
    this.faultCounts = {};
    this.aborting = false;
    this.unexpected = [];
    this.locks = Array.from({ length: s.elections }, (_, k) => s.lockId + k);
    this.runExtra = {};
    // `leaderlease run` campaigns on PostgreSQL only, for a lock id of its own.
    this.cliCount = leg.store === 'pg' ? s.cli : 0;
    this.cliLock = s.lockId + s.elections;
    if (this.cliCount > 0) this.locks.push(this.cliLock);
  }

  log(msg) {
    if (!this.s.quiet) process.stdout.write(`[${secs(now()).padStart(8)}s] ${this.store === 'nats' ? 'nats ' : ''}${msg}\n`);
  }

  appendJson(file, obj) {
    fs.appendFileSync(path.join(this.dir, file), `${JSON.stringify(obj)}\n`);
  }

  get bound() {
    const { lease, renewal, jitter, operationTimeout, slack } = this.s;
    return lease + renewal + jitter / 2 + 2 * operationTimeout + slack;
  }

  /** Bounds of their own (see docs/chaos.md): a stall, and a lost acknowledgement. */
  get stallBound() {
    return this.s.stallBound + this.s.lease + 1000;
  }

  get lostAckBound() {
    return 2 * this.s.operationTimeout + this.s.slack;
  }

  writeRun(extra = {}) {
    const s = this.s;
    const run = {
      seed: s.seed,
      settings: {
        store: this.store,
        profile: s.profile,
        minutes: this.leg.minutes,
        node: s.node,
        rust: s.rust,
        nest: s.nest,
        cli: this.store === 'pg' ? s.cli : 0,
        twin: this.twinSlot !== undefined,
        elections: s.elections,
        locks: this.locks,
        handoverEvery: s.handoverEvery,
        lease: s.lease,
        renewal: s.renewal,
        jitter: s.jitter,
        safetyMargin: s.safetyMargin,
        operationTimeout: s.operationTimeout,
        maxEventLoopStall: s.maxEventLoopStall ?? null,
        slack: s.slack,
        faults: this.leg.faults,
        lockId: s.lockId,
        nodeAnswer: s.nodeAnswer,
        schema: SCHEMA,
        bucket: BUCKET,
      },
      bound_ms: this.bound,
      bound_formula: `${s.lease} + ${s.renewal} + ${s.jitter / 2} + 2 x ${s.operationTimeout} + ${s.slack}`,
      kind_bounds_ms: { stall: this.stallBound, 'lost-ack': this.lostAckBound },
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
    if (this.cliCount > 0) {
      // The command line that dist/cli.js runs in a checkout (scripts/build-cli.sh).
      const cli = fs.readdirSync(path.join(ROOT, 'native')).find((f) => /^leaderlease-linux-[a-z0-9-]+$/.test(f));
      if (!cli) throw new Error('native/leaderlease-linux-<platform> is missing: build it with scripts/chaos.sh (scripts/build-cli.sh)');
      this.cliBin = path.join(this.pkgDir, 'native', cli);
      fs.copyFileSync(path.join(ROOT, 'native', cli), this.cliBin);
      fs.chmodSync(this.cliBin, 0o755);
    }
    fs.mkdirSync(path.join(this.dir, 'bin'), { recursive: true });
    fs.copyFileSync(path.join(HERE, 'candidate-args.mjs'), path.join(this.dir, 'bin', 'candidate-args.mjs'));
    this.nodeCandidate = path.join(this.dir, 'bin', 'node-candidate.mjs');
    fs.copyFileSync(path.join(HERE, 'node-candidate.mjs'), this.nodeCandidate);
    this.nestCandidate = path.join(this.dir, 'bin', 'nest-candidate.mjs');
    fs.copyFileSync(path.join(HERE, 'nest-candidate.mjs'), this.nestCandidate);
    this.rustBin = path.join(this.dir, 'bin', 'chaos_candidate');
    if (s.rust > 0 || this.cliCount > 0) {
      if (!fs.existsSync(s.rustBin)) throw new Error(`${s.rustBin} is missing: build it with scripts/chaos.sh`);
      fs.copyFileSync(s.rustBin, this.rustBin);
      fs.chmodSync(this.rustBin, 0o755);
    }
  }

  // --- candidates

  spawnCandidate(slot) {
    slot.gen += 1;
    const id = `${slot.name}-g${slot.gen}`;
    const s = this.s;
    const url =
      this.store === 'nats'
        ? `nats://127.0.0.1:${slot.proxy.port}`
        : `postgres://postgres@127.0.0.1:${slot.proxy.port}/postgres?application_name=chaos-${id}`;
    // One table of the candidates' options (candidate-args.mjs) for what is passed and what is parsed.
    const values = {
      id, url, dir: this.dir, t0: T0, lockId: s.lockId, schema: SCHEMA, lease: s.lease, renewal: s.renewal,
      jitter: s.jitter, safetyMargin: s.safetyMargin, operationTimeout: s.operationTimeout, store: this.store,
      bucket: BUCKET, elections: s.elections, packageDir: this.pkgDir, maxEventLoopStall: s.maxEventLoopStall,
      answer: s.nodeAnswer, shared: slot.shared, twin: slot.twin, fleet: slot.fleet && this.store === 'pg',
    };
    let cmd;
    let argv;
    if (slot.lang === 'cli') {
      // `leaderlease run` takes the lease, renewal and jitter; the safety margin and operation timeout are
      // the core's defaults, which the harness's own defaults are.
      const run = [
        'run', '--url', url, '--schema', SCHEMA, '--lock-id', String(this.cliLock), '--lease', `${s.lease}ms`,
        '--renewal', `${s.renewal}ms`, '--jitter', `${s.jitter}ms`, '--instance-id', id, '--restart',
        '--', this.rustBin, '--cli-child', ...candidateArgv('cli', values),
      ];
      [cmd, argv] = slot.npm ? [process.execPath, [path.join(this.pkgDir, 'dist', 'cli.js'), ...run]] : [this.cliBin, run];
    } else if (slot.lang === 'rust') {
      [cmd, argv] = [this.rustBin, candidateArgv('rust', values)];
    } else {
      [cmd, argv] = [process.execPath, [slot.lang === 'nest' ? this.nestCandidate : this.nodeCandidate, ...candidateArgv(slot.lang, values)]];
    }
    const stderr = fs.openSync(path.join(this.dir, `${id}.stderr`), 'a');
    const child = spawn(cmd, argv, {
      // A Nest application reads no stdin: nothing of the harness's may keep its event loop alive. A
      // command-line candidate takes no commands.
      stdio: [slot.lang === 'nest' || slot.lang === 'cli' ? 'ignore' : 'pipe', 'pipe', stderr],
      // NODE_PATH: the package copy resolves its peers (NestJS, rxjs) from the repository's node_modules
      // wherever the run directory is.
      env: {
        ...process.env,
        RUST_LOG: process.env.CHAOS_RUST_LOG ?? 'warn',
        NODE_PATH: [path.join(ROOT, 'node_modules'), process.env.NODE_PATH].filter(Boolean).join(path.delimiter),
      },
    });
    fs.closeSync(stderr);
    const proc = {
      id,
      slot,
      lang: slot.lang,
      child,
      pid: child.pid,
      state: 'starting',
      leads: new Map(),
      stopped: false,
      expected: null,
      exited: false,
      spawnedNs: now(),
    };
    proc.exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        proc.exited = true;
        proc.state = 'exited';
        proc.leads.clear();
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
        const fine =
          (proc.expected === 'sigkill' && signal === 'SIGKILL') ||
          (proc.expected === 'sigterm' &&
            (slot.lang === 'nest'
              ? signal === 'SIGTERM' || code === 143 // 143: an app's own SIGTERM listener (check.mjs tells which)
              : code === 0 || (slot.lang === 'cli' && code === 143)));
        if (!fine) {
          this.unexpected.push(rec);
          this.log(`!! ${id} exited with ${signal ?? `status ${code}`}${proc.expected ? ` (expected ${proc.expected})` : ' unasked'}; see ${id}.stderr`);
          if (!proc.expected && !this.aborting && !this.stopping) setTimeout(() => this.spawnCandidate(slot), 1000);
        }
        resolve();
      });
    });
    child.on('error', (err) => this.log(`!! ${id}: ${err.message}`));
    child.stdin?.on('error', () => undefined);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      const lock = ev.lock ?? s.lockId;
      const key = `${lock}|${ev.sampler ?? id}`;
      if (ev.ev === 'ready') proc.state = 'running';
      else if (ev.ev === 'lead') {
        proc.leads.set(key, { lock, term: ev.term });
        this.log(`${ev.sampler ?? id} leads lock ${lock} (term ${ev.term})`);
      } else if (ev.ev === 'follow') {
        for (const k of [...proc.leads.keys()]) if (k.startsWith(`${lock}|`)) proc.leads.delete(k);
      }
    });
    slot.proc = proc;
    this.procs.add(proc);
    return proc;
  }

  /**
   * Whether `p` is still starting (it may create the lease table). A command-line candidate reports no
   * start: it has started once its log says it campaigns.
   */
  starting(p) {
    if (p.state !== 'starting' || p.lang !== 'cli') return p.state === 'starting';
    try {
      if (!fs.readFileSync(path.join(this.dir, `${p.id}.stderr`), 'utf8').includes('campaigning')) return true;
    } catch {
      return true;
    }
    p.state = 'running';
    return false;
  }

  /** The leader of `lock` as the candidates' own reports show it (highest term among those that lead). */
  leader(lock) {
    let best = null;
    let bestTerm = -1;
    for (const p of this.procs) {
      if (p.stopped || p.exited) continue;
      for (const l of p.leads.values()) {
        if (l.lock === lock && l.term > bestTerm) {
          best = p;
          bestTerm = l.term;
        }
      }
    }
    return best;
  }

  ledLocks(p) {
    return [...new Set([...p.leads.values()].map((l) => l.lock))];
  }

  alive() {
    return [...this.procs].filter((p) => !p.exited && !p.stopped && p.expected === null);
  }

  async waitForLeaders(timeoutMs) {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until && !this.aborting) {
      if (this.locks.every((l) => this.leader(l) !== null)) return true;
      await sleep(10);
    }
    return this.locks.every((l) => this.leader(l) !== null);
  }

  /** The leader of a random lock id with probability `p` (when there is one), else any live candidate. */
  target(p = 1, filter = () => true) {
    const leaders = this.locks.map((l) => this.leader(l)).filter((x) => x !== null && x.expected === null && filter(x));
    if (leaders.length > 0 && this.r.chance(p)) return this.r.pick(leaders);
    const all = this.alive().filter(filter);
    return all.length > 0 ? this.r.pick(all) : (leaders[0] ?? null);
  }

  // --- faults

  async inject(kind) {
    const s = this.s;
    const r = this.r;
    const f = { kind, locks: null };
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
        f.signal = 'SIGSTOP';
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
      case 'cli': {
        // The command-line candidates' own lock id: SIGKILL of the leading one (a new process takes its
        // slot once the next one leads), then SIGSTOP of the next leading one past its lease, then SIGCONT.
        const lock = this.cliLock;
        const first = this.leader(lock);
        if (!first || first.lang !== 'cli' || first.expected !== null) {
          this.log('fault cli skipped: no command-line candidate leads');
          return null;
        }
        const term = first.leads.get(`${lock}|${first.id}`)?.term ?? -1;
        const k = { kind: 'cli', locks: [lock], target: first.id, signal: 'SIGKILL', detail: 'SIGKILL of the leader' };
        first.expected = 'sigkill';
        k.inject_ns = k.ref_ns = k.heal_ns = now();
        first.child.kill('SIGKILL');
        this.log(`fault cli: SIGKILL ${first.id}`);
        this.appendJson('faults.jsonl', k);
        this.faultCounts.cli = (this.faultCounts.cli ?? 0) + 1;
        await first.exit;
        const until = Date.now() + this.bound + 2000;
        let next = null;
        while (!this.aborting && Date.now() < until) {
          next = this.leader(lock);
          if (next && next.leads.get(`${lock}|${next.id}`)?.term > term) break;
          next = null;
          await sleep(10);
        }
        this.spawnCandidate(first.slot);
        if (!next || next.expected !== null) {
          this.log(`fault cli: no command-line candidate led after the SIGKILL of ${first.id}`);
          return null;
        }
        const hold = Math.round(r.uniform(1.2, 2.5) * s.lease);
        f.locks = [lock];
        f.target = next.id;
        f.detail = `SIGSTOP of the next leader for ${hold} ms`;
        f.signal = 'SIGSTOP';
        next.stopped = true;
        f.inject_ns = f.ref_ns = now();
        next.child.kill('SIGSTOP');
        this.log(`fault cli: SIGSTOP ${next.id} for ${hold} ms`);
        await sleep(hold);
        next.child.kill('SIGCONT');
        next.stopped = false;
        f.heal_ns = now();
        this.log(`SIGCONT ${next.id}`);
        break;
      }
      case 'terminate': {
        const leader = this.target(1);
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
      case 'pg-restart':
      case 'nats-restart': {
        // Half of the time a restart, half of the time an outage longer than the lease (every lease
        // expires by the server's clock meanwhile).
        const outage = r.chance(0.5) ? Math.round(r.uniform(1.2, 2.5) * s.lease) : 0;
        f.target = this.store === 'nats' ? 'nats-server' : 'postgres';
        f.inject_ns = now();
        this.log(`fault ${kind}: ${outage === 0 ? 'restart' : `stop, start after ${outage} ms`}`);
        if (this.store === 'pg' && outage === 0) {
          await this.server.restart();
        } else {
          await this.server.stop();
          await sleep(outage);
          await this.server.startAgain();
        }
        f.ref_ns = f.heal_ns = now();
        f.detail = `${outage === 0 ? 'restart' : 'outage'}, ${((f.heal_ns - f.inject_ns) / 1e6).toFixed(0)} ms down`;
        this.log(`${f.target} back (${f.detail})`);
        break;
      }
      case 'latency':
      case 'twin': {
        // twin: the process with two electors of one instance id on one hub, with a delay above the
        // operation timeout, so that its renewals time out while they still reach the server.
        const p = kind === 'twin' ? this.twinSlot?.proc : this.target(0.7);
        if (!p || p.exited || p.stopped) {
          this.log(`fault ${kind} skipped: no target`);
          return null;
        }
        f.target = p.id;
        const ms = kind === 'twin' ? r.int(s.operationTimeout / 2 + 20, s.operationTimeout + 150) : r.int(20, 400);
        const hold = Math.round(r.uniform(1, 3) * s.lease);
        f.detail = `${ms} ms each way for ${hold} ms`;
        f.inject_ns = now();
        p.slot.proxy.latency(ms);
        this.log(`fault ${kind}: ${p.id} ${f.detail}`);
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
      case 'graceful':
      case 'nest-term': {
        const p = kind === 'nest-term' ? this.r.pick(this.alive().filter((x) => x.lang === 'nest')) : this.target();
        if (!p) {
          this.log(`fault ${kind} skipped: no target`);
          return null;
        }
        f.target = p.id;
        p.expected = 'sigterm';
        f.inject_ns = now();
        p.child.kill('SIGTERM');
        f.ref_ns = f.heal_ns = f.inject_ns;
        this.log(`fault ${kind}: SIGTERM ${p.id} (shutdown releases the lease)`);
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
      case 'handover': {
        const lock = this.r.pick(this.locks);
        const p = this.leader(lock);
        if (!p || p.lang === 'nest' || !p.child.stdin) return null;
        f.target = p.id;
        f.locks = [lock];
        f.inject_ns = f.ref_ns = f.heal_ns = now();
        p.child.stdin.write(`release ${lock}\n`);
        break;
      }
      case 'down-up': {
        // The migration's DOWN (drops the table and the term sequence), a pause, then its UP, as an
        // operator would run them; the SQL is the package's own (upSql/downSql of the copy in the run).
        // The pause is at least a lease: no renewal gets through after the DOWN, so every leader has
        // stepped down by its local deadline before the UP lets anyone acquire again.
        // That holds only if no candidate is starting: one that starts finds the table missing and creates
        // it (createTableOnInit, on by default), an early UP, and acquires on the new table while a leader
        // of the dropped one still leads by its deadline (seen under load: a Node candidate's start took
        // 2.5 s and overlapped the first DOWN). So the DOWN waits for every candidate to have started (at
        // most 2 leases), and is skipped otherwise.
        const starting = () => [...this.procs].some((p) => this.starting(p));
        const waitUntil = Date.now() + 2 * s.lease;
        while (starting() && Date.now() < waitUntil) await sleep(20);
        if (starting()) {
          this.log('fault down-up skipped: a candidate is still starting (it would create the table again)');
          return null;
        }
        const { downSql, upSql } = require(path.join(this.pkgDir, 'native', 'index.js'));
        const pause = Math.round(r.uniform(1, 1.5) * s.lease);
        f.target = 'postgres';
        f.inject_ns = now();
        const down = await this.sql(downSql(SCHEMA));
        this.log(`fault down-up: DOWN migration ${down === null ? 'FAILED' : 'done'}; UP in ${pause} ms`);
        await sleep(pause);
        const up = await this.sql(upSql(SCHEMA));
        f.ref_ns = f.heal_ns = now();
        f.detail = `pause ${pause} ms${down === null || up === null ? ', a migration failed' : ''}`;
        this.log(`fault down-up: UP migration ${up === null ? 'FAILED' : 'done'}`);
        break;
      }
      case 'stall': {
        // A wedged event loop in a Node candidate that leads (a busy loop of 4 leases).
        const p = this.target(1, (x) => x.lang === 'node' && x.leads.size > 0);
        if (!p || p.lang !== 'node' || p.leads.size === 0) {
          this.log('fault stall skipped: no Node candidate leads');
          return null;
        }
        const ms = 4 * s.lease;
        f.target = p.id;
        f.detail = `${ms} ms busy loop while leading ${this.ledLocks(p).join(', ')}`;
        f.bound_ms = this.stallBound;
        f.inject_ns = f.ref_ns = now();
        p.child.stdin.write(`stall ${ms}\n`);
        this.log(`fault stall: ${p.id} ${f.detail}`);
        await sleep(ms);
        f.heal_ns = now();
        break;
      }
      case 'lost-ack': {
        // NATS: the leader's next update of its key reaches the server, but the reply is held back past
        // the operation timeout, or the connection is cut right after the update was sent.
        const p = this.target(1, (x) => x.leads.size > 0);
        const lock = p ? this.r.pick(this.ledLocks(p)) : undefined;
        if (!p || lock === undefined) {
          this.log('fault lost-ack skipped: no leader');
          return null;
        }
        const mode = r.chance(0.7) ? 'hold' : 'drop';
        const holdMs = s.operationTimeout + 150;
        f.target = p.id;
        f.locks = [lock];
        f.bound_ms = this.lostAckBound;
        const armed = now();
        this.log(`fault lost-ack: ${p.id} lock ${lock}, ${mode}`);
        const res = await p.slot.proxy.lostAck({ match: `$KV.${BUCKET}.lock-${lock}`, holdMs, mode, waitMs: 3 * s.renewal });
        if (!res.matched) {
          this.log(`fault lost-ack skipped: no update of lock ${lock} from ${p.id} within ${3 * s.renewal} ms`);
          return null;
        }
        f.heal_ns = f.ref_ns = now();
        f.inject_ns = Math.max(armed, f.heal_ns - Math.round((res.healAt - res.at) * 1e6));
        f.detail = mode === 'hold' ? `reply held ${holdMs} ms` : 'connection cut after the update';
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
    const client = new Client({ connectionString: this.server.url, connectionTimeoutMillis: 5000 });
    try {
      await client.connect();
      const res = await client.query(text);
      return Array.isArray(res) ? res.at(-1).rows : res.rows;
    } catch (err) {
      this.log(`!! harness query failed: ${err.message}`);
      return null;
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** The quiet time after a fault: voluntary handovers of random lock ids every `handoverEvery` ms. */
  async quiet() {
    const ms = this.r.uniform(500, 1500) * (this.s.handoverEvery > 0 ? 2 : 1);
    const until = now() + ms * 1e6;
    if (!this.leg.faults.includes('handover') || this.s.handoverEvery <= 0) {
      await sleep(ms);
      return;
    }
    while (!this.aborting && now() < until) {
      await this.inject('handover');
      await sleep(this.s.handoverEvery);
    }
  }

  // --- the whole run

  async run() {
    const s = this.s;
    fs.mkdirSync(this.dir, { recursive: true });
    for (const f of ['faults.jsonl', 'processes.jsonl']) fs.writeFileSync(path.join(this.dir, f), '');
    this.snapshot();
    this.server = this.store === 'nats' ? await new ThrowawayNats().start() : await new ThrowawayPostgres().start();
    this.log(`throwaway ${this.store === 'nats' ? 'NATS server' : 'PostgreSQL'} on 127.0.0.1:${this.server.port} (${this.server.dir}); records in ${this.dir}`);
    // The first two Node candidates on PostgreSQL are members of a fleet: their elections campaign by the
    // plan and hand names over when it moves them (the others campaign freely beside them).
    for (let i = 1; i <= s.node; i++) this.slots.push({ name: `n${i}`, lang: 'node', gen: 0, fleet: i <= 2 });
    for (let i = 1; i <= s.rust; i++) {
      const twin = this.store === 'pg' && s.twin && i === 2;
      const slot = { name: `r${i}`, lang: 'rust', gen: 0, shared: i % 2 === 0, twin };
      if (twin) this.twinSlot = slot;
      this.slots.push(slot);
    }
    for (let i = 1; i <= s.nest; i++) this.slots.push({ name: `s${i}`, lang: 'nest', gen: 0 });
    for (let i = 1; i <= this.cliCount; i++) this.slots.push({ name: `c${i}`, lang: 'cli', gen: 0, npm: i % 2 === 1 });
    this.writeRun({ t0_clock_monotonic_ns: String(T0) });
    for (const slot of this.slots) slot.proxy = await new Proxy(this.server.port).listen();
    this.writeRun({ candidates_started_ns: now() });
    for (const slot of this.slots) this.spawnCandidate(slot);

    if (!(await this.waitForLeaders(20_000 + this.bound))) this.log('!! a lock id without a leader after the start bound');
    await sleep(1000);
    const kinds = this.leg.faults.filter((k) => k !== 'handover');
    const endNs = now() + this.leg.minutes * 60e9;
    while (!this.aborting && now() < endNs) {
      if (kinds.length > 0) {
        const kind = this.r.pick(kinds);
        await this.inject(kind);
        if (this.aborting) break;
        if (!(await this.waitForLeaders(this.bound + 2000))) this.log(`!! a lock id without a leader ${this.bound + 2000} ms after the ${kind} fault`);
      }
      await this.quiet();
    }
    // The end of the fault phase: a leader must stand (the last gap is checked up to here, so waiting past
    // the bound lets the checker see a cluster left without a leader).
    await this.waitForLeaders(2 * this.bound + 5000);
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
    await this.server?.destroy();
    this.server = null;
  }

  checkAndReport() {
    const result = check(this.dir);
    const text = summarize(result);
    fs.writeFileSync(path.join(this.dir, 'summary.txt'), `${text}\n`);
    this.summary = `${text}\nrecords: ${this.dir}`;
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
    process.stderr.write(`chaos: aborting (${reason}); stopping the candidates and the throwaway server\n`);
    for (const p of this.procs) {
      p.expected = 'sigkill';
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    }
    await Promise.race([Promise.all([...this.procs].map((p) => p.exit)), sleep(5000)]);
    for (const slot of this.slots) await slot.proxy?.close().catch(() => undefined);
    await this.server?.destroy().catch(() => undefined);
    this.server = null;
  }
}

let settings;
try {
  settings = parseSettings(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`chaos: ${err.message}\n`);
  process.exit(2);
}
const legText = settings.legs.map((l) => `${l.store === 'pg' ? 'PostgreSQL' : 'NATS'} ${l.minutes} min`).join(', then ');
process.stdout.write(
  `chaos: seed ${settings.seed}, profile ${settings.profile}: ${legText} of faults; ${settings.node} Node + ${settings.rust} Rust + ${settings.nest} Nest + ${settings.cli} CLI (PostgreSQL) candidates, ${settings.elections} lock id(s) each (Nest, CLI: 1), lease ${settings.lease} ms\n`,
);
let current = null;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    void (current?.abort(sig) ?? Promise.resolve()).finally(() => process.exit(130));
  });
}
process.on('exit', () => {
  // Last resort if something above did not get to clean up.
  for (const p of current?.procs ?? []) {
    try {
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  current?.server?.destroySync();
});
let worst = 0;
const summaries = [];
for (const leg of settings.legs) {
  const dir = settings.legs.length > 1 ? path.join(settings.out, leg.store) : settings.out;
  current = new Harness(settings, leg, dir);
  process.stdout.write(`chaos: ${leg.store === 'pg' ? 'PostgreSQL' : 'NATS'} leg, ${leg.minutes} min of faults (${leg.faults.join(', ')}), gap bound ${current.bound} ms\n`);
  try {
    worst = Math.max(worst, await current.run());
    summaries.push(current.summary);
  } catch (err) {
    process.stderr.write(`chaos: harness error: ${err?.stack ?? err}\n`);
    await current.abort('harness error');
    process.exit(2);
  }
}
process.stdout.write(`\n${summaries.join('\n\n')}\n${worst === 0 ? 'chaos: PASS (every leg)' : 'chaos: FAIL'}\n`);
process.exit(worst);
