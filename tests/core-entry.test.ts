// `leaderlease/core` from the installed package: CommonJS and ES module imports elect a leader and load
// none of NestJS, TypeORM or rxjs, although all three are installed in the app; the full entry, for
// contrast, does load them (so the check can see them). And the entry's types.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { dropSchema, randomSchema } from './helpers.js';
import { REPO, installApp, ok, pack } from './packed-app.js';

// Preloaded with --require: records every file that require() resolves, whether CommonJS or an ES module
// loaded through require() (NestJS 12 is ES modules, which require.cache does not list). The package is
// CommonJS, so whatever it loads starts with a require(); the scripts import nothing heavy themselves.
const TRACE_CJS = `'use strict';
const Module = require('node:module');
const resolved = new Set();
const resolve = Module._resolveFilename;
Module._resolveFilename = function (...args) {
  const file = resolve.apply(this, args);
  resolved.add(file);
  return file;
};
globalThis.heavyLoaded = function () {
  const found = new Set();
  for (const file of [...resolved, ...Object.keys(require.cache)]) {
    const m = /[\\\\/]node_modules[\\\\/](@nestjs[\\\\/][^\\\\/]+|typeorm|rxjs)[\\\\/]/.exec(file);
    if (m) found.add(m[1].replace(/\\\\/g, '/'));
  }
  return [...found].sort();
};
`;

const ELECT = `async function elect(LeaderElectorCore) {
  const core = await LeaderElectorCore.connect(process.env.DATABASE_URL, {
    schema: process.env.LL_SCHEMA, leaseDuration: 1500, renewalInterval: 400, jitterRange: 200,
  });
  const deadline = Date.now() + 20000;
  while (!core.amILeader()) {
    if (Date.now() > deadline) throw new Error('not leader within 20 s');
    await new Promise((r) => setTimeout(r, 25));
  }
  const term = core.term();
  await core.shutdown();
  return term;
}`;

const CORE_CJS = `'use strict';
${ELECT}
const core = require('leaderlease/core');
const atImport = heavyLoaded();
for (const name of ['LeaderElectorCore', 'LeaderElectionError', 'LeaderElectionConfigError', 'TableMissingError', 'errorCodes', 'upSql']) {
  if (typeof core[name] !== 'function') throw new Error(name + ' is ' + typeof core[name]);
}
for (const name of ['LeaderElectorModule', 'LeaderElectorService', 'LeaderLease', 'LeaderElectionMigrationBase']) {
  if (name in core) throw new Error('leaderlease/core exports ' + name);
}
elect(core.LeaderElectorCore).then((term) => {
  console.log(JSON.stringify({ term, atImport, afterElection: heavyLoaded(), file: require.resolve('leaderlease/core') }));
}, (err) => { console.error(err); process.exitCode = 1; });
`;

const CORE_MJS = `import { createRequire } from 'node:module';
import { LeaderElectorCore, LeaderElectionError, errorCodes } from 'leaderlease/core';
${ELECT}
const require = createRequire(import.meta.url);
if (typeof LeaderElectionError !== 'function' || !errorCodes().includes('ERR_INVALID_CONFIG')) throw new Error('bad exports');
const atImport = heavyLoaded();
const term = await elect(LeaderElectorCore);
console.log(JSON.stringify({ term, atImport, afterElection: heavyLoaded() }));
`;

const FULL_CJS = `'use strict';
const { LeaderElectorModule } = require('leaderlease');
const atImport = heavyLoaded();
LeaderElectorModule.forRoot({ connectionString: process.env.DATABASE_URL });
console.log(JSON.stringify({ atImport, afterForRoot: heavyLoaded() }));
`;

