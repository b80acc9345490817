// One Node.js candidate process of the chaos checker (docs/chaos.md): the real npm package (the repository
// root, resolved through its package.json as an installed `leaderlease` would be), LeaderElectorCore.connect
// (or connectNats), one elector per lock id, and amILeader() of each sampled every millisecond, reading
// CLOCK_MONOTONIC first.
//
//   node tests/chaos/node-candidate.mjs --id n1-g1 --url postgres://... --dir RUN_DIR --t0 NS
//       [--lock-id 7] [--elections 1] [--schema chaos] [--lease 2000] [--renewal 600] [--jitter 200]
//       [--safety-margin MS] [--operation-timeout MS] [--max-event-loop-stall MS] [--store pg|nats]
//       [--bucket chaos] [--package DIR] [--answer status]
//
// --elections N: the lock ids --lock-id .. --lock-id + N - 1, one elector each. --fleet: the candidate
// joins a LeaderFleet (member id = --id) and starts each election as the fleet's election `lock-<id>`, so
// that it campaigns by the plan and hands names over when the plan moves them; at shutdown it leaves the
// fleet first (PostgreSQL only). --store nats: the url is a
// NATS server and the electors start with LeaderElectorCore.connectNats(url, { bucket, ... }).
// --max-event-loop-stall: passed as the config option `maxEventLoopStall`; a package that does not know it
// ignores it (or, should it refuse it as invalid, the candidate starts again without it and says so on
// stderr). --package: the package directory to load (default: the repository root; the harness passes a
// copy taken at the start of the run). --answer status: sample the last status event instead of
// amILeader(), the stored-boolean answer of nest-leader-election 1.1.2; only for showing that the checker
// catches it.
//
// Commands on stdin, one a line: `release <lock id>` (release() of that election: a voluntary handover),
// `stall <ms>` (a busy loop that blocks the event loop for that long: a wedged application).
//
// Records (the same as crates/leaderlease/examples/chaos_candidate.rs writes):
//   <id>.jsonl  one JSON line per closed leadership interval
//               {"type":"interval","candidate","lock","sampler","term","first_true_ns","last_true_ns","samples"},
//               {"type":"stall","from_ns","to_ns"} for each stall, {"type":"fatal",...} for an unhandled
//               rejection or exception, {"type":"exit",...} last on a clean exit. Times: CLOCK_MONOTONIC ns
//               minus --t0.
//   <id>.slot   the open interval of each election (record k at offset k x 256), rewritten in place after
//               every true sample (exact after a SIGKILL).
// stdout: one JSON line per change (ready, lead, follow) for the harness's live view.
// SIGTERM or the end of stdin: shutdown() of every elector (sampling goes on meanwhile), then the exit line,
// exit status 0. An unhandled rejection or uncaught exception: a fatal line on the log and stderr, exit
// status 70.

import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';

import { parseCandidateArgs } from './candidate-args.mjs';

const require = createRequire(import.meta.url);

const SLOT_LEN = 256;
const START_DEADLINE_MS = 120_000;
const RETRYABLE = new Set(['ERR_DATABASE_UNREACHABLE', 'ERR_TIMEOUT', 'ERR_DATABASE', 'ERR_STORE']);

let args;
try {
  // Strict: the options of tests/chaos/candidate-args.mjs, the table the harness builds them from.
  args = parseCandidateArgs('node', process.argv.slice(2));
  args.elections = Math.max(1, args.elections);
  args.packageDir ??= '../..';
} catch (err) {
  process.stderr.write(`node-candidate: ${err.message}\n`);
  process.exit(2);
}

const { LeaderElectorCore, LeaderFleet } = require(args.packageDir === '../..' ? '../..' : path.resolve(args.packageDir));
/** This candidate's fleet (--fleet), joined before its first election starts. */
let fleet = null;
const id = args.id;
const logFd = fs.openSync(path.join(args.dir, `${id}.jsonl`), 'a');
const slotFd = fs.openSync(path.join(args.dir, `${id}.slot`), 'w');
const now = () => Number(process.hrtime.bigint() - args.t0);

/** One write(2) per line on an O_APPEND file: a line is whole or absent, even after SIGKILL. */
function append(obj) {
  fs.writeSync(logFd, `${JSON.stringify(obj)}\n`);
}

function event(obj) {
  try {
    process.stdout.write(`${JSON.stringify(obj)}\n`);
  } catch {
    // The harness is gone; the records on disk are what counts.
  }
}

