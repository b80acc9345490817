// The published packages, end to end: `npm pack` in this checkout (the package, which ships no binary,
// with the platform packages pinned as the release pins them)
// and of this machine's platform packages (npm/<platform>/ with the addon, npm/cli-<platform>/ with the
// command line), all installed into a fresh NestJS 12 app outside the repository with no Rust toolchain on PATH, then a
// CommonJS Nest app that elects a leader through TypeORM, an ES module that imports the named exports,
// and a type check of the shipped `.d.ts` files. Packing and installing: tests/packed-app.ts.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { DATABASE_URL, dropSchema, randomSchema } from './helpers.js';
import { HOST_PLATFORM, NEST_APP_CJS, REPO, describeRun, installApp, ok, pack, run } from './packed-app.js';

/** The platform package and what it ships: the addon. */
const PLATFORM_PACKAGE = `leaderlease-${HOST_PLATFORM}`;
const ADDON = `leaderlease.${HOST_PLATFORM}.node`;
/** The command line's package and what it ships: the binary (scripts/build-cli.sh) that dist/cli.js (ts/cli.ts) runs. */
const CLI_PACKAGE = `leaderlease-cli-${HOST_PLATFORM}`;
const CLI = 'leaderlease';

// The ES module: named imports (a missing one fails at link time), the SQL from the addon, and an
// election from a plain connection string.
const CHECK_MJS = `import {
  LeaderElectorCore,
  LeaderElectorModule,
  LeaderElectorService,
  LeaderGuard,
  LeaderLease,
  LeaderOnly,
  LeaderElectionMigrationBase,
  TableMissingError,
  errorCodes,
  upSql,
} from 'leaderlease';

for (const [name, value] of Object.entries({
  LeaderElectorCore, LeaderElectorModule, LeaderElectorService, LeaderGuard, LeaderLease, LeaderOnly,
  LeaderElectionMigrationBase, TableMissingError, errorCodes, upSql,
})) {
  if (typeof value !== 'function') throw new Error(name + ' is ' + typeof value);
}
if (typeof LeaderElectorModule.forRoot !== 'function') throw new Error('no LeaderElectorModule.forRoot');
const sql = upSql('x');
if (!sql.includes('leader_lease')) throw new Error('upSql("x") has no leader_lease: ' + sql);

const core = await LeaderElectorCore.connect(process.env.DATABASE_URL, {
  schema: process.env.LL_SCHEMA,
  leaseDuration: 1500,
  renewalInterval: 400,
  jitterRange: 200,
});
const deadline = Date.now() + 20000;
while (!core.amILeader()) {
  if (Date.now() > deadline) throw new Error('not leader within 20 s');
  await new Promise((r) => setTimeout(r, 25));
}
console.log('esm: leader');
await core.shutdown();
`;

// The shipped types, from CommonJS and from ES module sources: each @ts-expect-error fails the check
// if the declarations are missing (everything would be \`any\`) or wrong.
const TYPES_TS = `import { LeaderElectorCore, LeaderElectorModule, LeaderElectorService, upSql } from 'leaderlease';

export const sql: string = upSql('x');
// @ts-expect-error the schema is a string
upSql(1);
export const mod = LeaderElectorModule.forRoot({ schema: 's', leaseDuration: 1500 });
// @ts-expect-error leaseDuration is a number of milliseconds
LeaderElectorModule.forRoot({ leaseDuration: 'long' });
export async function leading(svc: LeaderElectorService, url: string): Promise<boolean> {
  const core: LeaderElectorCore = await LeaderElectorCore.connect(url, { schema: 's' });
  await core.shutdown();
  // @ts-expect-error amILeader() is a boolean
  const s: string = svc.amILeader();
  return svc.amILeader() && s === '';
}
`;

const TSCONFIG = (typeRoots: string) =>
  JSON.stringify(
    {
      compilerOptions: {
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
        typeRoots: [typeRoots],
      },
      files: ['types.ts', 'types.mts'],
    },
    null,
    2,
  );

