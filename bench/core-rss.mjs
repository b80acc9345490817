// Resident memory of a one-election candidate process, by how it loads leaderlease, against bare Node.
//
//   node bench/core-rss.mjs [--runs 5] [--hold 3000] [--url postgres://...] [--dist DIR]
//
// Each variant runs `--runs` times in a fresh process: it starts one election (its own schema), waits
// until it leads, holds the lease `--hold` ms (several renewals), then reports process.memoryUsage().rss
// and which of NestJS, TypeORM and rxjs it loaded. "bare Node" runs a timer for the same time. The
// median RSS per variant is printed, and the difference from bare Node. Uses this checkout's build
// (dist/, native/; --dist: another build of the TypeScript, e.g. an older commit's, inside the repository)
// and the repository's node_modules (NestJS 12, TypeORM 1, rxjs 7 installed). A build without
// dist/core.js skips the leaderlease/core row.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import pg from 'pg';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    hold: { type: 'string', default: '3000' },
    url: { type: 'string', default: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test' },
    dist: { type: 'string' },
  },
});
const runs = Number(args.runs);
const holdMs = Number(args.hold);
const url = args.url;
const dist = args.dist ? resolve(args.dist) : join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');

// Preloaded with --require: records every file require() resolves (CommonJS, or an ES module such as
// NestJS 12 loaded through require(), which require.cache does not list); heavy() names the heavy packages.
const TRACE = `'use strict';
const Module = require('node:module');
const resolved = new Set();
const resolve = Module._resolveFilename;
Module._resolveFilename = function (...args) {
  const file = resolve.apply(this, args);
  resolved.add(file);
  return file;
};
globalThis.heavy = () => [...new Set([...resolved, ...Object.keys(require.cache)]
  .map((f) => /[\\\\/]node_modules[\\\\/](@nestjs[\\\\/][^\\\\/]+|typeorm|rxjs)[\\\\/]/.exec(f)?.[1])
  .filter(Boolean))].sort();
`;
const tmp = mkdtempSync(join(tmpdir(), 'leaderlease-rss-'));
const tracePath = join(tmp, 'trace.cjs');
writeFileSync(tracePath, TRACE);

const ELECT = (getCore) => `
(async () => {
  const LeaderElectorCore = ${getCore};
  const core = await LeaderElectorCore.connect(process.env.URL, {
    schema: process.env.SCHEMA, leaseDuration: 1500, renewalInterval: 400, jitterRange: 200,
  });
  while (!core.amILeader()) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, ${holdMs}));
  const rss = process.memoryUsage().rss;
  await core.shutdown();
  process.stdout.write(JSON.stringify({ rss, heavy: heavy() }));
})();`;

const VARIANTS = [
  {
    name: 'bare Node (a timer, no package)',
    type: 'commonjs',
    code: `
setTimeout(() => process.stdout.write(JSON.stringify({ rss: process.memoryUsage().rss, heavy: heavy() })), ${holdMs});`,
  },
  {
    name: "leaderlease/core: require('leaderlease/core')",
    type: 'commonjs',
    needs: 'core.js',
    code: `${ELECT(`require(${JSON.stringify(join(dist, 'core.js'))}).LeaderElectorCore`)}`,
  },
  {
    name: "leaderlease, CommonJS: require('leaderlease').LeaderElectorCore",
    type: 'commonjs',
    code: `${ELECT(`require(${JSON.stringify(join(dist, 'index.js'))}).LeaderElectorCore`)}`,
  },
  {
    name: "leaderlease, ES module: import { LeaderElectorCore } from 'leaderlease'",
    type: 'module',
    code: `import { LeaderElectorCore as Core } from ${JSON.stringify(join(dist, 'index.js'))};
${ELECT('Core')}`,
  },
];

function once(variant, schema) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--require', tracePath, '--input-type', variant.type, '-e', variant.code], {
      env: { ...process.env, URL: url, SCHEMA: schema },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${variant.name}: exit ${code}`))));
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mb = (bytes) => (bytes / 1024 / 1024).toFixed(1);

const client = new pg.Client({ connectionString: url });
await client.connect();
const results = [];
try {
  for (const variant of VARIANTS) {
    if (variant.needs && !existsSync(join(dist, variant.needs))) continue;
    const rss = [];
    let heavy = [];
    for (let i = 0; i < runs; i++) {
      const schema = `ll_rss_${randomBytes(4).toString('hex')}`;
      try {
        const r = await once(variant, schema);
        rss.push(r.rss);
        heavy = r.heavy;
      } finally {
        await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      }
    }
    results.push({ name: variant.name, rss: median(rss), min: Math.min(...rss), max: Math.max(...rss), heavy });
  }
} finally {
  await client.end();
  rmSync(tmp, { recursive: true, force: true });
}

const bare = results[0].rss;
console.log(`${dist}, node ${process.version}, ${runs} runs per variant, RSS after leading for ${holdMs} ms (median, min-max)`);
console.log('| process | RSS MB (median) | min-max | more than bare Node, MB | NestJS / TypeORM / rxjs loaded |');
console.log('|---|---:|---:|---:|---|');
for (const r of results) {
  const extra = r === results[0] ? '' : `+${mb(r.rss - bare)}`;
  console.log(`| ${r.name} | ${mb(r.rss)} | ${mb(r.min)}-${mb(r.max)} | ${extra} | ${r.heavy.join(', ') || 'none'} |`);
}
