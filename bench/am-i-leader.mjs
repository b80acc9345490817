// Cost of amILeader() per call from JavaScript, against a plain JS function and the raw native call.
// Usage: npm run build && node bench/am-i-leader.mjs   (DATABASE_URL, else 127.0.0.1:5432/test)
import { LeaderElectorCore } from '../dist/index.js';
import native from '../native/index.js';

const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `bench_${process.pid}`;
const elector = await LeaderElectorCore.connect(url, { schema, lockId: 1 });
while (!elector.amILeader()) await new Promise((r) => setTimeout(r, 10));

function measure(name, fn, n = 5_000_000) {
  for (let i = 0; i < 100_000; i++) fn(); // warm-up
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const t0 = process.hrtime.bigint();
    let yes = 0;
    for (let i = 0; i < n; i++) if (fn()) yes++;
    const ns = Number(process.hrtime.bigint() - t0) / n;
    if (yes !== n && name !== 'plain JS function') throw new Error(`${name} said false while leading`);
    best = Math.min(best, ns);
  }
  console.log(`${name.padEnd(28)} ${best.toFixed(1)} ns/call (best of 5 x ${n})`);
}

// The raw native call, for comparison: what amILeader() would cost if it asked the native side each time
// (it reads the native step-down counter from shared memory instead).
// maxEventLoopStall 0: nothing beats this raw elector's event loop check.
const raw = await native.Elector.connect(url, { schema, lockId: 2, maxEventLoopStall: 0 });
while (!raw.isLeader()) await new Promise((r) => setTimeout(r, 10));

let flag = true;
measure('plain JS function', () => flag);
measure('amILeader()', () => elector.amILeader());
measure('native isLeader() call', () => raw.isLeader(), 1_000_000);
await elector.shutdown();
await raw.shutdown();
const { Client } = await import('pg');
const c = new Client({ connectionString: url });
await c.connect();
await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
await c.end();
