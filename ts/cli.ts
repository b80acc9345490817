#!/usr/bin/env node
// `npx leaderlease …`: the command line of the Rust crate (crates/leaderlease, cargo feature `cli`),
// shipped in a package of its own per Linux platform, `leaderlease-cli-<platform>` (an optional dependency
// like the addon's `leaderlease-<platform>`; in a checkout: native/leaderlease-<platform>). Nothing is
// implemented here: this wrapper
// runs that binary with the same arguments and standard streams, forwards SIGTERM, SIGINT and SIGHUP to
// it, and ends the way it ended (its exit status, or the same signal). Node cannot replace itself with
// another program, so the wrapper stays the binary's parent: it passes its pid in LEADERLEASE_WRAPPER_PID,
// and the binary asks the kernel for SIGTERM when the wrapper dies (even by SIGKILL), so that
// `leaderlease run` then stops its command and releases the lease.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { SUPPORTED_PLATFORMS, currentPlatform } from './native.js';

/**
 * The command line for this platform, found like the addon (ts/native.ts, native/index.js): next to the
 * loader in a checkout that built it (native/leaderlease-<platform>), otherwise in the package
 * `leaderlease-cli-<platform>` that npm installed as an optional dependency (its file `leaderlease`, on
 * Windows `leaderlease.exe`, should one be built there). It is not in the addon's package
 * `leaderlease-<platform>`, so that each package stays small (docs/platforms.md).
 */
function findBinary(tag: string): { binary: string | null; looked: string[] } {
  const exe = process.platform === 'win32' ? '.exe' : '';
  const local = join(__dirname, '..', 'native', `leaderlease-${tag}${exe}`);
  const looked = [local];
  if (existsSync(local)) return { binary: local, looked };
  try {
    const pkg = dirname(require.resolve(`leaderlease-cli-${tag}/package.json`));
    const inPackage = join(pkg, `leaderlease${exe}`);
    looked.push(inPackage);
    if (existsSync(inPackage)) return { binary: inPackage, looked };
  } catch {
    looked.push(`package leaderlease-cli-${tag} (not installed)`);
  }
  return { binary: null, looked };
}

const found = currentPlatform();
const { binary: located, looked } = findBinary(found.tag);
if (located === null) {
  // The command line is built for Linux only (it uses Linux's parent-death signal and process groups).
  const supported = SUPPORTED_PLATFORMS.map((p) => p.tag).filter((t) => t.startsWith('linux-'));
  const where = `${found.platform} ${found.arch}${found.libc ? ` with ${found.libc}` : ''} (platform tag ${found.tag})`;
  process.stderr.write(
    (supported.includes(found.tag)
      ? `leaderlease: no command-line binary for ${where}: looked in ${looked.join(', ')}. npm installs ` +
        `leaderlease-cli-${found.tag} as an optional dependency: install without --omit=optional.`
      : `leaderlease: no prebuilt command line for ${where}. Prebuilt for: ${supported.join(', ')}.`) +
      ' Or build it from source: `cargo install leaderlease --features cli`.\n',
  );
  process.exit(1);
}
const binary: string = located;

const child = spawn(binary, process.argv.slice(2), {
  stdio: 'inherit',
  env: { ...process.env, LEADERLEASE_WRAPPER_PID: String(process.pid) },
});
const forwarded: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
const forward = (signal: NodeJS.Signals): void => {
  if (child.exitCode === null && child.signalCode === null) child.kill(signal);
};
for (const signal of forwarded) process.on(signal, forward);
child.on('error', (err) => {
  process.stderr.write(`leaderlease: cannot run ${binary}: ${err.message}\n`);
  process.exit(1);
});
child.on('exit', (code, signal) => {
  for (const s of forwarded) process.removeListener(s, forward);
  if (signal) {
    process.kill(process.pid, signal);
    return;
  }
  process.exit(code ?? 1);
});
