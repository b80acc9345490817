// The NATS source of an elector: where its lease lives when it is not in PostgreSQL.
import { LeaderElectionConfigError } from './errors.js';
import type { LeaderElectorConfig, RepositoryLike } from './leader-elector.config.js';

/**
 * The NATS servers and bucket an elector keeps its lease in: the source of
 * `new LeaderElectorCore({ nats: { servers, bucket } }, config)` (what {@link LeaderElectorCore.connectNats}
 * makes). `servers`: one URL (`nats://127.0.0.1:4222`) or several separated by commas.
 */
export interface NatsSource {
  nats: { servers: string; bucket?: string };
}

export function isNatsSource(source: unknown): source is NatsSource {
  return typeof source === 'object' && source !== null && 'nats' in source;
}

/**
 * The NATS settings of an elector on `source` with `config`, or null for PostgreSQL. `config.backend.nats`
 * (the module's, or a named election's) wins over the source's; it cannot be combined with a PostgreSQL
 * `url` or repository: the lease lives in one store.
 */
export function natsSettings(
  source: string | RepositoryLike | NatsSource,
  config: LeaderElectorConfig | undefined,
): { servers: string; bucket?: string } | null {
  const fromConfig = config?.backend?.nats;
  if (fromConfig !== undefined && fromConfig !== null && !isNatsSource(source)) {
    throw new LeaderElectionConfigError(
      `invalid leader election config: \`backend.nats\` was given with a PostgreSQL ${typeof source === 'string' ? '`url`' : 'repository'}: ` +
        'the lease lives in one store; start on NATS with LeaderElectorCore.connectNats(servers, config)',
    );
  }
  const nats = fromConfig ?? (isNatsSource(source) ? source.nats : null);
  if (nats === null || nats === undefined) return null;
  const where = fromConfig ? '`backend.nats.servers`' : '`servers`';
  if (typeof nats !== 'object') {
    throw new LeaderElectionConfigError(`invalid leader election config: \`backend.nats\` must be an object (got ${typeof nats})`);
  }
  if (typeof nats.servers !== 'string' || nats.servers.trim() === '') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: ${where} must be a non-empty string of NATS server URLs, e.g. nats://127.0.0.1:4222 ` +
        `(got ${nats.servers === '' ? 'an empty string' : typeof nats.servers})`,
    );
  }
  if (nats.bucket !== undefined && nats.bucket !== null && typeof nats.bucket !== 'string') {
    throw new LeaderElectionConfigError(`invalid leader election config: \`bucket\` must be a string (got ${typeof nats.bucket})`);
  }
  return nats;
}
