// The one place that loads the native addon, and the platform resolution that `npx leaderlease` shares.
//
// native/index.js is napi-rs's generated loader: it takes `native/leaderlease.<platform>.node` when there
// is one (a checkout that built it), otherwise the platform package `leaderlease-<platform>`, which the
// published package lists in `optionalDependencies` so that npm installs the one that fits
// (docs/platforms.md). Where none loads, the loader throws a generic "Cannot find native binding" that points at
// lock files; this module turns that into an `UnsupportedPlatformError` that says what was found, what is
// prebuilt, what still works, and what to do.

import type * as Native from '../native/index.js';
import { UnsupportedPlatformError } from './errors.js';

export type NativeBinding = typeof Native;

/**
 * The platforms with a prebuilt addon (package.json `napi.targets`), as napi-rs's platform tags, each
 * with what it needs. The gnu builds link against glibc 2.17 (scripts/cross-build.sh).
 */
export const SUPPORTED_PLATFORMS: readonly { tag: string; needs: string }[] = [
  { tag: 'linux-x64-gnu', needs: 'glibc >= 2.17' },
  { tag: 'linux-x64-musl', needs: 'musl, e.g. Alpine' },
  { tag: 'linux-arm64-gnu', needs: 'glibc >= 2.17' },
  { tag: 'linux-arm64-musl', needs: 'musl, e.g. Alpine' },
  { tag: 'darwin-x64', needs: 'macOS' },
  { tag: 'darwin-arm64', needs: 'macOS' },
  { tag: 'win32-x64-msvc', needs: 'Windows' },
];

/** This process's platform as the loader sees it. */
export interface PlatformInfo {
  platform: string;
  arch: string;
  /** On Linux `glibc <version>` or `musl`; null elsewhere. */
  libc: string | null;
  /** napi-rs's platform tag, e.g. `linux-arm64-musl`: the suffix of the platform package's name. */
  tag: string;
}

export function currentPlatform(): PlatformInfo {
  const { platform, arch } = process;
  if (platform === 'linux') {
    // Like the loader: a glibc Node reports the glibc it runs on; a musl one reports none.
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
    const glibc = report?.header?.glibcVersionRuntime;
    return { platform, arch, libc: glibc ? `glibc ${glibc}` : 'musl', tag: `linux-${arch}-${glibc ? 'gnu' : 'musl'}` };
  }
  if (platform === 'win32') return { platform, arch, libc: null, tag: `win32-${arch}-msvc` };
  return { platform, arch, libc: null, tag: `${platform}-${arch}` };
}

/** The package version: a platform package must have the same. */
function packageVersion(): string {
  try {
    return (require('../package.json') as { version: string }).version;
  } catch {
    return 'the same version as leaderlease';
  }
}

/** The messages in the loader's error chain that say more than "not found", one line each. */
function loadFailures(err: unknown): string[] {
  const out: string[] = [];
  const seen = new Set<unknown>();
  for (let e: unknown = err; e instanceof Error && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const first = e.message.split('\n')[0] ?? '';
    if (/^Cannot find (module|native binding)|^Failed to load native binding/.test(first)) continue;
    if (/leaderlease\.wasi|wasm32-wasi|WASI/.test(first)) continue;
    out.push(first);
  }
  return out;
}

/** Builds the error for a platform whose addon did not load (`cause`: the loader's error). */
export function unsupportedPlatformError(cause: unknown, found: PlatformInfo = currentPlatform()): UnsupportedPlatformError {
  const supported = SUPPORTED_PLATFORMS.map((p) => p.tag);
  const where = `${found.platform} ${found.arch}${found.libc ? ` with ${found.libc}` : ''} (platform tag ${found.tag})`;
  const list = SUPPORTED_PLATFORMS.map((p) => `${p.tag} (${p.needs})`).join(', ');
  const failures = loadFailures(cause);
  const pkg = `leaderlease-${found.tag}`;
  const head = supported.includes(found.tag)
    ? `leaderlease: the native addon for ${where} could not be loaded: its package ${pkg} is not installed ` +
      `or did not load${failures.length ? ` (${failures.join('; ')})` : ''}. npm installs it as an optional ` +
      `dependency: install without --omit=optional / --no-optional, and if the lock file was made on another ` +
      `platform, run \`npm install ${pkg}@${packageVersion()}\` or reinstall.`
    : `leaderlease: no prebuilt native addon for ${where}` +
      `${failures.length ? ` (${failures.join('; ')})` : ''}. Prebuilt for: ${list}. Use one of those ` +
      `(e.g. another base image), or build the addon from source with the Rust toolchain ` +
      `(docs/platforms.md: \`npm run build\` in a checkout).`;
  const rest =
    ' Without the addon these still work: upSql()/downSql(), LeaderElectionMigrationBase, the LeaderLease ' +
    "entity and the error classes (from 'leaderlease'); LeaderElectorCore, LeaderElectorModule and " +
    "`leaderlease/core` need it.";
  return new UnsupportedPlatformError(head + rest, { ...found, target: found.tag, supported }, { cause });
}

let binding: NativeBinding | undefined;

/** The native addon; throws `UnsupportedPlatformError` where none can be loaded. */
export function loadNative(): NativeBinding {
  if (binding === undefined) {
    try {
      binding = require('../native/index.js') as NativeBinding;
    } catch (err) {
      throw unsupportedPlatformError(err);
    }
  }
  return binding;
}
