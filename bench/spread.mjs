// How named elections spread over the instances of a NestJS app: starts N instances of the worker in
// tests/fixtures/jobs-app.ts (built by `npm run build:ts`), each declaring the same M named elections
// (`LeaderElectorModule.forFeature`), and samples how many names each instance leads.
//
//   node bench/spread.mjs [--instances 3] [--names 30] [--seconds 45] [--stagger 0,5000] [--lease 3000]
//
// One scenario per --stagger value: the instances start that many ms apart (0: together; 5000: a rolling
// start, the first instance alone for 5 s). Prints, per scenario, the names led per instance at the end,
// when every name first had a leader with all instances started, when the spread first reached
// max - min <= 1 and how much of the time after that it stayed there (samples every 250 ms), and how many
// leaderships moved. SPREAD_TRACE=1 prints the spread every second. Uses DATABASE_URL
// (default postgres://postgres@127.0.0.1:5432/test) in a schema of its own, dropped at the end.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import pg from 'pg';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = join(root, 'dist-tests', 'fixtures', 'jobs-app.js');
let values;
try {
  ({ values } = parseArgs({
    options: {
      instances: { type: 'string', default: '3' },
      names: { type: 'string', default: '30' },
      seconds: { type: 'string', default: '45' },
      stagger: { type: 'string', default: '0,5000' },
      lease: { type: 'string', default: '3000' },
    },
  }));
  for (const k of ['instances', 'names', 'seconds', 'lease']) {
    if (!(Number(values[k]) > 0)) throw new Error(`--${k} needs a positive number (got ${values[k]})`);
  }
} catch (e) {
  console.error(`${e.message}\nusage: node bench/spread.mjs [--instances N] [--names N] [--seconds S] [--stagger MS,MS] [--lease MS]`);
  process.exit(2);
}
const instances = Number(values.instances);
const names = Number(values.names);
const seconds = Number(values.seconds);
const lease = Number(values.lease);
const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function scenario(stagger) {
  const schema = `ll_spread_${randomBytes(4).toString('hex')}`;
  const procs = [];
  const t0 = Date.now();
  let changes = 0;
  const start = (i) => {
    const led = new Set();
    const child = spawn(process.execPath, [fixture], {
      env: {
        ...process.env,
        DATABASE_URL,
        LL_SCHEMA: schema,
        LL_INSTANCE: `i${i}`,
        LL_JOB_MS: '0',
        LL_NAMES: String(names),
        LL_LEASE: String(lease),
        LL_RENEWAL: String(Math.round(lease / 6)),
        LL_JITTER: String(Math.round(lease / 15)),
        LL_DISCOVERY: String(4 * lease), // the default: 4 x leaseDuration
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let buf = '';
    child.stdout.on('data', (d) => {
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
        if (e.event === 'elected') {
          if (!led.has(e.name)) changes++;
          led.add(e.name);
        }
        if (e.event === 'revoked') led.delete(e.name);
      }
    });
    procs.push({ child, led });
  };
  let balancedAt = null;
  let allLedAt = null;
  let after = 0;
  let balancedAfter = 0;
  const samples = [];
  for (let i = 0; i < instances; i++) {
    if (i > 0 && stagger > 0) await sleep(stagger);
    start(i);
  }
  const end = t0 + seconds * 1000;
  while (Date.now() < end) {
    await sleep(250);
    const per = procs.map((p) => p.led.size);
    const total = per.reduce((a, b) => a + b, 0);
    samples.push(per);
    if (process.env.SPREAD_TRACE && samples.length % 4 === 0) {
      console.error(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${per.join(' / ')}`);
    }
    const allUp = procs.length === instances;
    if (allUp && total === names) allLedAt ??= Date.now() - t0;
    const balanced = allUp && total === names && Math.max(...per) - Math.min(...per) <= 1;
    if (balanced) balancedAt ??= Date.now() - t0;
    if (balancedAt !== null) {
      after++;
      if (balanced) balancedAfter++;
    }
  }
  const final = procs.map((p) => p.led.size);
  for (const p of procs) p.child.kill('SIGTERM');
  await Promise.all(procs.map((p) => new Promise((r) => (p.child.exitCode !== null ? r() : p.child.on('exit', r)))));
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
  return { stagger, final, balancedAt, allLedAt, changes, share: after > 0 ? balancedAfter / after : 0 };
}

const results = [];
for (const s of values.stagger.split(',').map(Number)) results.push(await scenario(s));
console.log(
  `| start | names led per instance after ${seconds} s | every name led (all instances started) | first balanced (max - min <= 1) | balanced from then on | moves |`,
);
console.log('|---|---|---:|---:|---:|---:|');
const s = (ms) => (ms === null ? 'never' : `${(ms / 1000).toFixed(1)} s`);
for (const r of results) {
  const start = r.stagger === 0 ? 'together' : `${r.stagger / 1000} s apart`;
  const after = r.balancedAt === null || r.allLedAt === null ? '' : ` (${s(r.balancedAt - r.allLedAt)} later)`;
  console.log(
    `| ${start} | ${r.final.join(' / ')} | ${s(r.allLedAt)} | ${s(r.balancedAt)}${after} | ${(100 * r.share).toFixed(0)} % of the time | ${r.changes - names} |`,
  );
}
console.log('\n(times from the first start; moves: leaderships taken beyond the first one of each name)');
