// The published packages, end to end: `npm pack` in this checkout (the package, which ships no binary,
// with the platform packages pinned as the release pins them)
// and of this machine's platform packages (npm/<platform>/ with the addon, npm/cli-<platform>/ with the
// command line), all installed into a fresh NestJS 12 app outside the repository with no Rust toolchain on PATH, then a
// CommonJS Nest app that elects a leader through TypeORM, an ES module that imports the named exports,
// and a type check of the shipped `.d.ts` files.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve, sep } from 'node:path';
import { test } from 'node:test';

import { DATABASE_URL, dropSchema, randomSchema } from './helpers.js';
import { HOST_PLATFORM, packPackage, packPlatform } from './packed-app.js';

const REPO = resolve(__dirname, '..');
/** The platform package and what it ships: the addon. */
const PLATFORM_PACKAGE = `leaderlease-${HOST_PLATFORM}`;
const ADDON = `leaderlease.${HOST_PLATFORM}.node`;
/** The command line's package and what it ships: the binary (scripts/build-cli.sh) that dist/cli.js (ts/cli.ts) runs. */
const CLI_PACKAGE = `leaderlease-cli-${HOST_PLATFORM}`;
const CLI = 'leaderlease';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd args` in `cwd` with `env`; kills it after `timeoutMs`. */
function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

function describe(what: string, r: Run): string {
  return `${what}: exit ${r.code ?? r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** Like {@link run}, and asserts that the command exited 0. */
async function ok(what: string, cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number) {
  const r = await run(cmd, args, cwd, env, timeoutMs);
  assert.equal(r.code, 0, describe(what, r));
  return r;
}

/** The environment without npm's per-run variables (set when the tests run under `npm test`). */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return env;
}

function which(name: string, path: string): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/**
 * A PATH on which no Rust toolchain is reachable: the directories holding `cargo`, `rustc` or `rustup`
 * are left out, and `shimDir` (links to this `node` and to `npm`) comes first so that both still run.
 */
function pathWithoutRust(shimDir: string): string {
  const path = process.env['PATH'] ?? '';
  const npm = which('npm', path);
  assert.ok(npm, 'npm is not on PATH');
  mkdirSync(shimDir);
  symlinkSync(process.execPath, join(shimDir, 'node'));
  symlinkSync(realpathSync(npm), join(shimDir, 'npm'));
  // With a Debian rustc (/usr/bin/rustc) /usr/bin is left out: keep sh, which runs scripts and the check below.
  const sh = which('sh', path);
  assert.ok(sh, 'sh is not on PATH');
  symlinkSync(realpathSync(sh), join(shimDir, 'sh'));
  const rust = ['cargo', 'rustc', 'rustup'];
  const kept = path.split(delimiter).filter((d) => d !== '' && !rust.some((t) => existsSync(join(d, t))));
  return [shimDir, ...kept].join(delimiter);
}

