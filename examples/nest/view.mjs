// The NestJS demo (`npm run demo -- --nest`): three instances of the worker in examples/nest/app.ts, and
// a live view of who leads which named election and which job runs where. Every 10 s the instance that
// leads `report` gets a SIGTERM in the middle of a run (its run is drained: it stops at its next step,
// and only then does another instance take `report` over) and a fresh instance replaces it. Runs
// --seconds (default 40) from when the three workers are up, then prints a summary: exit code 1 if two
// `report` runs overlapped or none ran.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test node examples/nest/view.mjs [--seconds 40]
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const APP = fileURLToPath(new URL('../../dist-examples/nest/app.js', import.meta.url));
let SECONDS;
try {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '40' } } });
  SECONDS = Number(values.seconds);
  if (!Number.isInteger(SECONDS) || SECONDS <= 0) throw new Error(`--seconds needs a positive integer (got ${values.seconds})`);
} catch (e) {
  console.error(`${e.message}\nusage: node examples/nest/view.mjs [--seconds N]`);
  process.exit(2);
}
const SCHEMA = `leaderlease_nest_demo_${randomBytes(3).toString('hex')}`;
const t0 = Date.now();
const workers = [];
const log = [];
/** Every `report` run: [worker, start t, end t (null while running), how it ended, term]. */
const runs = [];
const sigterms = [];
let started = 0;

function startWorker() {
  const w = { id: `worker-${++started}`, leads: new Set(), last: '', done: false, up: false };
  // The schema on the command line, so that the worker processes can be told apart from others.
  w.child = spawn(process.execPath, [APP, SCHEMA], {
    env: { ...process.env, INSTANCE: w.id, SCHEMA },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let buf = '';
  w.child.stdout.on('data', (d) => {
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
      const at = ((e.t - t0) / 1000).toFixed(2).padStart(6);
      if (e.event === 'up') w.up = true;
      if (e.event === 'elected') w.leads.add(e.name);
      if (e.event === 'revoked') w.leads.delete(e.name);
      if (e.event === 'elected' || e.event === 'revoked') log.push(`${at}s ${w.id} ${e.event} ${e.name}${e.term ? ` (term ${e.term})` : ''}`);
      if (e.event === 'run-start') runs.push({ worker: w.id, start: e.t, end: null, how: null, term: e.term });
      if (e.event === 'run-end' || e.event === 'run-aborted') {
        const r = runs.findLast((x) => x.worker === w.id && x.end === null);
        if (r) Object.assign(r, { end: e.t, how: e.event.slice(4) });
      }
      if (e.event.startsWith('run-')) {
        w.last = `${e.job} ${e.event.slice(4)}`;
        log.push(`${at}s ${w.id} report ${e.event.slice(4)} (term ${e.term})`);
      }
    }
  });
  w.child.on('exit', () => (w.done = true));
  workers.push(w);
  return w;
}

function draw() {
  const rows = workers
    .filter((w) => !w.done)
    .map((w) => `  ${w.id.padEnd(10)} leads: ${[...w.leads].sort().join(', ').padEnd(16)} last run: ${w.last}`);
  process.stdout.write('\x1b[2J\x1b[H');
  const status = upAt === null ? 'starting the workers' : `${((Date.now() - upAt) / 1000).toFixed(0)} s of ${SECONDS}`;
  console.log(`leaderlease NestJS demo: 3 workers, named elections 'report' and 'cleanup' (${status})\n`);
  console.log(rows.join('\n'));
  console.log('\nlatest events:');
  console.log(log.slice(-14).join('\n'));
}

/** When the three first workers were all up: the demo's time counts from then. */
let upAt = null;
let stopping = false;
for (let k = 0; k < 3; k++) startWorker();
const view = setInterval(draw, 300);
const kill = setInterval(() => {
  if (upAt === null && workers.every((w) => w.up)) {
    upAt = Date.now();
    setTimeout(() => void stop(), SECONDS * 1000);
  }
  if (upAt === null && Date.now() - t0 > 120_000) {
    log.push('the workers did not start within 120 s');
    void stop();
  }
  if (upAt === null || stopping || Date.now() - (lastKill ?? upAt) < 10_000) return;
  const leader = workers.find((w) => !w.done && w.leads.has('report') && w.last === 'report start');
  if (leader === undefined) return;
  log.push(`${((Date.now() - t0) / 1000).toFixed(2).padStart(6)}s SIGTERM to ${leader.id} (it leads 'report', a run is in progress)`);
  lastKill = Date.now();
  sigterms.push({ worker: leader.id, t: Date.now() });
  leader.child.kill('SIGTERM');
  startWorker();
}, 100);
let lastKill = null;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  clearInterval(kill);
  for (const w of workers) if (!w.done) w.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 2000));
  clearInterval(view);
  draw();
  for (const w of workers) if (!w.done) w.child.kill('SIGKILL');
  // No two `report` runs overlapped, on any worker; after each SIGTERM, the next leader's first run
  // started after the old run had ended.
  const sorted = runs.filter((r) => r.end !== null || !workers.find((w) => w.id === r.worker)?.done).sort((a, b) => a.start - b.start);
  let overlaps = 0;
  for (let k = 1; k < sorted.length; k++) if (sorted[k].start < (sorted[k - 1].end ?? Infinity)) overlaps++;
  const handovers = [];
  for (const { worker, t } of sigterms) {
    const old = runs.findLast((r) => r.worker === worker && r.start <= t);
    const next = runs.find((r) => r.worker !== worker && r.start > t);
    if (old?.end != null && next) handovers.push(next.start - old.end);
  }
  console.log('\nsummary');
  console.log(`report runs      ${runs.length}, ${runs.filter((r) => r.how === 'aborted').length} stopped early by their signal`);
  console.log(
    `SIGTERMs         ${sigterms.length}; old run's end -> next leader's first run (due every 2 s): ${handovers.map((h) => `${h} ms`).join(', ') || 'none'}`,
  );
  console.log(`overlapping runs ${overlaps}`);
  console.log(`schema           ${SCHEMA} (dropped)`);
  console.log(`result           ${overlaps === 0 && runs.length > 0 ? 'ok' : 'FAILED'}`);
  process.exitCode = overlaps === 0 && runs.length > 0 ? 0 : 1;
  const pg = await import('pg').then((m) => m.default).catch(() => null);
  if (pg) {
    const c = new pg.Client({ connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test' });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`);
    await c.end();
  }
};
process.on('SIGINT', () => void stop().then(() => process.exit(130)));
