// The published package as a user gets it: `npm pack` of this checkout, installed from the registry with
// the peers a test names into a fresh app outside the repository, with no Rust toolchain on PATH.
// Shared by the tests that run apps on the installed package (core-entry, peers).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve, sep } from 'node:path';

import { currentPlatform } from '../dist/native.js';
import { DATABASE_URL } from './helpers.js';

export const REPO = resolve(__dirname, '..');

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd args` in `cwd` with `env`; kills it after `timeoutMs`. */
export function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Run> {
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

export function describeRun(what: string, r: Run): string {
  return `${what}: exit ${r.code ?? r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** Like {@link run}, and asserts that the command exited 0. */
export async function ok(what: string, cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number) {
  const r = await run(cmd, args, cwd, env, timeoutMs);
  assert.equal(r.code, 0, describeRun(what, r));
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
 * are left out (with a Debian rustc that is /usr/bin), and `shimDir` (links to this `node`, to `npm` and
 * to `sh`, which runs the packages' install scripts) comes first so that they still run.
 */
function pathWithoutRust(shimDir: string): string {
  const path = process.env['PATH'] ?? '';
  const npm = which('npm', path);
  assert.ok(npm, 'npm is not on PATH');
  mkdirSync(shimDir);
  symlinkSync(process.execPath, join(shimDir, 'node'));
  symlinkSync(realpathSync(npm), join(shimDir, 'npm'));
  const sh = which('sh', path);
  assert.ok(sh, 'sh is not on PATH');
  symlinkSync(realpathSync(sh), join(shimDir, 'sh'));
  const rust = ['cargo', 'rustc', 'rustup'];
  const kept = path.split(delimiter).filter((d) => d !== '' && !rust.some((t) => existsSync(join(d, t))));
  return [shimDir, ...kept].join(delimiter);
}

/** This machine's platform tag (napi-rs's, e.g. `linux-x64-gnu`): the platform package the tests pack. */
export const HOST_PLATFORM = currentPlatform().tag;

/**
 * A platform package for this machine as the release publishes it: `platform` (default
 * npm/<this platform>/, the addon) or `cli-<platform>` (npm/cli-<platform>/, the command line), filled by
 * scripts/stage-platform.sh from what this checkout built in a copy under `dir`, then `npm pack`. Returns
 * the tarball and the files in it.
 */
export async function packPlatform(dir: string, platform = HOST_PLATFORM): Promise<{ tarball: string; files: string[] }> {
  const stage = join(dir, `stage-${platform}`);
  await ok('stage-platform.sh', 'bash', [join(REPO, 'scripts/stage-platform.sh'), platform, stage], REPO, cleanEnv(), 60_000);
  const packed = await ok('npm pack (platform package)', 'npm', ['pack', '--json', '--pack-destination', dir], stage, cleanEnv(), 120_000);
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  assert.ok(info, 'npm pack reported no platform tarball');
  return { tarball: join(dir, info.filename), files: info.files.map((f) => f.path) };
}

/** The tarballs of this checkout (the package and this machine's platform package) and the environment apps run in; `close()` removes both. */
export interface Packed {
  tarball: string;
  /** The platform package's tarball (npm/<platform>/, the addon). */
  platformTarball: string;
  /** The command line's package's tarball (npm/cli-<platform>/). */
  cliTarball: string;
  /** The files in each tarball. */
  files: string[];
  platformFiles: string[];
  cliFiles: string[];
  env: NodeJS.ProcessEnv;
  close(): void;
}

/**
 * The package's tarball as the release publishes it: `npm pack` of this checkout, from what is built
 * (LEADERLEASE_SKIP_BUILD: no rebuild here; the `prepare` step checks that the build is there), with the
 * platform packages pinned as optionalDependencies by scripts/pin-platforms.js, as the release workflow
 * does before `npm publish`. The tarball goes into `dir`; returns it and the files in it.
 */
export async function packPackage(dir: string): Promise<{ tarball: string; files: string[] }> {
  const raw = join(dir, 'unpinned');
  mkdirSync(raw);
  const packed = await ok(
    'npm pack',
    'npm',
    ['pack', '--json', '--pack-destination', raw],
    REPO,
    { ...cleanEnv(), LEADERLEASE_SKIP_BUILD: '1' },
    120_000,
  );
  const [first] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string }[];
  assert.ok(first, 'npm pack reported no tarball');
  await ok('tar -x', 'tar', ['-xzf', join(raw, first.filename), '-C', raw], raw, cleanEnv(), 60_000);
  const unpacked = join(raw, 'package');
  await ok('pin-platforms.js', process.execPath, [join(REPO, 'scripts/pin-platforms.js'), unpacked], REPO, cleanEnv(), 30_000);
  const repacked = await ok(
    'npm pack (pinned)',
    'npm',
    ['pack', '--json', '--ignore-scripts', '--pack-destination', dir],
    unpacked,
    cleanEnv(),
    120_000,
  );
  const [info] = JSON.parse(repacked.stdout.slice(repacked.stdout.indexOf('['))) as {
    filename: string;
    files: { path: string }[];
  }[];
  assert.ok(info, 'npm pack reported no tarball');
  rmSync(raw, { recursive: true, force: true });
  const tarball = join(dir, info.filename);
  assert.ok(existsSync(tarball), `no ${tarball}`);
  return { tarball, files: info.files.map((f) => f.path) };
}

/** The tarballs of this checkout as published ({@link packPackage}, {@link packPlatform}). */
export async function pack(): Promise<Packed> {
  const dir = mkdtempSync(join(tmpdir(), 'leaderlease-pack-'));
  try {
    const { tarball, files } = await packPackage(dir);
    const env = { ...cleanEnv(), PATH: pathWithoutRust(join(dir, 'bin')), DATABASE_URL };
    const platform = await packPlatform(dir);
    const cli = await packPlatform(dir, `cli-${HOST_PLATFORM}`);
    return {
      tarball,
      platformTarball: platform.tarball,
      cliTarball: cli.tarball,
      files,
      platformFiles: platform.files,
      cliFiles: cli.files,
      env,
      close: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * A fresh app outside the repository with the tarballs and `deps` installed; `close()` removes it. The
 * platform packages (the addon's and the command line's) are installed from their tarballs, as npm would
 * take them from the registry as the package's optional dependencies (the other platforms' packages are
 * skipped, as for a user).
 */
export async function installApp(packed: Packed, deps: string[]): Promise<{ dir: string; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'leaderlease-app-'));
  try {
    assert.ok(!dir.startsWith(REPO + sep), 'the app must live outside the repository');
    await ok('npm init', 'npm', ['init', '-y'], dir, packed.env, 60_000);
    await ok(
      `npm install ${deps.join(' ')}`,
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefer-offline', packed.tarball, packed.platformTarball, packed.cliTarball, ...deps],
      dir,
      packed.env,
      300_000,
    );
    return { dir, close: () => rmSync(dir, { recursive: true, force: true }) };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** The installed version of `name` in the app at `dir`. */
export function installedVersion(dir: string, name: string): string {
  return (require(join(dir, 'node_modules', name, 'package.json')) as { version: string }).version;
}

// A CommonJS NestJS app in plain JavaScript (decorators applied by hand), the original Quick Start's shape:
// TypeORM, LeaderElectorModule.forRoot with a schema, a provider that injects the service. It checks that
// it loads the package installed in the app, elects itself, closes, and exits by itself.
export const NEST_APP_CJS = `'use strict';
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
  console.log('nest: leader, term ' + app.get(LeaderElectorService).term());
  await app.close();
  console.log('nest: closed');
}
main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
`;

// Preloaded with --require: every native module (.node) fails to load, as on a platform with no binary.
export const NO_ADDON_HOOK = `'use strict';
globalThis.__dlopenCalls = 0;
process.dlopen = function () {
  globalThis.__dlopenCalls += 1;
  throw new Error('simulated: no native binary for this platform');
};
`;

// A TypeORM migration run with the package's migration class (up, then down), printing what it saw.
// Run with NO_ADDON_HOOK preloaded: the package must not need its addon for it.
export const MIGRATION_CJS = `'use strict';
const { DataSource } = require('typeorm');
const { LeaderElectionMigrationBase } = require('leaderlease');

class LeaderElectionMigration1700000000000 extends LeaderElectionMigrationBase {
  constructor() {
    super();
    this.schema = process.env.LL_SCHEMA;
    this.name = 'LeaderElectionMigration1700000000000';
  }
}

async function main() {
  const ds = new DataSource({
    type: 'postgres', url: process.env.DATABASE_URL, migrations: [LeaderElectionMigration1700000000000],
    migrationsTableName: process.env.LL_SCHEMA + '_migrations',
  });
  await ds.initialize();
  const ran = await ds.runMigrations({ transaction: 'each' });
  const [{ n }] = await ds.query("SELECT count(*)::int AS n FROM pg_class WHERE relnamespace = $1::regnamespace AND relname IN ('leader_lease', 'leader_lease_term_seq')", ['"' + process.env.LL_SCHEMA.replace(/"/g, '""') + '"']);
  await ds.undoLastMigration({ transaction: 'each' });
  const [{ m }] = await ds.query("SELECT count(*)::int AS m FROM pg_class WHERE relnamespace = $1::regnamespace AND relname IN ('leader_lease', 'leader_lease_term_seq')", ['"' + process.env.LL_SCHEMA.replace(/"/g, '""') + '"']);
  await ds.query('DROP TABLE IF EXISTS "' + process.env.LL_SCHEMA + '_migrations"');
  await ds.destroy();
  console.log(JSON.stringify({ ran: ran.length, createdObjects: n, leftObjects: m, dlopenCalls: globalThis.__dlopenCalls }));
}
main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
`;