/** One election of this process: its elector, the last status event and the open interval. */
const tracks = [];
for (let k = 0; k < args.elections; k++) {
  tracks.push({ index: k, lock: args.lockId + k, elector: null, lastStatus: { state: 'candidate', term: null }, open: null });
}

const slotBuf = Buffer.alloc(SLOT_LEN);
function writeSlot(tr) {
  const open = tr.open;
  const body =
    open === null
      ? JSON.stringify({ type: 'none', candidate: id, lock: tr.lock, sampler: id })
      : JSON.stringify({
          type: 'open',
          candidate: id,
          lock: tr.lock,
          sampler: id,
          term: open.term,
          first_true_ns: open.first,
          last_true_ns: open.last,
          samples: open.samples,
        });
  slotBuf.fill(0x20);
  slotBuf.write(body.slice(0, SLOT_LEN - 1), 0, 'utf8');
  slotBuf[SLOT_LEN - 1] = 0x0a;
  fs.writeSync(slotFd, slotBuf, 0, SLOT_LEN, tr.index * SLOT_LEN);
}

const stats = { samples: 0, trueSamples: 0, termless: 0, intervals: 0, lastSample: null, maxGap: 0 };

function close(tr) {
  if (tr.open === null) return;
  const open = tr.open;
  append({
    type: 'interval',
    candidate: id,
    lock: tr.lock,
    sampler: id,
    term: open.term,
    first_true_ns: open.first,
    last_true_ns: open.last,
    samples: open.samples,
  });
  stats.intervals += 1;
  tr.open = null;
  writeSlot(tr);
}

const staleAnswer = args.answer === 'status';

function sampleTrack(tr) {
  const elector = tr.elector;
  if (elector === null) return;
  // The clock first: a pause between the two reads can only make the recorded time of a true answer
  // earlier than the answer, never later.
  const t = now();
  const leads = staleAnswer ? tr.lastStatus.state === 'leader' : elector.amILeader();
  if (!leads) {
    if (tr.open !== null) {
      close(tr);
      event({ ev: 'follow', lock: tr.lock, t });
    }
    return;
  }
  stats.trueSamples += 1;
  const term = (staleAnswer ? tr.lastStatus.term : elector.term()) ?? tr.open?.term ?? null;
  if (term === null) {
    // The deadline passed between amILeader() and term(): a true answer of unknown term.
    stats.termless += 1;
    return;
  }
  if (tr.open !== null && tr.open.term !== term) close(tr);
  if (tr.open === null) {
    tr.open = { term, first: t, last: t, samples: 1 };
    event({ ev: 'lead', lock: tr.lock, sampler: id, term, t });
  } else {
    tr.open.last = t;
    tr.open.samples += 1;
  }
  writeSlot(tr);
}

function sample() {
  const t = now();
  stats.samples += 1;
  if (stats.lastSample !== null) stats.maxGap = Math.max(stats.maxGap, t - stats.lastSample);
  stats.lastSample = t;
  for (const tr of tracks) sampleTrack(tr);
}

function fatal(kind, err) {
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
  try {
    for (const tr of tracks) close(tr);
    append({ type: 'fatal', candidate: id, kind, message, t_ns: now() });
  } catch {
    // Reported on stderr and by the exit status anyway.
  }
  process.stderr.write(`node-candidate ${id}: ${kind}: ${message}\n`);
  process.exit(70);
}
process.on('unhandledRejection', (reason) => fatal('unhandledRejection', reason));
process.on('uncaughtException', (err) => fatal('uncaughtException', err));
process.on('warning', (w) => {
  append({ type: 'warning', candidate: id, name: w.name, message: w.message, t_ns: now() });
  process.stderr.write(`node-candidate ${id}: warning: ${w.name}: ${w.message}\n`);
});

