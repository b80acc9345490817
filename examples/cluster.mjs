// The live demo on Node.js (`npm run demo`): three candidate processes (examples/candidate.mjs) elect a
// leader on PostgreSQL; each round kills the leader with SIGKILL and measures the takeover, then hands
// leadership over gracefully, once with release() and once with shutdown() on SIGTERM, and measures the
// handovers. At the end it checks, from the candidates' own reports, that no two of them ever led at
// once and that every new leadership had a greater term, and prints a summary.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test node examples/cluster.mjs [--rounds N]
//       [--lease MS] [--renewal MS] [--jitter MS]
//
// Times come from process.hrtime.bigint() in each process: CLOCK_MONOTONIC, one clock for every process
// of the machine. A takeover is measured from the SIGKILL to the new leader's own report; a handover from
// the old leader's report of stepping down to the new leader's report. Exit code 1 when a round failed
// or two leaderships overlapped; 130 on Ctrl-C. No candidate outlives the demo.
import { fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const CANDIDATE = fileURLToPath(new URL('./candidate.mjs', import.meta.url));

// ---------------------------------------------------------------------------------------------------
// Settings

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      lease: { type: 'string', default: '1500' },
      renewal: { type: 'string', default: '500' },
      jitter: { type: 'string', default: '200' },
    },
  }));
} catch (e) {
  console.error(`${e.message}\nusage: node examples/cluster.mjs [--rounds N] [--lease MS] [--renewal MS] [--jitter MS]`);
  process.exit(2);
}

/** The option `name` as a positive integer, or exit 2 naming it. */
function positive(name) {
  const v = Number(options[name]);
  if (!Number.isInteger(v) || v <= 0) {
    console.error(`--${name} needs a positive integer (got ${options[name]})`);
    process.exit(2);
  }
  return v;
}

const ROUNDS = positive('rounds');
const LEASE = positive('lease');
const RENEWAL = positive('renewal');
const JITTER = positive('jitter');
const CANDIDATES = 3;
/** Pause before each step, so that the leader has renewed and the followers have seen it. */
const SETTLE_MS = 1000;
const TAKEOVER_TIMEOUT_MS = 3 * LEASE + 5000;
const HANDOVER_TIMEOUT_MS = 4 * (RENEWAL + JITTER) + 5000;
const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const SCHEMA = `leaderlease_demo_${process.pid}`;

const now = () => process.hrtime.bigint();
const T0 = now();
const ms = (ns) => Number(ns) / 1e6;
const sleep = (t) => new Promise((r) => setTimeout(r, t));