test('the npm tarball installs into a fresh NestJS app with no Rust toolchain and runs from CJS and ESM', async (t) => {
  const schema = randomSchema();
  const started = Date.now();
  const lap = (what: string) => t.diagnostic(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  // 1. The tarballs as published (the platform packages pinned as optionalDependencies), from what
  // scripts/test-node.sh built (no rebuild here).
  const packed = await pack();
  let app: { dir: string; close(): void } | undefined;
  try {
    const files = packed.files;
    const required = ['package.json', 'dist/index.js', 'dist/index.d.ts', 'native/index.js', 'native/index.d.ts'];
    for (const f of [...required, 'dist/cli.js', 'dist/native.js']) {
      assert.ok(files.includes(f), `the tarball lacks ${f}: ${files.join(', ')}`);
    }
    for (const f of files) {
      assert.ok(!/^(crates|ts|tests|dist-tests|target|scripts|node_modules|npm)\//.test(f), `the tarball has ${f}`);
      // The binaries are in the platform packages, not here.
      assert.ok(!/\.node$|^native\/leaderlease-/.test(f), `the tarball has the binary ${f}`);
    }
    assert.deepEqual([...packed.platformFiles].sort(), ['README.md', ADDON, 'package.json'].sort());
    assert.deepEqual([...packed.cliFiles].sort(), ['README.md', CLI, 'package.json'].sort());
    lap('packed');

    // 2. A fresh app outside the repository, installed with no cargo/rustc reachable.
    const env = { ...packed.env, LL_SCHEMA: schema };
    const noCargo = await run('sh', ['-c', 'command -v cargo || command -v rustc'], REPO, env, 10_000);
    assert.notEqual(noCargo.code, 0, `a Rust toolchain is still on PATH: ${noCargo.stdout}`);
    app = await installApp(packed, [
      '@nestjs/common@^12',
      '@nestjs/core@^12',
      '@nestjs/typeorm@^12',
      'typeorm@^1',
      'pg@^8',
      'reflect-metadata@^0.2',
      'rxjs@^7',
    ]);
    const appDir = app.dir;
    assert.ok(existsSync(join(appDir, 'node_modules', PLATFORM_PACKAGE, ADDON)), 'the addon was not installed');
    assert.ok(existsSync(join(appDir, 'node_modules', CLI_PACKAGE, CLI)), 'the command line was not installed');
    // The package records the platform packages as optional dependencies (the generated loader requires them).
    const manifest = require(join(appDir, 'node_modules/leaderlease/package.json')) as {
      version: string;
      optionalDependencies?: Record<string, string>;
    };
    assert.equal(manifest.optionalDependencies?.[PLATFORM_PACKAGE], manifest.version);
    assert.equal(manifest.optionalDependencies?.[CLI_PACKAGE], manifest.version);
    // `npx leaderlease`: the bin runs the Rust command line of the installed leaderlease-cli-<platform>.
    const bin = join(appDir, 'node_modules/.bin/leaderlease');
    const version = await ok('leaderlease --version', bin, ['--version'], appDir, env, 30_000);
    assert.match(version.stdout, /^leaderlease \d+\.\d+\.\d+/, describeRun('leaderlease --version', version));
    // ... and its commands: migrate, run (the exit status passed through, the lease released), status.
    const where = ['--url', DATABASE_URL, '--schema', schema];
    await ok('leaderlease migrate up', bin, ['migrate', 'up', ...where], appDir, env, 30_000);
    const ran = await run(bin, ['run', ...where, '--lock-id', '5', '--lease', '2s', '--', 'sh', '-c', 'exit 6'], appDir, env, 30_000);
    assert.equal(ran.code, 6, describeRun('leaderlease run', ran));
    const status = await ok('leaderlease status', bin, ['status', ...where, '--json'], appDir, env, 30_000);
    assert.deepEqual((JSON.parse(status.stdout) as { leases: unknown[] }).leases, [], describeRun('leaderlease status', status));
    lap('installed');

    // 3. CommonJS: the Nest app (it checks that it loads the installed package) elects itself through
    // TypeORM, closes, and exits by itself.
    writeFileSync(join(appDir, 'app.cjs'), NEST_APP_CJS);
    const cjs = await ok('node app.cjs', 'node', ['app.cjs'], appDir, env, 60_000);
    assert.match(cjs.stdout, /nest: leader, term [1-9]\d*\nnest: closed/, describeRun('node app.cjs', cjs));
    lap('CommonJS app');

    // 4. ES module: named exports, upSql, an election from a connection string.
    writeFileSync(join(appDir, 'check.mjs'), CHECK_MJS);
    const esm = await ok('node check.mjs', 'node', ['check.mjs'], appDir, env, 60_000);
    assert.match(esm.stdout, /esm: leader/, describeRun('node check.mjs', esm));
    lap('ES module');

    // 5. The .d.ts files, with this repository's TypeScript (and its @types/node).
    writeFileSync(join(appDir, 'types.ts'), TYPES_TS);
    writeFileSync(join(appDir, 'types.mts'), TYPES_TS);
    writeFileSync(join(appDir, 'tsconfig.json'), TSCONFIG(join(REPO, 'node_modules/@types')));
    await ok('tsc', 'node', [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], appDir, env, 60_000);
    lap('types');
  } finally {
    await dropSchema(schema);
    app?.close();
    packed.close();
  }
});