let stopping = false;
let starting = true;
async function stop(reason) {
  if (stopping) return;
  stopping = true;
  let shutdown = 'ok';
  const started = tracks.filter((tr) => tr.elector !== null);
  if (started.length > 0) {
    // Sampling goes on meanwhile: the release must have stepped down before it deletes the lease. A fleet
    // member leaves first, so that the new owners take the names at the releases.
    await fleet?.leave().catch(() => undefined);
    const results = await Promise.allSettled(started.map((tr) => tr.elector.shutdown()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) shutdown = `error: ${failed.reason?.code ?? ''} ${failed.reason?.message ?? String(failed.reason)}`;
  } else if (starting) {
    shutdown = 'not started';
  }
  clearInterval(sampler);
  sample();
  for (const tr of tracks) close(tr);
  append({
    type: 'exit',
    candidate: id,
    reason,
    t_ns: now(),
    shutdown,
    samples: stats.samples,
    true_samples: stats.trueSamples,
    termless_true_samples: stats.termless,
    intervals: stats.intervals,
    max_sample_gap_ns: stats.maxGap,
  });
  if (shutdown !== 'ok' && shutdown !== 'not started') {
    process.stderr.write(`node-candidate ${id}: shutdown failed: ${shutdown}\n`);
    process.exit(5);
  }
  process.exit(0);
}

/** A command of the harness (see the header). */
function command(line) {
  const [cmd, arg] = line.trim().split(/\s+/);
  const n = Number(arg);
  if (cmd === 'release' && Number.isFinite(n)) {
    for (const tr of tracks) {
      if (tr.lock !== n || tr.elector === null) continue;
      tr.elector.release().catch((err) => {
        process.stderr.write(`node-candidate ${id}: release of lock ${n} failed: ${err?.code} ${err?.message}\n`);
      });
    }
  } else if (cmd === 'stall' && Number.isFinite(n)) {
    // A wedged event loop: nothing of this process's JavaScript runs (no sample, no callback) until it ends.
    const from = now();
    const until = from + n * 1e6;
    while (now() < until) {
      // busy
    }
    append({ type: 'stall', candidate: id, from_ns: from, to_ns: now() });
  } else {
    process.stderr.write(`node-candidate ${id}: unknown command ${JSON.stringify(line)}\n`);
  }
}

process.on('SIGTERM', () => void stop('SIGTERM'));
readline.createInterface({ input: process.stdin }).on('line', command).on('close', () => void stop('stdin closed'));
process.stdin.on('error', () => void stop('stdin error'));

for (const tr of tracks) writeSlot(tr);
const sampler = setInterval(sample, 1);

function configFor(lock, withStall) {
  const config = {
    lockId: lock,
    instanceId: id,
    schema: args.schema,
    leaseDuration: args.lease,
    renewalInterval: args.renewal,
    jitterRange: args.jitter,
  };
  if (args.safetyMargin !== undefined) config.safetyMargin = args.safetyMargin;
  if (args.operationTimeout !== undefined) config.operationTimeout = args.operationTimeout;
  if (withStall && args.maxEventLoopStall !== undefined) config.maxEventLoopStall = args.maxEventLoopStall;
  if (fleet !== null) config.fleet = { fleet, name: `lock-${lock}` };
  return config;
}

let passStall = true;
async function connect(lock) {
  const config = configFor(lock, passStall);
  try {
    return args.store === 'nats'
      ? await LeaderElectorCore.connectNats(args.url, { ...config, bucket: args.bucket })
      : await LeaderElectorCore.connect(args.url, config);
  } catch (err) {
    if (passStall && 'maxEventLoopStall' in config && /maxEventLoopStall/.test(String(err?.message))) {
      process.stderr.write(`node-candidate ${id}: maxEventLoopStall refused (${err?.message}); starting without it\n`);
      passStall = false;
      return connect(lock);
    }
    throw err;
  }
}

const giveUp = Date.now() + START_DEADLINE_MS;
while (args.fleet && fleet === null && !stopping) {
  try {
    fleet = await LeaderFleet.join(args.url, { id, schema: args.schema, leaseDuration: args.lease, renewalInterval: args.renewal });
  } catch (err) {
    if (!RETRYABLE.has(err?.code) || Date.now() > giveUp) throw err;
    await new Promise((r) => setTimeout(r, 200));
  }
}
for (const tr of tracks) {
  while (tr.elector === null && !stopping) {
    try {
      const e = await connect(tr.lock);
      if (stopping) {
        await e.shutdown();
        break;
      }
      tr.elector = e;
      e.on('status', (st) => {
        tr.lastStatus = st;
      });
    } catch (err) {
      if (!RETRYABLE.has(err?.code) || Date.now() > giveUp) {
        process.stderr.write(`node-candidate ${id}: could not start: ${err?.code} ${err?.message}\n`);
        process.exit(3);
      }
      process.stderr.write(`node-candidate ${id}: start failed, retrying: ${err?.code} ${err?.message}\n`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
starting = false;
if (!stopping) event({ ev: 'ready', t: now() });
