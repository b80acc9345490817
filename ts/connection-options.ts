// The translation of what an elector is given (a connection string, a TypeORM DataSource or repository, TLS
// and PEM settings, the pooler) into the native connection settings.
import type { ElectorOptions, PgConnection, PgSsl } from '../native/index.js';
import { SSL_KEYS, warnUnknownKeys } from './config-keys.js';
import { LeaderElectionConfigError } from './errors.js';
import { configError, type DataSourceLike, type LeaderElectorConfig, type RepositoryLike } from './leader-elector.config.js';
import { isNatsSource, natsSettings, type NatsSource } from './nats-source.js';

/** The credentials of a PostgreSQL DataSource (or of its `replication.master`) that are read. */
interface PostgresCredentialsLike {
  url?: string;
  host?: string;
  port?: number;
  username?: string;
  password?: string | (() => string) | (() => Promise<string>);
  database?: string;
  ssl?: unknown;
  applicationName?: string;
}

/** The connection options of a PostgreSQL DataSource that are read. */
interface PostgresOptionsLike extends PostgresCredentialsLike {
  type?: string;
  replication?: { master?: PostgresCredentialsLike };
  extra?: { ssl?: unknown; application_name?: unknown; options?: unknown };
}

const POOLERS = ['none', 'session', 'transaction'] as const;

/** PEM text from a string, a Buffer or a list of them. */
function pemText(value: unknown, field: string): string {
  const parts = Array.isArray(value) ? value : [value];
  return parts
    .map((part: unknown) => {
      if (typeof part === 'string') return part;
      if (Buffer.isBuffer(part)) return part.toString('utf8');
      throw configError(`\`${field}\` must be PEM text: a string, a Buffer or a list of them (got ${typeof part})`);
    })
    .join('\n');
}

/**
 * The native TLS settings of an `ssl` option as node-postgres reads it: `true` and an object verify the
 * certificate and the host name (`verify-full`), `rejectUnauthorized: false` verifies nothing (`require`),
 * `false` turns TLS off (`disable`); `undefined` / `null` leaves it to the URL (libpq's default `prefer`).
 */
export function sslSettings(ssl: unknown, field = 'ssl'): PgSsl | undefined {
  if (ssl === undefined || ssl === null) return undefined;
  if (ssl === true) return { mode: 'verify-full' };
  if (ssl === false) return { mode: 'disable' };
  if (typeof ssl !== 'object' || Array.isArray(ssl)) {
    throw configError(`\`${field}\` must be a boolean or an object (got ${typeof ssl})`);
  }
  const o = ssl as Record<string, unknown>;
  if (o.passphrase !== undefined) {
    throw configError(`\`${field}.passphrase\`: an encrypted private key is not supported; give the key decrypted`);
  }
  warnUnknownKeys(o, SSL_KEYS, `\`${field}\` settings (not applied)`);
  if (o.rejectUnauthorized !== undefined && typeof o.rejectUnauthorized !== 'boolean') {
    throw configError(`\`${field}.rejectUnauthorized\` must be a boolean (got ${typeof o.rejectUnauthorized})`);
  }
  const out: PgSsl = { mode: o.rejectUnauthorized === false ? 'require' : 'verify-full' };
  for (const key of ['ca', 'cert', 'key'] as const) {
    if (o[key] !== undefined && o[key] !== null) out[key] = pemText(o[key], `${field}.${key}`);
  }
  if ((out.cert === undefined) !== (out.key === undefined)) {
    throw configError(`\`${field}.cert\` and \`${field}.key\` must be given together`);
  }
  return out;
}

/** The `pooler` setting, checked. */
function poolerSetting(config: LeaderElectorConfig | undefined): string | undefined {
  const pooler: unknown = config?.pooler;
  if (pooler === undefined || pooler === null) return undefined;
  if (typeof pooler !== 'string' || !(POOLERS as readonly string[]).includes(pooler)) {
    throw configError(`\`pooler\` must be 'none', 'session' or 'transaction' (got ${JSON.stringify(pooler)})`);
  }
  return pooler;
}

/** The native connection settings for a connection string and the config's `ssl` and `pooler`. */
export function connectionForUrl(url: string, config: LeaderElectorConfig | undefined): PgConnection {
  return { url, ssl: sslSettings(config?.ssl), pooler: poolerSetting(config) };
}

/** The DataSource's options, checked to be a PostgreSQL DataSource's. */
export function postgresOptions(dataSource: DataSourceLike): PostgresOptionsLike {
  const o = dataSource?.options as PostgresOptionsLike | undefined;
  if (!o || typeof o !== 'object') {
    throw configError('`dataSource` must be a TypeORM DataSource (it has no `options`)');
  }
  if (o.type !== undefined && o.type !== 'postgres') {
    throw configError(`\`dataSource\` must be a PostgreSQL DataSource (got type ${JSON.stringify(o.type)})`);
  }
  return o;
}

/**
 * The connection settings of a TypeORM DataSource, field by field, as TypeORM hands them to node-postgres:
 * the credentials of `replication.master` when replication is set, else the DataSource's own (`url`,
 * `host`, `port`, `username`, `password` (a function is called), `database`, `ssl` with `ca` / `cert` /
 * `key` / `rejectUnauthorized`); `applicationName`; from `extra` (which TypeORM applies last) `ssl`,
 * `application_name` and `options`. What the `url` says wins over the fields, as in node-postgres.
 */
