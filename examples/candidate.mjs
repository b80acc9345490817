// One candidate of the live demo (examples/cluster.mjs forks three of them). It campaigns with the package
// built at the repository root and reports to its parent over the IPC channel:
//   { type: 'ready', id, pid }                     campaigning
//   { type: 'role', id, leader, term, at }         every change of amILeader() / term()
//   { type: 'stopped', id, at }                    shut down
//   { type: 'error', id, message }                 could not start
// `at` is process.hrtime.bigint() as a decimal string: CLOCK_MONOTONIC, the same clock in every process
// of the machine, so the parent can compare the reports of different candidates.
//
// Commands from the parent: { cmd: 'release' } (hand over, stay a candidate) and { cmd: 'shutdown' }.
// SIGTERM and SIGINT shut down too; so does the parent going away (the IPC channel closes).
//
//   node examples/candidate.mjs --id node-1 --schema NAME [--lock-id N] [--lease MS] [--renewal MS] [--jitter MS]
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const { LeaderElectorCore } = require('..');

const { values: args } = parseArgs({
  options: {
    id: { type: 'string', default: `node-${process.pid}` },
    schema: { type: 'string', default: 'public' },
    'lock-id': { type: 'string', default: '1' },
    lease: { type: 'string', default: '1500' },
    renewal: { type: 'string', default: '500' },
    jitter: { type: 'string', default: '200' },
  },
});

const id = args.id;
const config = {
  instanceId: id,
  schema: args.schema,
  lockId: Number(args['lock-id']),
  leaseDuration: Number(args.lease),
  renewalInterval: Number(args.renewal),
  jitterRange: Number(args.jitter),
};
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const now = () => process.hrtime.bigint().toString();
function report(msg) {
  if (process.connected) process.send({ id, ...msg });
}

let elector = null;
let last = { leader: false, term: null };
/** Reports amILeader() (the authority: it honours the local deadline) when it or the term changed. */
function sample() {
  if (elector === null) return;
  const leader = elector.amILeader();
  const term = leader ? elector.term() : null;
  if (leader !== last.leader || term !== last.term) {
    last = { leader, term };
    report({ type: 'role', leader, term, at: now() });
  }
}

let stopping = null;
function stop(code = 0) {
  stopping ??= (async () => {
    clearInterval(ticker);
    if (elector !== null) {
      const done = elector.shutdown(); // steps down at once (synchronously), then deletes the lease
      sample();
      try {
        await done;
      } catch (err) {
        process.stderr.write(`${id}: shutdown failed: ${err}\n`);
        code = 1;
      }
      report({ type: 'stopped', at: now() });
    }
    if (process.connected) {
      // Exit once the last report has left.
      process.send({ id, type: 'bye' }, () => process.exit(code));
    } else {
      process.exit(code);
    }
  })();
  return stopping;
}

// Sample every millisecond as well as on every status event: the deadline can pass between two events.
const ticker = setInterval(sample, 1);
process.on('SIGTERM', () => void stop(0));
process.on('SIGINT', () => void stop(130));
process.on('disconnect', () => void stop(0));
process.on('message', (msg) => {
  if (msg?.cmd === 'release' && elector !== null) {
    const done = elector.release(); // steps down at once, then deletes the lease
    sample();
    done.catch((err) => process.stderr.write(`${id}: release failed: ${err}\n`));
  } else if (msg?.cmd === 'shutdown') {
    void stop(0);
  }
});

try {
  elector = await LeaderElectorCore.connect(url, config);
} catch (err) {
  report({ type: 'error', message: `${err?.name ?? 'Error'}: ${err?.message ?? err}` });
  process.stderr.write(`${id}: could not start: ${err?.message ?? err}\n`);
  clearInterval(ticker);
  process.exitCode = 1;
  if (process.connected) process.disconnect();
}
if (elector !== null) {
  if (stopping !== null) {
    await elector.shutdown().catch(() => undefined);
  } else {
    elector.on('status', sample);
    report({ type: 'ready', pid: process.pid, at: now() });
    sample();
  }
}