// The CommonJS app: plain JavaScript, decorators applied by hand, the original Quick Start's shape
// (TypeORM, LeaderElectorModule.forRoot with a schema), plus a provider that injects the service.
const APP_CJS = `'use strict';
require('reflect-metadata');
const path = require('node:path');
const { Injectable, Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const { TypeOrmModule } = require('@nestjs/typeorm');
const { LeaderElectorModule, LeaderElectorService } = require('leaderlease');

const resolved = require.resolve('leaderlease');
if (!resolved.startsWith(path.join(__dirname, 'node_modules') + path.sep)) {
  throw new Error('leaderlease resolved outside the app: ' + resolved);
}

class Reporter {
  constructor(elector) { this.elector = elector; }
  leading() { return this.elector.amILeader(); }
}
Injectable()(Reporter);
Reflect.defineMetadata('design:paramtypes', [LeaderElectorService], Reporter);

class AppModule {}
Module({
  imports: [
    TypeOrmModule.forRoot({ type: 'postgres', url: process.env.DATABASE_URL, autoLoadEntities: true }),
    LeaderElectorModule.forRoot({
      schema: process.env.LL_SCHEMA,
      leaseDuration: 1500,
      renewalInterval: 400,
      jitterRange: 200,
    }),
  ],
  providers: [Reporter],
})(AppModule);

async function main() {
  const app = await NestFactory.createApplicationContext(AppModule, { logger: ['error', 'warn'] });
  const reporter = app.get(Reporter);
  const deadline = Date.now() + 20000;
  while (!reporter.leading()) {
    if (Date.now() > deadline) throw new Error('not leader within 20 s');
    await new Promise((r) => setTimeout(r, 25));
  }
  console.log('cjs: leader');
  await app.close();
  console.log('cjs: closed');
}
main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
`;

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
  const packDir = mkdtempSync(join(tmpdir(), 'leaderlease-pack-'));
  const appDir = mkdtempSync(join(tmpdir(), 'leaderlease-app-'));
  const schema = randomSchema();
  const started = Date.now();
  const lap = (what: string) => t.diagnostic(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  try {
    assert.ok(!appDir.startsWith(REPO + sep), 'the app must live outside the repository');

    // 1. The tarball as published (the platform packages pinned as optionalDependencies), from what
    // scripts/test-node.sh built (LEADERLEASE_SKIP_BUILD: no rebuild here).
    const { tarball, files } = await packPackage(packDir);
    const required = ['package.json', 'dist/index.js', 'dist/index.d.ts', 'native/index.js', 'native/index.d.ts'];
    for (const f of [...required, 'dist/cli.js', 'dist/native.js']) {
      assert.ok(files.includes(f), `the tarball lacks ${f}: ${files.join(', ')}`);
    }
    for (const f of files) {
      assert.ok(!/^(crates|ts|tests|dist-tests|target|scripts|node_modules|npm)\//.test(f), `the tarball has ${f}`);
      // The binaries are in the platform packages, not here.
      assert.ok(!/\.node$|^native\/leaderlease-/.test(f), `the tarball has the binary ${f}`);
    }
    const platform = await packPlatform(packDir);
    assert.deepEqual(platform.files.sort(), ['README.md', ADDON, 'package.json'].sort());
    const cliPlatform = await packPlatform(packDir, `cli-${HOST_PLATFORM}`);
    assert.deepEqual(cliPlatform.files.sort(), ['README.md', CLI, 'package.json'].sort());
    lap('packed');

    // 2. A fresh app outside the repository, installed with no cargo/rustc reachable.
    const env = { ...cleanEnv(), PATH: pathWithoutRust(join(packDir, 'bin')), DATABASE_URL, LL_SCHEMA: schema };
    const noCargo = await run('sh', ['-c', 'command -v cargo || command -v rustc'], appDir, env, 10_000);
    assert.notEqual(noCargo.code, 0, `a Rust toolchain is still on PATH: ${noCargo.stdout}`);
    await ok('npm init', 'npm', ['init', '-y'], appDir, env, 60_000);
    await ok(
      'npm install',
      'npm',
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--prefer-offline',
        tarball,
        platform.tarball,
        cliPlatform.tarball,
        '@nestjs/common@^12',
        '@nestjs/core@^12',
        '@nestjs/typeorm@^12',
        'typeorm@^1',
        'pg@^8',
        'reflect-metadata@^0.2',
        'rxjs@^7',
      ],
      appDir,
      env,
      150_000,
    );
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
    const version = await ok('leaderlease --version', join(appDir, 'node_modules/.bin/leaderlease'), ['--version'], appDir, env, 30_000);
    assert.match(version.stdout, /^leaderlease \d+\.\d+\.\d+/, describe('leaderlease --version', version));
    // ... and its commands: migrate, run (the exit status passed through, the lease released), status.
    const bin = join(appDir, 'node_modules/.bin/leaderlease');
    const where = ['--url', DATABASE_URL, '--schema', schema];
    await ok('leaderlease migrate up', bin, ['migrate', 'up', ...where], appDir, env, 30_000);
    const ran = await run(bin, ['run', ...where, '--lock-id', '5', '--lease', '2s', '--', 'sh', '-c', 'exit 6'], appDir, env, 30_000);
    assert.equal(ran.code, 6, describe('leaderlease run', ran));
    const status = await ok('leaderlease status', bin, ['status', ...where, '--json'], appDir, env, 30_000);
    assert.deepEqual((JSON.parse(status.stdout) as { leases: unknown[] }).leases, [], describe('leaderlease status', status));
    lap('installed');

    // 3. CommonJS: the Nest app elects itself through TypeORM, closes, and exits by itself.
    writeFileSync(join(appDir, 'app.cjs'), APP_CJS);
    const cjs = await ok('node app.cjs', 'node', ['app.cjs'], appDir, env, 60_000);
    assert.match(cjs.stdout, /cjs: leader\ncjs: closed/, describe('node app.cjs', cjs));
    lap('CommonJS app');

    // 4. ES module: named exports, upSql, an election from a connection string.
    writeFileSync(join(appDir, 'check.mjs'), CHECK_MJS);
    const esm = await ok('node check.mjs', 'node', ['check.mjs'], appDir, env, 60_000);
    assert.match(esm.stdout, /esm: leader/, describe('node check.mjs', esm));
    lap('ES module');

    // 5. The .d.ts files, with this repository's TypeScript (and its @types/node).
    writeFileSync(join(appDir, 'types.ts'), TYPES_TS);
    writeFileSync(join(appDir, 'types.mts'), TYPES_TS);
    writeFileSync(join(appDir, 'tsconfig.json'), TSCONFIG(join(REPO, 'node_modules/@types')));
    await ok('tsc', 'node', [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], appDir, env, 60_000);
    lap('types');
  } finally {
    await dropSchema(schema);
    rmSync(packDir, { recursive: true, force: true });
    rmSync(appDir, { recursive: true, force: true });
  }
});