export async function connectionSettingsFromDataSource(dataSource: DataSourceLike): Promise<PgConnection> {
  const o = postgresOptions(dataSource);
  const master = o.replication?.master;
  const cred: PostgresCredentialsLike = o.replication ? (master ?? {}) : o;
  if (o.replication && (master === undefined || master === null || typeof master !== 'object')) {
    throw configError('`dataSource.options.replication.master` must be an object: the elector writes, so it needs the master');
  }
  const password = typeof cred.password === 'function' ? await cred.password() : cred.password;
  const extra = o.extra !== null && typeof o.extra === 'object' ? o.extra : {};
  const ssl = 'ssl' in extra ? sslSettings(extra.ssl, 'extra.ssl') : sslSettings(cred.ssl);
  const appName = 'application_name' in extra ? extra.application_name : (o.applicationName ?? cred.applicationName);
  const str = (v: unknown, field: string): string | undefined => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw configError(`\`${field}\` must be a string (got ${typeof v})`);
    return v;
  };
  const port = cred.port;
  if (port !== undefined && port !== null && typeof port !== 'number') {
    throw configError(`\`port\` must be a number (got ${typeof port})`);
  }
  // What node-postgres takes for a value the DataSource leaves out (its ConnectionParameters): the PG*
  // environment variable, then its default (the login name for the user; the server's own defaults
  // otherwise: the database named as the user). The elector connects with the same values, not with
  // defaults of its own. A `url` still wins over all of them for what it sets.
  const env = process.env;
  const fallback = (v: string | undefined, name: string): string | undefined => v || env[name] || undefined;
  const loginName = process.platform === 'win32' ? env['USERNAME'] : env['USER'];
  const envPort = env['PGPORT'] ? Number.parseInt(env['PGPORT'], 10) : undefined;
  return {
    url: str(cred.url, 'url') || undefined,
    host: fallback(str(cred.host, 'host'), 'PGHOST'),
    port: port || (envPort !== undefined && Number.isFinite(envPort) ? envPort : undefined),
    user: fallback(str(cred.username, 'username'), 'PGUSER') || loginName || undefined,
    password: fallback(str(password, 'password'), 'PGPASSWORD'),
    database: fallback(str(cred.database, 'database'), 'PGDATABASE'),
    applicationName: str(appName, 'applicationName'),
    options: str(extra.options, 'extra.options'),
    ssl,
  };
}

/**
 * A PostgreSQL connection string built from a TypeORM DataSource's options: its `url`, or
 * host/port/username/password/database/ssl. It cannot carry `ssl.ca`, `cert` or `key`: the elector
 * itself uses {@link connectionSettingsFromDataSource}, which keeps them.
 */
export async function connectionStringFromDataSource(dataSource: DataSourceLike): Promise<string> {
  const o = dataSource?.options as PostgresOptionsLike | undefined;
  if (!o || typeof o !== 'object') {
    throw new LeaderElectionConfigError(
      'invalid leader election config: `dataSource` must be a TypeORM DataSource (it has no `options`)',
    );
  }
  if (o.type !== undefined && o.type !== 'postgres') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: \`dataSource\` must be a PostgreSQL DataSource (got type ${JSON.stringify(o.type)})`,
    );
  }
  let sslmode: string | null = null;
  if (o.ssl) {
    const ssl = o.ssl as { rejectUnauthorized?: unknown };
    sslmode = typeof ssl === 'object' && ssl.rejectUnauthorized === false ? 'require' : 'verify-full';
  }
  if (o.url) {
    if (sslmode === null || /[?&]sslmode=/.test(o.url)) return o.url;
    return `${o.url}${o.url.includes('?') ? '&' : '?'}sslmode=${sslmode}`;
  }
  const password = typeof o.password === 'function' ? await o.password() : o.password;
  const enc = encodeURIComponent;
  const auth =
    o.username !== undefined
      ? `${enc(o.username)}${password !== undefined && password !== '' ? `:${enc(password)}` : ''}@`
      : '';
  const host = o.host ?? 'localhost';
  const hostPart = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  const db = o.database !== undefined ? `/${enc(o.database)}` : '';
  const query = sslmode !== null ? `?sslmode=${sslmode}` : '';
  return `postgres://${auth}${hostPart}:${o.port ?? 5432}${db}${query}`;
}

/**
 * Where an elector on `source` with `config` keeps its lease, in native settings: the NATS servers and
 * bucket (see {@link natsSettings}), or else the PostgreSQL connection of the connection string, or of the
 * repository's DataSource with the config's `ssl` and `pooler`. When the config sets no schema, the
 * repository's table schema goes into `options.schema`.
 */
export async function storeSettings(
  source: string | RepositoryLike | NatsSource,
  config: LeaderElectorConfig,
  options: ElectorOptions,
): Promise<{ nats: { servers: string; bucket?: string } | null; connection: PgConnection }> {
  if (typeof source === 'string' && source.trim() === '') {
    throw new LeaderElectionConfigError(
      'invalid leader election config: `url` must be a non-empty PostgreSQL connection string, e.g. ' +
        'postgres://user@host:5432/db (for NATS: LeaderElectorCore.connectNats(servers, config))',
    );
  }
  const nats = natsSettings(source, config);
  let connection: PgConnection = {};
  if (nats !== null) {
    // The lease lives in NATS.
  } else if (typeof source === 'string') {
    connection = connectionForUrl(source, config);
  } else if (!isNatsSource(source)) {
    const ds = source?.manager?.dataSource ?? source?.manager?.connection;
    if (!ds) {
      throw new LeaderElectionConfigError(
        'invalid leader election config: expected a connection string or a TypeORM repository',
      );
    }
    connection = await connectionSettingsFromDataSource(ds);
    if (config?.ssl !== undefined) connection.ssl = sslSettings(config.ssl);
    connection.pooler = poolerSetting(config);
    const tableSchema = source.metadata?.schema;
    if (options.schema === undefined && typeof tableSchema === 'string' && tableSchema !== '') {
      options.schema = tableSchema;
    }
  }
  return { nats, connection };
}
