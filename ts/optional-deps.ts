import { MissingPeerDependencyError } from './errors.js';

/**
 * The optional peer dependencies (TypeORM, NestJS, rxjs, reflect-metadata) are loaded here, on first use,
 * so that an app using only `LeaderElectorCore.connect(url)` needs none of them installed.
 */

const cache = new Map<string, unknown>();

function isNotFound(err: unknown, name: string): boolean {
  const e = err as { code?: string; message?: string } | null;
  return (
    (e?.code === 'MODULE_NOT_FOUND' || e?.code === 'ERR_MODULE_NOT_FOUND') &&
    typeof e.message === 'string' &&
    e.message.includes(`'${name}'`)
  );
}

/** The package `name`, or `undefined` when it is not installed (any other load failure is thrown). */
export function loadOptional<T>(name: string): T | undefined {
  if (cache.has(name)) return cache.get(name) as T | undefined;
  let mod: T | undefined;
  try {
    mod = require(name) as T;
  } catch (err) {
    if (!isNotFound(err, name)) throw err;
    mod = undefined;
  }
  cache.set(name, mod);
  return mod;
}

/** The package `name`; throws a {@link MissingPeerDependencyError} naming it when it is not installed. */
export function requirePeer<T>(name: string, feature: string): T {
  const mod = loadOptional<T>(name);
  if (mod === undefined) {
    throw new MissingPeerDependencyError(
      `leaderlease: ${feature} needs the optional peer dependency "${name}", which is not installed: npm install ${name}`,
    );
  }
  return mod;
}
