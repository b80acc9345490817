// A NestJS application as a candidate of the chaos checker (docs/chaos.md): LeaderElectorModule.forRoot
// from the package, `app.enableShutdownHooks()`, and a module of its own whose shutdown hook runs after the
// election's and writes the exit record (the marker that every shutdown hook ran). amILeader() of the
// LeaderElectorService is sampled every millisecond as node-candidate.mjs does, on an unref'd timer: the
// application itself keeps nothing alive during shutdown, so a shutdown that lets the process exit before
// Nest's hooks have finished shows as an exit without the marker.
//
//   node tests/chaos/nest-candidate.mjs --id s1-g1 --url postgres://... --dir RUN_DIR --t0 NS
//       [--lock-id 7] [--schema chaos] [--lease 2000] [--renewal 600] [--jitter 200] [--safety-margin MS]
//       [--operation-timeout MS] [--max-event-loop-stall MS] [--store pg|nats] [--bucket chaos]
//       [--package DIR]
//
// On SIGTERM, Nest runs the shutdown hooks (the election's release and shutdown, then the marker's) and
// re-raises the signal: the process must end by SIGTERM (exit status 143), with the exit record written;
// or, for the candidates with a SIGTERM listener of their own (every other one), by that listener's
// process.exit(143) on the re-raised signal.
// Records: as node-candidate.mjs (one election, lock id --lock-id), plus {"type":"ready"} once the
// application has started (from then on a SIGTERM must end as above); the exit record has `hooks: "done"`.
// A SIGTERM before the start completed is answered once it has (a SIGTERM before this script's first line
// ran ends the process by the signal's default action, without records: it had not started).

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

import { parseCandidateArgs } from './candidate-args.mjs';

const SLOT_LEN = 256;

let args;
try {
  // Strict: the options of tests/chaos/candidate-args.mjs, the table the harness builds them from.
  args = parseCandidateArgs('nest', process.argv.slice(2));
  args.packageDir = path.resolve(args.packageDir ?? new URL('../..', import.meta.url).pathname);
} catch (err) {
  process.stderr.write(`nest-candidate: ${err.message}\n`);
  process.exit(2);
}

// A SIGTERM while Nest starts is answered once it has started (Nest's own handler then runs the hooks).
let terminated = false;
const onEarlyTerm = () => {
  terminated = true;
};
process.on('SIGTERM', onEarlyTerm);

