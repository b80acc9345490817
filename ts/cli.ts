#!/usr/bin/env node
// `npx leaderlease …`: the command line of the Rust crate (crates/leaderlease, cargo feature `cli`),
// built next to the addon as native/leaderlease-<platform>. Nothing is implemented here: this wrapper
// runs that binary with the same arguments and standard streams, forwards SIGTERM, SIGINT and SIGHUP to
// it, and ends the way it ended (its exit status, or the same signal). Node cannot replace itself with
// another program, so the wrapper stays the binary's parent: it passes its pid in LEADERLEASE_WRAPPER_PID,
// and the binary asks the kernel for SIGTERM when the wrapper dies (even by SIGKILL), so that
// `leaderlease run` then stops its command and releases the lease.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

function platformTag(): string {
  const { platform, arch } = process;
  if (platform !== 'linux') return `${platform}-${arch}`;
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const glibc = report?.header?.glibcVersionRuntime;
  return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`;
}

const tag = platformTag();
const binary = join(__dirname, '..', 'native', `leaderlease-${tag}`);
if (!existsSync(binary)) {
  process.stderr.write(
    `leaderlease: no command-line binary for ${tag} in this package (${binary}); ` +
      'build it with `npm run build` in a checkout, or `cargo install leaderlease --features cli`\n',
  );
  process.exit(1);
}

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
