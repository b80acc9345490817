/**
 * The option names each entry point accepts, in one place, and the warning for a name that is none of
 * them (`leaseDurtion: 5000` would otherwise be dropped without a word and the default used).
 */

/** The settings of one election (`LeaderElectorConfig`). */
export const ELECTOR_CONFIG_KEYS = [
  'leaseDuration',
  'renewalInterval',
  'baseCleanInterval',
  'jitterRange',
  'lockId',
  'instanceId',
  'schema',
  'createTableOnInit',
  'failoverQuarantine',
  'safetyMargin',
  'operationTimeout',
  'maxEventLoopStall',
  'backend',
  'ssl',
  'pooler',
  'logger',
  'metrics',
  'fleet',
] as const;

/** The keys of an `ssl` object that are applied (node-postgres' TLS options). */
export const SSL_KEYS = ['ca', 'cert', 'key', 'rejectUnauthorized'] as const;

/** `LeaderElectorModule.forRoot(options)` and what a `forRootAsync` factory returns. */
export const MODULE_OPTION_KEYS = [...ELECTOR_CONFIG_KEYS, 'connectionString', 'spread', 'isGlobal', 'extraProviders'] as const;

/** One named election of `LeaderElectorModule.forFeature(...)` (its instance id is the app's). */
export const NAMED_ELECTION_KEYS = [...ELECTOR_CONFIG_KEYS.filter((k) => k !== 'instanceId'), 'name'] as const;

/** `LeaderElectorCore.connectNats(servers, config)`. */
export const NATS_CONFIG_KEYS = [...ELECTOR_CONFIG_KEYS, 'bucket'] as const;

/** `LeaderElectorModule.forRootAsync(options)`. */
export const MODULE_ASYNC_OPTION_KEYS = [
  'imports',
  'useFactory',
  'inject',
  'useClass',
  'useExisting',
  'dataSourceName',
  'isGlobal',
  'extraProviders',
] as const;

/** `backend` and `backend.nats`. */
const BACKEND_KEYS = ['nats'] as const;
const NATS_BACKEND_KEYS = ['servers', 'bucket'] as const;

/** The keys already warned about in this process: each is reported once. */
const warned = new Set<string>();

/** Levenshtein distance, case-insensitive. */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const row = [i];
    for (let j = 1; j <= y.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[y.length]!;
}

/** The valid key closest to `key`, if it is close enough to be a misspelling of it. */
export function closestKey(key: string, valid: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const v of valid) {
    const d = distance(key, v);
    if (d < bestDistance) {
      best = v;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

/**
 * Emits a process warning `LEADERLEASE_UNKNOWN_OPTION` for each key of `options` that is not in `valid`
 * (once per key per process), with the closest valid key when there is one. `where` names the call
 * (`LeaderElectorModule.forRoot options`, ...). Also looks inside `backend` and `backend.nats` when they
 * are allowed. Anything but a plain object is left to the type checks.
 */
export function warnUnknownKeys(options: unknown, valid: readonly string[], where: string, prefix = ''): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) return;
  for (const key of Object.keys(options)) {
    const value = (options as Record<string, unknown>)[key];
    if (valid.includes(key)) {
      if (prefix === '' && key === 'backend') warnUnknownKeys(value, BACKEND_KEYS, where, 'backend.');
      if (prefix === 'backend.' && key === 'nats') warnUnknownKeys(value, NATS_BACKEND_KEYS, where, 'backend.nats.');
      continue;
    }
    const name = `${prefix}${key}`;
    if (warned.has(name)) continue;
    warned.add(name);
    const near = closestKey(key, valid);
    const hint = near !== undefined ? `did you mean \`${prefix}${near}\`?` : `valid: ${valid.join(', ')}`;
    process.emitWarning(`leaderlease: unknown option \`${name}\` in the ${where}, ignored (${hint})`, {
      type: 'LeaderElectionWarning',
      code: 'LEADERLEASE_UNKNOWN_OPTION',
      detail: near !== undefined ? `Rename it to \`${prefix}${near}\`.` : 'Remove it, or check the spelling.',
    });
  }
}