// Nest and the package resolved from the package's directory, as in an application that installed both.
const require = createRequire(path.join(args.packageDir, 'package.json'));
require('reflect-metadata');
const { Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const { LeaderElectorModule, LeaderElectorService } = require(args.packageDir);

const id = args.id;
const lock = args.lockId;
const logFd = fs.openSync(path.join(args.dir, `${id}.jsonl`), 'a');
const slotFd = fs.openSync(path.join(args.dir, `${id}.slot`), 'w');
const now = () => Number(process.hrtime.bigint() - args.t0);
const append = (obj) => fs.writeSync(logFd, `${JSON.stringify(obj)}\n`);
const event = (obj) => {
  try {
    process.stdout.write(`${JSON.stringify(obj)}\n`);
  } catch {
    // The harness is gone.
  }
};

let open = null;
const stats = { samples: 0, trueSamples: 0, termless: 0, intervals: 0, lastSample: null, maxGap: 0 };
const slotBuf = Buffer.alloc(SLOT_LEN);
function writeSlot() {
  const base = { candidate: id, lock, sampler: id };
  const body = JSON.stringify(
    open === null
      ? { type: 'none', ...base }
      : { type: 'open', ...base, term: open.term, first_true_ns: open.first, last_true_ns: open.last, samples: open.samples },
  );
  slotBuf.fill(0x20);
  slotBuf.write(body.slice(0, SLOT_LEN - 1), 0, 'utf8');
  slotBuf[SLOT_LEN - 1] = 0x0a;
  fs.writeSync(slotFd, slotBuf, 0, SLOT_LEN, 0);
}
function close() {
  if (open === null) return;
  append({ type: 'interval', candidate: id, lock, sampler: id, term: open.term, first_true_ns: open.first, last_true_ns: open.last, samples: open.samples });
  stats.intervals += 1;
  open = null;
  writeSlot();
}

let service = null;
function sample() {
  if (service === null) return;
  const t = now();
  const leads = service.amILeader();
  stats.samples += 1;
  if (stats.lastSample !== null) stats.maxGap = Math.max(stats.maxGap, t - stats.lastSample);
  stats.lastSample = t;
  if (!leads) {
    if (open !== null) {
      close();
      event({ ev: 'follow', lock, t });
    }
    return;
  }
  stats.trueSamples += 1;
  const term = service.term() ?? open?.term ?? null;
  if (term === null) {
    stats.termless += 1;
    return;
  }
  if (open !== null && open.term !== term) close();
  if (open === null) {
    open = { term, first: t, last: t, samples: 1 };
    event({ ev: 'lead', lock, sampler: id, term, t });
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
  process.stderr.write(`nest-candidate ${id}: ${kind}: ${message}\n`);
  process.exit(70);
}
process.on('unhandledRejection', (reason) => fatal('unhandledRejection', reason));
process.on('uncaughtException', (err) => fatal('uncaughtException', err));
process.on('warning', (w) => {
  append({ type: 'warning', candidate: id, name: w.name, message: w.message, t_ns: now() });
  process.stderr.write(`nest-candidate ${id}: warning: ${w.name}: ${w.message}\n`);
});

// The sampler keeps nothing alive: during shutdown only the package and Nest may hold the process.
const sampler = setInterval(sample, 1);
sampler.unref();
writeSlot();

/**
 * The application's own shutdown hook, in a module of its own: it waits for the election to have stopped
 * (awaiting the service's idempotent shutdown(), as a module that flushes data after the election would),
 * which holds nothing on the event loop by itself, then writes the exit record: the marker that the hooks
 * ran to the end.
 */
class Marker {
  async onApplicationShutdown(signal) {
    await service?.shutdown().catch((err) => {
      process.stderr.write(`nest-candidate ${id}: shutdown in the marker hook failed: ${err?.code} ${err?.message}\n`);
    });
    clearInterval(sampler);
    sample();
    close();
    append({
      type: 'exit',
      candidate: id,
      reason: signal ?? 'close',
      hooks: 'done',
      t_ns: now(),
      shutdown: 'ok',
      samples: stats.samples,
      true_samples: stats.trueSamples,
      termless_true_samples: stats.termless,
      intervals: stats.intervals,
      max_sample_gap_ns: stats.maxGap,
    });
  }
}

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
if (args.maxEventLoopStall !== undefined) config.maxEventLoopStall = args.maxEventLoopStall;
if (args.store === 'nats') config.backend = { nats: { servers: args.url, bucket: args.bucket } };
else config.connectionString = args.url;

class MarkerModule {}
Module({ providers: [Marker] })(MarkerModule);
class AppModule {}
Module({ imports: [LeaderElectorModule.forRoot(config), MarkerModule] })(AppModule);

// The start is retried while the store is unreachable (a fault may be active while this process starts).
const giveUp = Date.now() + 120_000;
let app = null;
while (app === null) {
  try {
    const a = await NestFactory.createApplicationContext(AppModule, { logger: ['error', 'warn'], abortOnError: false });
    app = a;
  } catch (err) {
    if (Date.now() > giveUp || !['ERR_DATABASE_UNREACHABLE', 'ERR_TIMEOUT', 'ERR_DATABASE', 'ERR_STORE'].includes(err?.code)) {
      process.stderr.write(`nest-candidate ${id}: could not start: ${err?.code} ${err?.message}\n`);
      process.exit(3);
    }
    process.stderr.write(`nest-candidate ${id}: start failed, retrying: ${err?.code} ${err?.message}\n`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
process.off('SIGTERM', onEarlyTerm);
app.enableShutdownHooks(['SIGTERM']);
// Every other generation of a slot is an app with a SIGTERM listener of its own, as apps that log their
// exit have: it notes the first SIGTERM and calls process.exit(143) on the second (the one Nest re-raises
// after its hooks). Such an app must end with status 143, never 0 (the event loop ran empty before the
// re-raised signal was dispatched: issue 20.1).
const ownListener = [...id].reduce((h, c) => h + c.charCodeAt(0), 0) % 2 === 1;
if (ownListener) {
  let sigterms = 0;
  process.on('SIGTERM', () => {
    if (++sigterms > 1) process.exit(143);
  });
}
service = app.get(LeaderElectorService);
// From here on a SIGTERM must end in the marker and the re-raised signal.
append({ type: 'ready', candidate: id, t_ns: now(), own_sigterm_listener: ownListener });
event({ ev: 'ready', t: now() });
if (terminated) process.kill(process.pid, 'SIGTERM');
