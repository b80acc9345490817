// The NestJS demo (`npm run demo -- --nest`): three instances of the worker in examples/nest/app.ts, and
// a live view of who leads which named election and which job runs where. Every 10 s the instance that
// leads `report` gets a SIGTERM in the middle of a run (its run is drained: it stops at its next step,
// and only then does another instance take `report` over) and a fresh instance replaces it.
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
let started = 0;

function startWorker() {
  const w = { id: `worker-${++started}`, leads: new Set(), last: '', done: false };
  w.child = spawn(process.execPath, [APP], {
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
      if (e.event === 'elected') w.leads.add(e.name);
      if (e.event === 'revoked') w.leads.delete(e.name);
      if (e.event === 'elected' || e.event === 'revoked') log.push(`${at}s ${w.id} ${e.event} ${e.name}${e.term ? ` (term ${e.term})` : ''}`);
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
  console.log(`leaderlease NestJS demo: 3 workers, named elections 'report' and 'cleanup' (${((Date.now() - t0) / 1000).toFixed(0)} s of ${SECONDS})\n`);
  console.log(rows.join('\n'));
  console.log('\nlatest events:');
  console.log(log.slice(-14).join('\n'));
}

for (let k = 0; k < 3; k++) startWorker();
const view = setInterval(draw, 300);
const kill = setInterval(() => {
  const leader = workers.find((w) => !w.done && w.leads.has('report') && w.last === 'report start');
  if (leader === undefined) return;
  log.push(`${((Date.now() - t0) / 1000).toFixed(2).padStart(6)}s SIGTERM to ${leader.id} (it leads 'report', a run is in progress)`);
  leader.child.kill('SIGTERM');
  startWorker();
}, 10_000);
const stop = async () => {
  clearInterval(kill);
  for (const w of workers) if (!w.done) w.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 2000));
  clearInterval(view);
  draw();
  for (const w of workers) if (!w.done) w.child.kill('SIGKILL');
  const pg = await import('pg').then((m) => m.default).catch(() => null);
  if (pg) {
    const c = new pg.Client({ connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test' });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`);
    await c.end();
  }
};
setTimeout(stop, SECONDS * 1000);
process.on('SIGINT', () => void stop().then(() => process.exit(130)));
