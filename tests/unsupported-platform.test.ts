// Where no prebuilt addon fits: a platform nothing is built for (simulated by a Node whose process.arch
// says riscv64, so that napi-rs's loader finds no package for it, as on a real riscv64 machine), and a
// supported platform whose platform package did not load (every native module fails to load). Loading
// what needs the addon throws UnsupportedPlatformError (ERR_UNSUPPORTED_PLATFORM) naming the platform and
// C library found, the prebuilt platforms and the remedy, instead of napi's "Cannot find native binding"
// advice about lock files; what needs no addon keeps working; `npx leaderlease` says the same in one line.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';

import { NO_ADDON_HOOK } from './packed-app.js';

const DIST = resolve(__dirname, '../dist');
const SUPPORTED = [
  'linux-x64-gnu',
  'linux-x64-musl',
  'linux-arm64-gnu',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
];

const dir = mkdtempSync(join(tmpdir(), 'leaderlease-unsupported-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const RISCV = join(dir, 'riscv64.cjs');
writeFileSync(RISCV, `Object.defineProperty(process, 'arch', { value: 'riscv64', enumerable: true });\n`);
const NO_ADDON = join(dir, 'no-addon.cjs');
writeFileSync(NO_ADDON, NO_ADDON_HOOK);

interface Child {
  code: number | null;
  stdout: string;
  stderr: string;
}

function node(preload: string, args: string[]): Promise<Child> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--require', preload, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** What each way of reaching the addon threw, and what works without it. */
const PROBE = `
const out = {};
const caught = (f) => {
  try { f(); return null; } catch (e) {
    return { name: e.name, code: e.code, message: e.message, platform: e.platform, arch: e.arch, libc: e.libc,
      target: e.target, supported: e.supported, isLeaderElectionError: e instanceof ll.LeaderElectionError,
      isUnsupported: typeof ll.UnsupportedPlatformError === 'function' && e instanceof ll.UnsupportedPlatformError, cause: e.cause ? String(e.cause.message) : null };
  }
};
const ll = require(${JSON.stringify(join(DIST, 'index.js'))});
out.core = caught(() => require(${JSON.stringify(join(DIST, 'core.js'))}));
out.elector = caught(() => ll.LeaderElectorCore);
out.module = caught(() => ll.LeaderElectorModule);
out.errorCodes = caught(() => ll.errorCodes());
out.upSql = ll.upSql('s').includes('CREATE TABLE IF NOT EXISTS "s".leader_lease');
out.migration = typeof ll.LeaderElectionMigrationBase;
process.stdout.write(JSON.stringify(out));
`;

async function probe(preload: string): Promise<Record<string, any>> {
  const r = await node(preload, ['-e', PROBE]);
  assert.equal(r.code, 0, `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, any>;
}

function assertUnsupported(e: Record<string, any> | null, what: string): asserts e is Record<string, any> {
  assert.ok(e, `${what} loaded without the addon`);
  assert.equal(e['name'], 'UnsupportedPlatformError', `${what}: ${e['message']}`);
  assert.equal(e['code'], 'ERR_UNSUPPORTED_PLATFORM');
  assert.ok(e['isUnsupported'] && e['isLeaderElectionError'], `${what}: not the exported class`);
  assert.deepEqual(e['supported'], SUPPORTED);
  assert.doesNotMatch(e['message'], /npm has a bug|Cannot find native binding/);
  // What still works, in the message.
  assert.match(e['message'], /upSql\(\)\/downSql\(\), LeaderElectionMigrationBase/);
  // The loader's error stays reachable.
  assert.ok(e['cause'], `${what}: no cause`);
}

const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime;

test('a platform with no prebuilt addon: UnsupportedPlatformError names it, the supported list and the remedy', async () => {
  const out = await probe(RISCV);
  for (const what of ['core', 'elector', 'module', 'errorCodes']) assertUnsupported(out[what], what);
  const e = out['core'];
  assert.equal(e.platform, 'linux');
  assert.equal(e.arch, 'riscv64');
  assert.equal(e.target, 'linux-riscv64-gnu');
  assert.equal(e.libc, `glibc ${glibc}`);
  assert.match(e.message, new RegExp(`no prebuilt native addon for linux riscv64 with glibc ${glibc!.replace('.', '\\.')}`));
  for (const tag of SUPPORTED) assert.ok(e.message.includes(tag), `the message lacks ${tag}: ${e.message}`);
  assert.match(e.message, /glibc >= 2\.17/);
  assert.match(e.message, /another base image/);
  assert.match(e.message, /build the addon from source with the Rust toolchain/);
  // What needs no addon works all the same.
  assert.equal(out['upSql'], true);
  assert.equal(out['migration'], 'function');
});

test('a supported platform whose platform package did not load: the error names the package and why', async () => {
  const out = await probe(NO_ADDON);
  for (const what of ['core', 'elector', 'errorCodes']) assertUnsupported(out[what], what);
  const e = out['core'];
  const tag = `linux-${process.arch}-${glibc ? 'gnu' : 'musl'}`;
  assert.equal(e.target, tag);
  assert.match(e.message, new RegExp(`its package leaderlease-${tag} is not installed or did not load`));
  // The reason the binary did not load (here the simulated dlopen failure) is in the message.
  assert.match(e.message, /simulated: no native binary for this platform/);
  assert.match(e.message, /--omit=optional/);
  assert.equal(out['upSql'], true);
});

test('npx leaderlease on a platform with no prebuilt command line: one clear line, exit 1', async () => {
  const r = await node(RISCV, [join(DIST, 'cli.js'), '--version']);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^leaderlease: no prebuilt command line for linux riscv64 with glibc [\d.]+ \(platform tag linux-riscv64-gnu\)\./);
  assert.match(r.stderr, /Prebuilt for: linux-x64-gnu, linux-x64-musl, linux-arm64-gnu, linux-arm64-musl\./);
  assert.match(r.stderr, /cargo install leaderlease --features cli/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});