const TYPES_TS = `import { LeaderElectorCore, LeaderElectionConfigError, type LeaderElectorConfig, type LeaderStatus } from 'leaderlease/core';

const config: LeaderElectorConfig = { lockId: 3, schema: 's' };
// @ts-expect-error leaseDuration is a number of milliseconds
export const bad: LeaderElectorConfig = { leaseDuration: 'long' };
export const code: 'ERR_INVALID_CONFIG' | 'ERR_TIMEOUT' = new LeaderElectionConfigError('x').code === 'ERR_TIMEOUT' ? 'ERR_TIMEOUT' : 'ERR_INVALID_CONFIG';
// @ts-expect-error codes are the listed ones
export const notACode: typeof LeaderElectionConfigError.prototype.code = 'ERR_NOPE';
export async function state(url: string): Promise<LeaderStatus['state']> {
  const core: LeaderElectorCore = await LeaderElectorCore.connect(url, config);
  await core.shutdown();
  // @ts-expect-error amILeader() is a boolean
  const s: string = core.amILeader();
  return s === '' ? 'stopped' : core.status().state;
}
`;

test('leaderlease/core, installed, elects from CJS and ESM and loads no NestJS, TypeORM or rxjs', async (t) => {
  const started = Date.now();
  const lap = (what: string) => t.diagnostic(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const schema = randomSchema();
  const packed = await pack();
  try {
    for (const f of ['dist/core.js', 'dist/core.d.ts', 'migrations/0001_leader_lease.up.sql', 'migrations/0001_leader_lease.down.sql']) {
      assert.ok(packed.files.includes(f), `the tarball lacks ${f}`);
    }
    const app = await installApp(packed, [
      '@nestjs/common@^12',
      '@nestjs/core@^12',
      '@nestjs/typeorm@^12',
      'typeorm@^1',
      'pg@^8',
      'reflect-metadata@^0.2',
      'rxjs@^7',
    ]);
    try {
      lap('packed and installed');
      const env = { ...packed.env, LL_SCHEMA: schema };
      writeFileSync(join(app.dir, 'trace.cjs'), TRACE_CJS);
      const node = async (file: string, source: string) => {
        writeFileSync(join(app.dir, file), source);
        const r = await ok(`node ${file}`, 'node', ['--require', './trace.cjs', file], app.dir, env, 60_000);
        return JSON.parse(r.stdout) as Record<string, any>;
      };

      const cjs = await node('core.cjs', CORE_CJS);
      assert.equal(cjs['file'], join(app.dir, 'node_modules/leaderlease/dist/core.js'));
      assert.ok(cjs['term'] >= 1, `no term: ${JSON.stringify(cjs)}`);
      assert.deepEqual(cjs['atImport'], [], 'require("leaderlease/core") loaded them');
      assert.deepEqual(cjs['afterElection'], [], 'an election through leaderlease/core loaded them');

      const esm = await node('core.mjs', CORE_MJS);
      assert.ok(esm['term'] > cjs['term'], `terms: ${cjs['term']}, ${esm['term']}`);
      assert.deepEqual(esm['atImport'], [], 'import "leaderlease/core" loaded them');
      assert.deepEqual(esm['afterElection'], []);

      // The contrast: the full entry loads TypeORM (for its entity), its NestJS module NestJS (Nest 12 is ES
      // modules: seen by the trace, not in require.cache).
      const full = await node('full.cjs', FULL_CJS);
      assert.ok(full['atImport'].includes('typeorm'), JSON.stringify(full));
      assert.ok(full['afterForRoot'].includes('@nestjs/core'), JSON.stringify(full));
      lap('CJS, ESM and the full entry');

      // The types, from CommonJS and ES module sources, with this repository's TypeScript.
      writeFileSync(join(app.dir, 'types.ts'), TYPES_TS);
      writeFileSync(join(app.dir, 'types.mts'), TYPES_TS);
      writeFileSync(
        join(app.dir, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            module: 'nodenext',
            moduleResolution: 'nodenext',
            target: 'es2022',
            strict: true,
            noEmit: true,
            skipLibCheck: true,
            types: ['node'],
            typeRoots: [join(REPO, 'node_modules/@types')],
          },
          files: ['types.ts', 'types.mts'],
        }),
      );
      await ok('tsc', 'node', [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], app.dir, env, 60_000);
      lap('types');
    } finally {
      app.close();
    }
  } finally {
    packed.close();
    await dropSchema(schema);
  }
});