/** The server and database of a connection string, without credentials. */
function where(url) {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}`;
  } catch {
    return 'DATABASE_URL';
  }
}

// ---------------------------------------------------------------------------------------------------
// Candidates and what they report

/** id -> { id, child, ready, exited, expectExit, leader, term } */
const nodes = new Map();
const bus = new EventEmitter();
bus.setMaxListeners(0);
/** Every leadership reported: { id, term, start, end } (ns, monotonic); end null while it lasts. */
const leaderships = [];
const open = new Map();
const problems = [];
let nextId = 1;
let lastView = '';

function showView() {
  const cells = [...nodes.values()]
    .filter((n) => n.ready && !n.exited)
    .map((n) => (n.leader ? `${n.id} LEADER (term ${n.term})` : `${n.id} follower`));
  const line = cells.length > 0 ? cells.join(' | ') : '(no candidate running)';
  if (line === lastView) return;
  lastView = line;
  console.log(`t=${(ms(now() - T0) / 1000).toFixed(2).padStart(6)}s  ${line}`);
}

function closeLeadership(id, end) {
  const l = open.get(id);
  if (l) {
    l.end = end;
    open.delete(id);
  }
}

function onMessage(node, msg) {
  switch (msg.type) {
    case 'ready':
      node.ready = true;
      break;
    case 'role': {
      const at = BigInt(msg.at);
      if (msg.leader) {
        closeLeadership(node.id, at);
        const l = { id: node.id, term: msg.term, start: at, end: null };
        leaderships.push(l);
        open.set(node.id, l);
      } else {
        closeLeadership(node.id, at);
      }
      node.leader = msg.leader;
      node.term = msg.term;
      break;
    }
    case 'stopped':
      closeLeadership(node.id, BigInt(msg.at));
      break;
    case 'error':
      problems.push(`${node.id} could not start: ${msg.message}`);
      break;
    default:
      break;
  }
  showView();
  bus.emit('msg', node, msg);
}

function spawnCandidate() {
  const id = `node-${nextId++}`;
  const child = fork(
    CANDIDATE,
    [
      '--id', id, '--schema', SCHEMA, '--lock-id', '1',
      '--lease', String(LEASE), '--renewal', String(RENEWAL), '--jitter', String(JITTER),
    ],
    { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, DATABASE_URL } },
  );
  const node = { id, child, ready: false, exited: false, expectExit: false, leader: false, term: null };
  nodes.set(id, node);
  child.on('message', (msg) => onMessage(node, msg));
  child.on('exit', (code, signal) => {
    node.exited = true;
    // A killed process cannot report; its leadership ended no later than now.
    closeLeadership(id, now());
    node.leader = false;
    if (!node.expectExit && !shuttingDown) {
      problems.push(`${id} exited unexpectedly (${signal ?? `code ${code}`})`);
    }
    showView();
    bus.emit('exit', node);
  });
  child.on('error', (err) => problems.push(`${id}: ${err.message}`));
  return node;
}

/** Resolves with the first `event` for which `pick` returns a value, or null after `timeoutMs`. */
function waitFor(event, pick, timeoutMs) {
  return new Promise((resolve) => {
    const listener = (...args) => {
      const v = pick(...args);
      if (v !== undefined) finish(v);
    };
    const timer = setTimeout(() => finish(null), timeoutMs);
    function finish(v) {
      clearTimeout(timer);
      bus.off(event, listener);
      resolve(v);
    }
    bus.on(event, listener);
  });
}

function currentLeader(except) {
  for (const n of nodes.values()) if (!n.exited && n.leader && n.id !== except) return n;
  return undefined;
}

/** The next leader other than `except`: { node, term, at } with the time of its own report, or null. */
async function nextLeader(except, timeoutMs) {
  const found = currentLeader(except);
  if (found) return { node: found, term: found.term, at: open.get(found.id)?.start ?? now() };
  return waitFor(
    'msg',
    (node, msg) =>
      msg.type === 'role' && msg.leader && node.id !== except && !node.exited
        ? { node, term: msg.term, at: BigInt(msg.at) }
        : undefined,
    timeoutMs,
  );
}

async function waitReady(node, timeoutMs = 15_000) {
  if (node.ready) return true;
  const ok = await waitFor(
    'msg',
    (n, msg) => (n === node && (msg.type === 'ready' || msg.type === 'error') ? msg.type === 'ready' : undefined),
    timeoutMs,
  );
  if (ok !== true && !problems.some((p) => p.startsWith(`${node.id} `))) {
    problems.push(`${node.id} did not start within ${timeoutMs} ms`);
  }
  return ok === true;
}

function waitExit(node, timeoutMs) {
  if (node.exited) return Promise.resolve(true);
  return waitFor('exit', (n) => (n === node ? true : undefined), timeoutMs).then((v) => v === true);
}

/** Asks every running candidate to shut down; kills those that have not exited after 3 s. */
let shuttingDown = false;
async function stopAll() {
  shuttingDown = true;
  const running = [...nodes.values()].filter((n) => !n.exited);
  for (const n of running) {
    n.expectExit = true;
    if (n.child.connected) n.child.send({ cmd: 'shutdown' }, () => undefined);
    else n.child.kill('SIGTERM');
  }
  await Promise.all(
    running.map(async (n) => {
      if (!(await waitExit(n, 3000))) {
        n.child.kill('SIGKILL');
        await waitExit(n, 3000);
      }
    }),
  );
}

// Last resort: whatever happens to this process, its candidates do not outlive it.
process.on('exit', () => {
  for (const n of nodes.values()) if (!n.exited) n.child.kill('SIGKILL');
});

async function dropSchema() {
  let pg;
  try {
    pg = require('pg');
  } catch {
    console.log(`(schema ${SCHEMA} left in place: the pg package is not installed)`);
    return;
  }
  const client = new pg.Client({ connectionString: DATABASE_URL });
  try {
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`);
  } catch (err) {
    console.log(`(could not drop schema ${SCHEMA}: ${err.message})`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

let interrupted = false;
async function onInterrupt(signal) {
  if (interrupted) return;
  interrupted = true;
  console.log(`\n${signal}: stopping the candidates`);
  await stopAll();
  await dropSchema();
  process.exit(130);
}
process.on('SIGINT', () => void onInterrupt('SIGINT'));
process.on('SIGTERM', () => void onInterrupt('SIGTERM'));

// ---------------------------------------------------------------------------------------------------
// The rounds

const takeovers = [];
const releases = [];
const sigterms = [];

/** Respawns a candidate in place of one that left, and waits until it campaigns. */
async function replace() {
  const node = spawnCandidate();
  await waitReady(node);
}

async function killRound(round, leader) {
  console.log(`\nround ${round}/${ROUNDS}: SIGKILL ${leader.id} (leader, term ${leader.term})`);
  leader.expectExit = true;
  const killedAt = now();
  leader.child.kill('SIGKILL');
  const next = await nextLeader(leader.id, TAKEOVER_TIMEOUT_MS);
  await waitExit(leader, 5000);
  if (next === null) {
    problems.push(`round ${round}: no takeover within ${TAKEOVER_TIMEOUT_MS} ms of the SIGKILL`);
    console.log(`  no takeover within ${TAKEOVER_TIMEOUT_MS} ms`);
    return;
  }
  const took = ms(next.at - killedAt);
  takeovers.push(took);
  console.log(`  ${next.node.id} took over with term ${next.term}, ${took.toFixed(0)} ms after the kill (lease ${LEASE} ms)`);
  await replace();
}

/** Graceful handover: `how` is 'release' (IPC: release(), stays a candidate) or 'SIGTERM' (shutdown()). */
async function handoverRound(round, leader, how, times) {
  const action = how === 'release' ? 'release()' : 'SIGTERM (shutdown())';
  console.log(`\nround ${round}/${ROUNDS}: ${action} on ${leader.id} (leader, term ${leader.term})`);
  const askedAt = now();
  const stepDown = waitFor(
    'msg',
    (n, msg) => (n === leader && msg.type === 'role' && !msg.leader ? BigInt(msg.at) : undefined),
    HANDOVER_TIMEOUT_MS,
  );
  if (how === 'release') {
    leader.child.send({ cmd: 'release' });
  } else {
    leader.expectExit = true;
    leader.child.kill('SIGTERM');
  }
  const [next, stepped] = await Promise.all([nextLeader(leader.id, HANDOVER_TIMEOUT_MS), stepDown]);
  if (how !== 'release') await waitExit(leader, 5000);
  if (next === null) {
    problems.push(`round ${round}: no handover within ${HANDOVER_TIMEOUT_MS} ms of ${action}`);
    console.log(`  no handover within ${HANDOVER_TIMEOUT_MS} ms`);
    return;
  }
  // From the old leader's own report of stepping down (it steps down the moment it is asked).
  const from = stepped ?? askedAt;
  const took = ms(next.at - from);
  times.push(took);
  console.log(`  ${next.node.id} took over with term ${next.term}, ${took.toFixed(0)} ms after ${leader.id} stepped down`);
  if (how !== 'release') await replace();
}

async function leaderNow(round) {
  const l = currentLeader() ?? (await nextLeader(undefined, TAKEOVER_TIMEOUT_MS))?.node;
  if (!l) problems.push(`round ${round}: no leader within ${TAKEOVER_TIMEOUT_MS} ms`);
  return l ?? null;
}

// ---------------------------------------------------------------------------------------------------
// The check and the summary

/** Leaderships must not overlap, and each new one must carry a greater term. */
function checkLeaderships() {
  const all = [...leaderships].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const errors = [];
  let minGap = null;
  for (let i = 1; i < all.length; i++) {
    const prev = all[i - 1];
    const cur = all[i];
    if (prev.end === null || cur.start < prev.end) {
      errors.push(
        `${prev.id} (term ${prev.term}) and ${cur.id} (term ${cur.term}) led at once` +
          (prev.end === null ? '' : ` for ${ms(prev.end - cur.start).toFixed(1)} ms`),
      );
      continue;
    }
    const sameLeadership = prev.id === cur.id && prev.term === cur.term;
    if (!sameLeadership && !(cur.term > prev.term)) {
      errors.push(`term did not grow: ${prev.id} term ${prev.term}, then ${cur.id} term ${cur.term}`);
    }
    if (!sameLeadership) {
      const gap = ms(cur.start - prev.end);
      if (minGap === null || gap < minGap) minGap = gap;
    }
  }
  const terms = all.map((l) => l.term);
  return { count: all.length, errors, minGap, first: terms[0], last: terms[terms.length - 1] };
}

function stats(values) {
  if (values.length === 0) return 'no measurement';
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return `median ${median.toFixed(0)} ms, max ${sorted[sorted.length - 1].toFixed(0)} ms (${values.length} run${values.length === 1 ? '' : 's'})`;
}

// ---------------------------------------------------------------------------------------------------

async function main() {
  console.log(
    `leaderlease demo (Node.js): ${CANDIDATES} candidate processes, lease ${LEASE} ms, renewal ${RENEWAL} ± ${JITTER / 2} ms, ${ROUNDS} round(s)`,
  );
  console.log(`PostgreSQL ${where(DATABASE_URL)}, schema ${SCHEMA}\n`);

  const first = Array.from({ length: CANDIDATES }, () => spawnCandidate());
  const started = await Promise.all(first.map((n) => waitReady(n)));
  if (started.includes(false)) throw new Error('the candidates did not start');
  const initial = await nextLeader(undefined, TAKEOVER_TIMEOUT_MS);
  if (initial === null) throw new Error(`no candidate became leader within ${TAKEOVER_TIMEOUT_MS} ms`);
  console.log(`\n${initial.node.id} leads with term ${initial.term}`);

  for (let round = 1; round <= ROUNDS && !interrupted; round++) {
    for (const step of ['kill', 'release', 'SIGTERM']) {
      await sleep(SETTLE_MS);
      if (interrupted) return;
      const leader = await leaderNow(round);
      if (leader === null) return;
      if (step === 'kill') await killRound(round, leader);
      else await handoverRound(round, leader, step, step === 'release' ? releases : sigterms);
    }
  }
}

let exitCode = 0;
try {
  await main();
} catch (err) {
  problems.push(err.message);
}
if (interrupted) await new Promise(() => undefined); // onInterrupt exits
console.log('\nstopping the candidates');
await stopAll();
await dropSchema();

const check = checkLeaderships();
const ok = problems.length === 0 && check.errors.length === 0;
const row = (k, v) => console.log(`  ${k.padEnd(28)} ${v}`);
console.log('\nsummary');
row('settings', `lease ${LEASE} ms, renewal ${RENEWAL} ± ${JITTER / 2} ms, safety margin ${Math.max(50, Math.floor(LEASE / 10))} ms, ${CANDIDATES} candidates`);
row('takeover after SIGKILL', stats(takeovers));
row('handover after release()', stats(releases));
row('handover after SIGTERM', stats(sigterms));
if (check.errors.length === 0) {
  row(
    'never two leaders',
    `ok: ${check.count} leaderships, terms ${check.first} to ${check.last} growing, none overlapping` +
      (check.minGap === null ? '' : ` (closest ${check.minGap.toFixed(0)} ms apart)`),
  );
} else {
  row('never two leaders', `FAILED: ${check.errors.join('; ')}`);
}
for (const p of problems) row('problem', p);
row('result', ok ? 'ok' : 'FAILED');
if (!ok) exitCode = 1;
process.exitCode = exitCode;
