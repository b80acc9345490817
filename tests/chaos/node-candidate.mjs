// One Node.js candidate process of the chaos checker (docs/chaos.md): the real npm package (the repository
// root, resolved through its package.json as an installed `leaderlease` would be), LeaderElectorCore.connect,
// and amILeader() sampled every millisecond, reading CLOCK_MONOTONIC first.
//
//   node tests/chaos/node-candidate.mjs --id n1-g1 --url postgres://... --dir RUN_DIR --t0 NS
//       [--lock-id 7] [--schema chaos] [--lease 2000] [--renewal 600] [--jitter 200]
//       [--safety-margin MS] [--operation-timeout MS] [--package DIR] [--answer status]
//
// --package: the package directory to load (default: the repository root; the harness passes a copy taken
// at the start of the run). --answer status: sample the last status event instead of amILeader(), the
// stored-boolean answer of nest-leader-election 1.1.2; only for showing that the checker catches it.
//
// Records (the same as crates/leaderlease/examples/chaos_candidate.rs writes):
//   <id>.jsonl  one JSON line per closed leadership interval
//               {"type":"interval","candidate","term","first_true_ns","last_true_ns","samples"},
//               {"type":"fatal",...} for an unhandled rejection or exception, {"type":"exit",...} last on a
//               clean exit. Times: CLOCK_MONOTONIC ns minus --t0.
//   <id>.slot   the open interval, rewritten in place after every true sample (exact after a SIGKILL).
// stdout: one JSON line per change (ready, lead, follow) for the harness's live view.
// SIGTERM or the end of stdin: shutdown() (sampling goes on meanwhile), then the exit line, exit status 0.
// An unhandled rejection or uncaught exception: a fatal line on the log and stderr, exit status 70.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

const SLOT_LEN = 192;
const START_DEADLINE_MS = 120_000;
const RETRYABLE = new Set(['ERR_DATABASE_UNREACHABLE', 'ERR_TIMEOUT', 'ERR_DATABASE']);

function parseArgs(argv) {
  const get = (name) => {
    const i = argv.indexOf(name);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : undefined;
  };
  const need = (name) => {
    const v = get(name);
    if (v === undefined) throw new Error(`missing ${name}`);
    return v;
  };
  const num = (name, dflt) => {
    const v = get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${name}: not a number: ${v}`);
    return n;
  };
  return {
    id: need('--id'),
    url: need('--url'),
    dir: need('--dir'),
    t0: BigInt(need('--t0')),
    lockId: num('--lock-id', 7),
    schema: get('--schema') ?? 'chaos',
    lease: num('--lease', 2000),
    renewal: num('--renewal', 600),
    jitter: num('--jitter', 200),
    safetyMargin: num('--safety-margin', undefined),
    operationTimeout: num('--operation-timeout', undefined),
    packageDir: get('--package') ?? '../..',
    answer: get('--answer') ?? 'amILeader',
  };
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`node-candidate: ${err.message}\n`);
  process.exit(2);
}

const { LeaderElectorCore } = require(args.packageDir === '../..' ? '../..' : path.resolve(args.packageDir));
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

const slotBuf = Buffer.alloc(SLOT_LEN);
function writeSlot() {
  const body =
    open === null
      ? JSON.stringify({ type: 'none', candidate: id })
      : JSON.stringify({
          type: 'open',
          candidate: id,
          term: open.term,
          first_true_ns: open.first,
          last_true_ns: open.last,
          samples: open.samples,
        });
  slotBuf.fill(0x20);
  slotBuf.write(body.slice(0, SLOT_LEN - 1), 0, 'utf8');
  slotBuf[SLOT_LEN - 1] = 0x0a;
  fs.writeSync(slotFd, slotBuf, 0, SLOT_LEN, 0);
}

let open = null;
const stats = { samples: 0, trueSamples: 0, termless: 0, intervals: 0, lastSample: null, maxGap: 0 };

function close() {
  if (open === null) return;
  append({
    type: 'interval',
    candidate: id,
    term: open.term,
    first_true_ns: open.first,
    last_true_ns: open.last,
    samples: open.samples,
  });
  stats.intervals += 1;
  open = null;
  writeSlot();
}

let elector = null;
const staleAnswer = args.answer === 'status';
let lastStatus = { state: 'candidate', term: null };

function sample() {
  if (elector === null) return;
  // The clock first: a pause between the two reads can only make the recorded time of a true answer
  // earlier than the answer, never later.
  const t = now();
  const leads = staleAnswer ? lastStatus.state === 'leader' : elector.amILeader();
  stats.samples += 1;
  if (stats.lastSample !== null) stats.maxGap = Math.max(stats.maxGap, t - stats.lastSample);
  stats.lastSample = t;
  if (!leads) {
    if (open !== null) {
      close();
      event({ ev: 'follow', t });
    }
    return;
  }
  stats.trueSamples += 1;
  const term = (staleAnswer ? lastStatus.term : elector.term()) ?? open?.term ?? null;
  if (term === null) {
    // The deadline passed between amILeader() and term(): a true answer of unknown term.
    stats.termless += 1;
    return;
  }
  if (open !== null && open.term !== term) close();
  if (open === null) {
    open = { term, first: t, last: t, samples: 1 };
    event({ ev: 'lead', term, t });
  } else {
    open.last = t;
    open.samples += 1;
  }
  writeSlot();
}

function fatal(kind, err) {
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
  try {
    close();
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
  if (elector !== null) {
    try {
      // Sampling goes on meanwhile: the release must have stepped down before it deletes the lease.
      await elector.shutdown();
    } catch (err) {
      shutdown = `error: ${err?.code ?? ''} ${err?.message ?? String(err)}`;
    }
  } else if (starting) {
    shutdown = 'not started';
  }
  clearInterval(sampler);
  sample();
  close();
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
process.on('SIGTERM', () => void stop('SIGTERM'));
process.stdin.on('end', () => void stop('stdin closed'));
process.stdin.on('error', () => void stop('stdin error'));
process.stdin.resume();

writeSlot();
const sampler = setInterval(sample, 1);

const config = {
  lockId: args.lockId,
  instanceId: id,
  schema: args.schema,
  leaseDuration: args.lease,
  renewalInterval: args.renewal,
  jitterRange: args.jitter,
};
if (args.safetyMargin !== undefined) config.safetyMargin = args.safetyMargin;
if (args.operationTimeout !== undefined) config.operationTimeout = args.operationTimeout;

const giveUp = Date.now() + START_DEADLINE_MS;
while (elector === null && !stopping) {
  try {
    const e = await LeaderElectorCore.connect(args.url, config);
    if (stopping) {
      await e.shutdown();
      break;
    }
    elector = e;
    e.on('status', (st) => {
      lastStatus = st;
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
starting = false;
if (elector !== null) event({ ev: 'ready', t: now() });
