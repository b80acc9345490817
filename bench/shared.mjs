// Transactions per second of P processes that each run the same N elections (lock ids shared by all
// processes: one leader and P - 1 followers per election), counted by the server.
//
//   node bench/shared.mjs [--procs 10] [--elections 50] [--seconds 60] [--warmup 15] [--lease MS]
//                         [--renew MS] [--jitter MS] [--from-start] [--json]
// --from-start counts from before the first process starts (the start-up's acquisitions included).
//
// Each process: bench/electors.mjs's makeMany (`LeaderElectorCore.connect` per lock id), with the library's
// default timings unless given, on its own connections (application_name marks
// them). The count is pg_stat_database's xact_commit + xact_rollback of a database of its own, created for
// the run and dropped after it, read after a warm-up and again after the window (the server's statistics
// are flushed within a second; the window's two reads bracket it), minus the reads' own transactions.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from '../node_modules/pg/lib/index.js';

import { makeMany } from './electors.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};

if (process.argv[2] === '--child') {
  const { url, n, id, schema, timings } = JSON.parse(process.argv[3]);
  const electors = await makeMany('leaderlease', url, `shared-${id}`, schema, { ...timings, instanceId: `p${id}` }, n, 1000, undefined, 10);
  process.send({ type: 'ready' });
  process.on('message', (m) => {
    if (m.cmd === 'stats') process.send({ type: 'stats', leaders: electors.filter((e) => e.amILeader()).length });
  });
  process.on('disconnect', () => process.exit(0));
} else {
  const procs = Number(arg('procs', 10));
  const n = Number(arg('elections', 50));
  const seconds = Number(arg('seconds', 60));
  const warmup = Number(arg('warmup', 15));
  const timings = {};
  for (const [flag, key] of [['lease', 'leaseDuration'], ['renew', 'renewalInterval'], ['jitter', 'jitterRange']]) {
    if (arg(flag) !== undefined) timings[key] = Number(arg(flag));
  }
  const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const db = `ll_shared_${process.pid}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const url = base.replace(/\/[^/?]*(\?|$)/, `/${db}$1`);
  const stats = new pg.Client({ connectionString: url });
  await stats.connect();
  const children = [];
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const fromStart = process.argv.includes('--from-start');
  const read = async () => {
    const r = await stats.query('SELECT xact_commit + xact_rollback AS x FROM pg_stat_database WHERE datname = current_database()');
    return Number(r.rows[0].x);
  };
  let x0 = 0;
  let t0 = Date.now();
  try {
    if (fromStart) {
      x0 = await read();
      t0 = Date.now();
    }
    for (let id = 0; id < procs; id++) {
      const c = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify({ url, n, id, schema: 'shared', timings })]);
      children.push(c);
      await new Promise((res, rej) => {
        c.once('message', res);
        c.once('exit', (code) => rej(new Error(`child ${id} exited ${code}`)));
      });
    }
    if (!fromStart) {
      await sleep(warmup * 1000 + 1200);
      x0 = await read();
      t0 = Date.now();
    }
    await sleep(seconds * 1000 + 1200);
    const x1 = await read();
    const ms = Date.now() - t0 - 1200;
    const leaders = await Promise.all(
      children.map((c) => new Promise((res) => { c.once('message', (m) => res(m.leaders)); c.send({ cmd: 'stats' }); })),
    );
    const tps = (x1 - x0 - 1) / (ms / 1000);
    const out = { procs, elections: n, seconds, ...timings, transactions: x1 - x0 - 1, tps: Number(tps.toFixed(1)), leaders: leaders.reduce((a, b) => a + b, 0) };
    if (process.argv.includes('--json')) console.log(JSON.stringify(out));
    else console.log(`${procs} processes x ${n} shared elections: ${out.tps} transactions/s over ${seconds} s (${out.leaders} leaders)`);
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await sleep(500);
    await stats.end();
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
  }
}
