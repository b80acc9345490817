import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';

import type * as Rx from 'rxjs';

import type { Elector, ElectorEvent, ElectorOptions, PgConnection, PgSsl, StateSnapshot, StatusInfo } from '../native/index.js';
import { ELECTOR_CONFIG_KEYS, NATS_CONFIG_KEYS, SSL_KEYS, warnUnknownKeys } from './config-keys.js';
import { localDeadline } from './deadline.js';
import { ElectorShutDownError, FencedError, LeaderElectionConfigError, LeaderElectionError, fromNative } from './errors.js';
import { keepAliveWhile } from './keep-alive.js';
import { loadNative } from './native.js';
import { quoteIdent } from './sql.js';
import { leaderJobContext, type LeaderJobContext } from './leader-job.context.js';
import {
  type LeaderElectionLogEvent,
  type LeaderElectorLogger,
  loggerProblem,
  toLogEvent,
  writeLog,
} from './logging.js';
import { type LeaderElectionMetricsOptions, trackMetrics } from './metrics.js';
import { requirePeer } from './optional-deps.js';

/**
 * Settings of one election, with the field names of nest-leader-election. Every field is optional; the
 * defaults are the documented ones (they live in the native core): leaseDuration 10000 ms,
 * renewalInterval 3000 ms, jitterRange 2000 ms, baseCleanInterval 6 x leaseDuration, lockId 1,
 * schema `public`, createTableOnInit true, instanceId unique per process.
 */
export interface LeaderElectorConfig {
  /** How long a lease lives in the database without renewal, in ms (default 10000). */
  leaseDuration?: number;
  /** Mean time between renewals (leader) and polls (follower), in ms (default 3000). */
  renewalInterval?: number;
  /** Mean time between cleanups of long-expired rows, in ms (default 6 x leaseDuration). */
  baseCleanInterval?: number;
  /** Width of the uniform jitter around each interval, in ms (default 2000). */
  jitterRange?: number;
  /** The lease row this election uses; one per independent election (default 1). */
  lockId?: number;
  /** This candidate's identity; must be unique per process (default: hostname, pid and a random suffix). */
  instanceId?: string;
  /** Schema of the `leader_lease` table (default `public`); any name, always quoted. */
  schema?: string;
  /** Create or upgrade the table at start (default true); false when a migration creates it. */
  createTableOnInit?: boolean;
  /**
   * New (PostgreSQL): after a database failover (the server shows a new WAL timeline or system
   * identifier), a candidate does not acquire until one lease after it first saw the change, since an
   * asynchronous standby may have lost the last lease the old primary acknowledged (default true). Turn
   * it off only where every failover target is a synchronous standby; see docs/design.md, "Failover".
   */
  failoverQuarantine?: boolean;
  /** New: the leader steps down this long before its lease ends, in ms (default leaseDuration / 10). */
  safetyMargin?: number;
  /** New: upper bound of one database operation, in ms (default renewalInterval / 2, at most 2000). */
  operationTimeout?: number;
  /**
   * New: the longest the JavaScript event loop may stall while this node leads, in ms (default
   * leaseDuration - safetyMargin; `0` turns the check off, for apps that knowingly block their loop;
   * otherwise between 10 ms and 24 h). An unref'd timer tells the native side that the loop is alive;
   * when it has not for this long, `amILeader()` turns false, and at its next renewal the leader deletes
   * its lease so that another instance takes over at once (a stalled loop runs no leader work, so
   * holding the lease would stop that work cluster-wide). It campaigns again once the loop runs.
   */
  maxEventLoopStall?: number;
  /**
   * New: where the lease lives. Default PostgreSQL (the connection string or DataSource given). With
   * `{ nats: { servers, bucket } }` the lease is a key in a NATS JetStream KV bucket (NATS 2.10+). The
   * bucket is created if missing, with per-key TTL on NATS 2.11+: each key carries its own lease, so one
   * bucket holds elections of different `leaseDuration`s. An existing bucket without per-message TTL must
   * have `max_age` = `leaseDuration` (otherwise it is refused with `InvalidBucketError`). Used by
   * `LeaderElectorModule` (no `connectionString` then); with `LeaderElectorCore`, start with
   * `connectNats(servers, config)` instead: `backend.nats` with a PostgreSQL URL or repository is refused.
   */
  backend?: { nats: { servers: string; bucket?: string } };
  /**
   * New: TLS for a connection string (`connect(url, { ssl })`, the module's `connectionString`), as a
   * TypeORM DataSource's `ssl`: `true` (verify the certificate and the host name against the public
   * roots), `{ ca, cert, key }` (PEM strings or Buffers; verify against `ca`), `{ rejectUnauthorized:
   * false }` (encrypt, verify nothing). With a DataSource it replaces the DataSource's `ssl`. The URL's
   * own `sslmode` / `sslrootcert` win over it.
   */
  ssl?: SslOptions;
  /**
   * New: the pooler between this process and PostgreSQL: `'transaction'` for PgBouncer (or a managed
   * "pooled" URL) in transaction mode, `'session'` in session mode, `'none'` (default) for a direct
   * connection. Behind a transaction pooler every statement runs in a transaction of its own and no
   * LISTEN is used, so a release is taken within `renewalInterval + jitterRange / 2` (polling) instead of
   * milliseconds. See docs/design.md, "Production PostgreSQL".
   */
  pooler?: 'none' | 'session' | 'transaction';
  /**
   * New: where the core's log lines go (one line per event, with lock id, instance id, term and reason):
   * an object with `log`, `warn`, `error` and optionally `debug` (`console`, pino, winston, a NestJS
   * `Logger`). Default: nowhere (nothing is printed); in `LeaderElectorModule`, Nest's `Logger` with the
   * context `LeaderElector`. The same events come as values through the `'log'` event.
   */
  logger?: LeaderElectorLogger;
  /**
   * New: Prometheus metrics through `prom-client` (an optional peer dependency): `true` registers them on
   * prom-client's default registry, `{ registry, name }` on the given one, with the label `name` (default:
   * the lock id). See the README, "Metrics".
   */
  metrics?: boolean | LeaderElectionMetricsOptions;
}

/**
 * {@link LeaderStatus} plus whether the elector can reach its store, leader or follower alike (from the
 * outcome of its own acquisitions, renewals and reads).
 */
export interface ElectorStatus extends LeaderStatus {
  /** The last store operation got an answer (true after a successful start). */
  connected: boolean;
  /** The error of the last failed store operation, if any (kept after the store answers again). */
  lastError: string | null;
  /** When `connected` took its current value, in ms since the Unix epoch (as `Date.now()`). */
  since: number;
}

/**
 * The native addon, loaded with this module: where no prebuilt binary fits, importing this module (and
 * `leaderlease/core`) throws `UnsupportedPlatformError` (ts/native.ts).
 */
const addon = loadNative();
/** What {@link LeaderElectorCore.fence} runs its statement on: anything with `query(sql, params)`. */
export interface FenceRunner {
  query(sql: string, parameters?: unknown[]): Promise<unknown>;
}

/** The SQLSTATE of the fence function's refusal. */
export const FENCE_SQLSTATE = 'LLF01';

/** The elector and the tracked Promise of each running leader job, by its context. */
const jobOf = new WeakMap<LeaderJobContext, { owner: object; job: Promise<void> }>();

/** A PEM certificate or key: a string, a Buffer, or a list of them (as Node's `tls` takes them). */
export type PemInput = string | Buffer | ReadonlyArray<string | Buffer>;

/** TLS settings, as a TypeORM DataSource's (node-postgres') `ssl` option. */
export type SslOptions =
  | boolean
  | {
      /** Trusted CA certificate(s), PEM. */
      ca?: PemInput;
      /** Client certificate, PEM. */
      cert?: PemInput;
      /** Client private key, PEM, unencrypted. */
      key?: PemInput;
      /** `false`: encrypt without verifying the server's certificate (`sslmode=require`). */
      rejectUnauthorized?: boolean;
    };

/** Now on the native deadline clock (see deadline.ts). */
const nativeClockNow = (): number => addon.Elector.clockNow();

/** The leader as this node last saw it (itself while it leads). */
export interface LeaderIdentity {
  leaderId: string;
  /** Fencing term of that leadership: it only grows for a lock id. */
  term: number;
}

/** Leadership state: `candidate`, `leader` or `stopped`, with the leader where known. */
export interface LeaderStatus {
  state: 'candidate' | 'leader' | 'stopped';
  leaderId: string | null;
  term: number | null;
}

/** Events of {@link LeaderElectorCore}. */
export interface LeaderElectorEvents {
  /** This node became leader with this term. */
  elected: [{ term: number }];
  /** This node stopped leading (lost, released, or shut down). */
  revoked: [];
  /** Another leader (or a new term) was observed, or this node was elected. */
  leaderChanged: [LeaderIdentity];
  /** Every status change. */
  status: [LeaderStatus];
  /**
   * A line of the core's log, as a value (elected, renewal failed, stepped down and why, duplicate
   * instance id, cannot LISTEN, ...); debug events (one per renewal) only while someone listens.
   */
  log: [LeaderElectionLogEvent];
  /**
   * The start failed (only emitted when someone listens; `ready()` rejects with it as well). Without a
   * listener, and with nobody awaiting `ready()`, a process warning `LEADERLEASE_START_FAILED` reports it.
   */
  error: [LeaderElectionError];
}

/**
 * One leadership event of {@link LeaderElectorCore.events$}: the `elected`, `revoked` and `leaderChanged`
 * events of the EventEmitter, as values tagged by `type`.
 */
export type LeadershipEvent =
  | { type: 'elected'; term: number }
  | { type: 'revoked' }
  | { type: 'leaderChanged'; leaderId: string; term: number };

/**
 * A TypeORM `DataSource` (any `DataSourceOptions` type-checks; only a `postgres` one is accepted at run
 * time). Only its connection options are read.
 */
export interface DataSourceLike {
  options: object;
}

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

const NUMBER_FIELDS = [
  'leaseDuration',
  'renewalInterval',
  'baseCleanInterval',
  'jitterRange',
  'lockId',
  'safetyMargin',
  'operationTimeout',
  'maxEventLoopStall',
] as const;
const STRING_FIELDS = ['instanceId', 'schema'] as const;
const POOLERS = ['none', 'session', 'transaction'] as const;

function configError(message: string): LeaderElectionConfigError {
  return new LeaderElectionConfigError(`invalid leader election config: ${message}`);
}

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
function connectionForUrl(url: string, config: LeaderElectorConfig | undefined): PgConnection {
  return { url, ssl: sslSettings(config?.ssl), pooler: poolerSetting(config) };
}

/**
 * Checks the types of the settings (the native core checks their values) and copies the known ones;
 * warns about unknown ones.
 */
function toNativeOptions(config: LeaderElectorConfig | undefined): ElectorOptions {
  if (config === undefined || config === null) {
    return {};
  }
  if (typeof config !== 'object') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: expected an object (got ${typeof config})`,
    );
  }
  warnUnknownKeys(config, ELECTOR_CONFIG_KEYS, 'leader election config');
  const out: ElectorOptions = {};
  const given = (field: keyof LeaderElectorConfig): unknown => {
    const v = config[field];
    return v === null ? undefined : v;
  };
  for (const field of NUMBER_FIELDS) {
    const v = given(field);
    if (v === undefined) continue;
    if (typeof v !== 'number') {
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`${field}\` must be a number (got ${typeof v})`,
      );
    }
    out[field] = v;
  }
  for (const field of STRING_FIELDS) {
    const v = given(field);
    if (v === undefined) continue;
    if (typeof v !== 'string') {
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`${field}\` must be a string (got ${typeof v})`,
      );
    }
    out[field] = v;
  }
  for (const field of ['createTableOnInit', 'failoverQuarantine'] as const) {
    const v = given(field);
    if (v === undefined) continue;
    if (typeof v !== 'boolean') {
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`${field}\` must be a boolean (got ${typeof v})`,
      );
    }
    out[field] = v;
  }
  return out;
}

/** The DataSource's options, checked to be a PostgreSQL DataSource's. */
function postgresOptions(dataSource: DataSourceLike): PostgresOptionsLike {
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
  return {
    url: str(cred.url, 'url') || undefined,
    host: str(cred.host, 'host'),
    port: port ?? undefined,
    user: str(cred.username, 'username'),
    password: str(password, 'password'),
    database: str(cred.database, 'database'),
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
 * The NATS servers and bucket an elector keeps its lease in: the source of
 * `new LeaderElectorCore({ nats: { servers, bucket } }, config)` (what {@link LeaderElectorCore.connectNats}
 * makes). `servers`: one URL (`nats://127.0.0.1:4222`) or several separated by commas.
 */
export interface NatsSource {
  nats: { servers: string; bucket?: string };
}

function isNatsSource(source: unknown): source is NatsSource {
  return typeof source === 'object' && source !== null && 'nats' in source;
}

/**
 * The NATS settings of an elector on `source` with `config`, or null for PostgreSQL. `config.backend.nats`
 * (the module's, or a named election's) wins over the source's; it cannot be combined with a PostgreSQL
 * `url` or repository: the lease lives in one store.
 */
function natsSettings(
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

/** `repository.manager.dataSource` (TypeORM 0.3+) or `repository.manager.connection`. */
export interface RepositoryLike {
  manager: { dataSource?: DataSourceLike; connection?: DataSourceLike };
  /** The entity's table: its schema is used when the config sets none. */
  metadata?: { schema?: string };
}

function toStatus(s: StatusInfo): LeaderStatus {
  return { state: s.state, leaderId: s.leaderId ?? null, term: s.term ?? null };
}

/**
 * A leader election on PostgreSQL, the API of nest-leader-election's `LeaderElectorCore`.
 *
 * Start it with {@link LeaderElectorCore.connect} (a connection string), {@link LeaderElectorCore.create}
 * (a TypeORM DataSource), or `new LeaderElectorCore(source, config)` which starts in the background
 * (`ready()` tells when it campaigns). Like a server, a running elector keeps the Node process alive
 * (unless {@link unref} is called); after {@link shutdown}, or a failed start, nothing of it does.
 */
export class LeaderElectorCore extends EventEmitter<LeaderElectorEvents> {
  #native: Elector | null = null;
  #stopped = false;
  #source: string | RepositoryLike | NatsSource;
  #config: LeaderElectorConfig;
  /** Set by the first {@link start}; null while a deferred start has not happened. */
  #started: Promise<Elector> | null = null;
  #last: LeaderStatus = { state: 'candidate', leaderId: null, term: null };
  /** The generation of the leadership `#last` reports (null when not leading). */
  #lastGeneration: number | null = null;
  /** `seq` of the last native snapshot processed: they arrive in order; older ones are dropped. */
  #seq = -1;
  /**
   * This node's lease as the last accepted snapshot told it: term, native generation, deadline on
   * performance.now(). `#validUntil` is the earlier of that deadline and the heartbeat's bound.
   */
  #leaseTerm = 0;
  #leaseGeneration = -1;
  /** Reads the native step-down counter: `Atomics.load` on its memory, or a native call as a fallback. */
  #generationNow: () => number = () => -2;
  #leaseDeadline = -Infinity;
  #beatUntil = Infinity;
  #validUntil = -Infinity;
  /** release() calls in flight: while any is, no leader snapshot is accepted. */
  #releasing = 0;
  /** Leader snapshots up to this seq were decided before a release completed: never accepted. */
  #fenceSeq = -1;
  /** The event loop heartbeat (unref'd), while the `maxEventLoopStall` check is on. */
  #heartbeat: NodeJS.Timeout | null = null;
  /** Aborters of the signals of runWhileLeader, called when the leadership they run in ends. */
  readonly #onLoss = new Set<() => void>();
  /** Fires at `#validUntil` while a runWhileLeader runs: the local deadline passing has no event. */
  #lossTimer: NodeJS.Timeout | null = null;
  /** Holds the event loop open while the elector runs (the native status stream does not). */
  #keepAlive: NodeJS.Timeout | null = null;
  /** Called once when the elector stops for good (shutdown, or a failed start). */
  readonly #onStop = new Set<() => void>();
  #events$: Rx.Observable<LeadershipEvent> | undefined;
  /** Stopped for good: shut down, or the start failed. */
  #ended = false;
  /** Someone awaits the start (start(), ready(), connect()): a failure reaches them as a rejection. */
  #startAwaited = false;
  /** The election's name, for the job context (null: the app-wide election). */
  readonly #name: string | null;
  /** Leader jobs still running (runIfLeader, runWhileLeader): release and shutdown wait for them. */
  readonly #jobs = new Set<Promise<void>>();
  /** Where the core's log lines go, if anywhere. */
  #logger: LeaderElectorLogger | null = null;
  /** Undoes the metrics registration (set while the elector runs with `metrics`). */
  #untrackMetrics: (() => void) | null = null;
  /** Construction time, the `since` of the status before the start completed. */
  readonly #createdAt = Date.now();

  /**
   * Starts campaigning in the background on `source`: a connection string, or a TypeORM repository
   * whose DataSource settings (and, when `config.schema` is unset, whose table schema) are used.
   * Failures to start reject {@link ready} and are emitted as `error` when a listener exists; they are
   * never left unhandled. When nobody hears of a failure that way (no `error` listener, and neither
   * `ready()` nor `start()` called before it), it is emitted as a process warning with code
   * `LEADERLEASE_START_FAILED` rather than lost. With `{ start: false }` nothing happens until
   * {@link start} (used by `LeaderElectorService`, which starts with the Nest application).
   */
  constructor(
    source: string | RepositoryLike | NatsSource,
    config: LeaderElectorConfig = {},
    options: { start?: boolean; name?: string } = {},
  ) {
    super();
    this.#source = source;
    this.#config = config;
    this.#name = options.name ?? null;
    // A 'log' listener added or removed changes whether the native debug events are wanted.
    const plain = this as EventEmitter;
    plain.on('newListener', (event: string | symbol) => {
      if (event === 'log') queueMicrotask(() => this.#applyEventLevel());
    });
    plain.on('removeListener', (event: string | symbol) => {
      if (event === 'log') this.#applyEventLevel();
    });
    if (options.start !== false) this.#begin();
  }

  #begin(): Promise<Elector> {
    if (this.#started === null) {
      this.#keepAlive = setInterval(() => undefined, 2 ** 30);
      this.#started = keepAliveWhile(() => this.#start(this.#source, this.#config));
      // Kept handled: a failure is reported through ready(), release(), shutdown() and 'error', and, when
      // none of them is listening, as a process warning.
      this.#started.catch((reason: unknown) => {
        const err = fromNative(reason);
        this.#releaseKeepAlive();
        this.#stopHeartbeat();
        this.#stopMetrics();
        if (this.listenerCount('error') > 0) {
          this.emit('error', err);
        } else if (!this.#startAwaited) {
          process.emitWarning(`leaderlease: the elector could not start: ${err.name} [${err.code}]: ${err.message}`, {
            type: 'LeaderElectionWarning',
            code: 'LEADERLEASE_START_FAILED',
            detail: "Await ready() (or use LeaderElectorCore.connect) or listen for the 'error' event to handle it.",
          });
        }
        this.#stoppedForGood();
      });
    }
    return this.#started;
  }

  /**
   * Starts campaigning if not started yet (the constructor does unless told not to) and resolves once
   * campaigning; rejects with the named error if the start failed, or after {@link shutdown}.
   */
  async start(): Promise<void> {
    this.#startAwaited = true;
    if (this.#started === null && this.#stopped) {
      throw new ElectorShutDownError('the elector has been shut down');
    }
    await this.#begin();
  }

  async #start(source: string | RepositoryLike | NatsSource, config: LeaderElectorConfig): Promise<Elector> {
    let native: Elector;
    try {
      const options = toNativeOptions(config);
      const logger = config?.logger;
      if (logger !== undefined && logger !== null) {
        const problem = loggerProblem(logger);
        if (problem !== null) {
          throw new LeaderElectionConfigError(`invalid leader election config: \`logger\` ${problem}`);
        }
        this.#logger = logger;
      }
      const metrics = config?.metrics;
      if (metrics !== undefined && metrics !== null && metrics !== false) {
        // Checked (and prom-client loaded) before connecting, so that a missing peer fails the start.
        this.#untrackMetrics = trackMetrics(this, metrics === true ? {} : metrics, config.lockId ?? 1);
      }
      const onEvent = (e: ElectorEvent) => this.#onNativeEvent(e);
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
      native = nats !== null
        ? await addon.Elector.connectNats(nats.servers, nats.bucket ?? null, options, onEvent)
        : await addon.Elector.connectPg(connection, options, onEvent);
    } catch (err) {
      this.#stopMetrics();
      throw fromNative(err);
    }
    if (this.#stopped) {
      // shutdown() was called while connecting.
      await native.shutdown().catch(() => undefined);
    } else {
      this.#native = native;
      this.#applyEventLevel();
      this.#startHeartbeat(native);
      const view = native.generationView();
      this.#generationNow =
        view !== null && native.generationViewIsLive() ? () => Atomics.load(view, 0) : () => native.generation();
      native.onStateChange((s) => this.#onState(s));
      this.#onState(native.state());
    }
    return native;
  }

  /**
   * Beats the native event loop check from an unref'd timer, several times per `maxEventLoopStall`.
   * The JS bound counts from just before each beat reaches the native side, so `amILeader()` turns
   * false no later than the native check fails.
   */
  #startHeartbeat(native: Elector): void {
    const stall = native.maxEventLoopStall;
    if (!(stall > 0)) return;
    const beat = () => {
      this.#beatUntil = performance.now() + stall;
      native.heartbeat();
      this.#validUntil = Math.min(this.#leaseDeadline, this.#beatUntil);
    };
    beat();
    this.#heartbeat = setInterval(beat, Math.min(1000, Math.max(5, stall / 4)));
    this.#heartbeat.unref();
  }

  /** Whether the native debug events (one per renewal) are wanted. */
  #applyEventLevel(): void {
    const debug = typeof this.#logger?.debug === 'function' || this.listenerCount('log') > 0;
    this.#native?.setEventLevel(debug ? 'debug' : 'info');
  }

  /** One event of the native core: to the logger and the `'log'` listeners. Never throws. */
  #onNativeEvent(e: ElectorEvent): void {
    let event: LeaderElectionLogEvent;
    try {
      event = toLogEvent(e);
    } catch {
      return;
    }
    if (this.#logger !== null) {
      try {
        writeLog(this.#logger, event);
      } catch (err) {
        process.emitWarning(`leaderlease: the logger threw: ${String(err)}`);
      }
    }
    if (this.listenerCount('log') > 0) {
      try {
        this.emit('log', event);
      } catch (err) {
        process.emitWarning(`leaderlease: a 'log' listener threw: ${String(err)}`);
      }
    }
  }

  #stopMetrics(): void {
    const untrack = this.#untrackMetrics;
    this.#untrackMetrics = null;
    untrack?.();
  }

  #stopHeartbeat(): void {
    if (this.#heartbeat !== null) {
      clearInterval(this.#heartbeat);
      this.#heartbeat = null;
    }
  }

  /** Forgets the lease copy: `amILeader()` is false from now on, until a snapshot is accepted. */
  #dropLease(): void {
    this.#leaseDeadline = -Infinity;
    this.#validUntil = -Infinity;
  }

  /** Stops leading locally at once (release and shutdown), before the native layer confirms it. */
  #fence(): void {
    this.#dropLease();
    this.#leadershipLost();
  }

  /** Starts on the PostgreSQL server at `url` and resolves once campaigning. */
  static async connect(url: string, config: LeaderElectorConfig = {}): Promise<LeaderElectorCore> {
    const elector = new LeaderElectorCore(url, config);
    await elector.ready();
    return elector;
  }

  /**
   * Starts on NATS (`servers`, e.g. `nats://127.0.0.1:4222`), with the lease as a key in the JetStream
   * KV bucket `bucket` (default `leaderlease`), and resolves once campaigning. Same as
   * `new LeaderElectorCore({ nats: { servers, bucket } }, config)` and `ready()`. `servers` may list several
   * servers of a cluster, separated by commas.
   */
  static async connectNats(
    servers: string,
    config: LeaderElectorConfig & { bucket?: string } = {},
  ): Promise<LeaderElectorCore> {
    warnUnknownKeys(config, NATS_CONFIG_KEYS, 'connectNats config');
    const { bucket, ...rest } = config ?? {};
    const elector = new LeaderElectorCore({ nats: bucket !== undefined ? { servers, bucket } : { servers } }, rest);
    await elector.ready();
    return elector;
  }

  /**
   * Starts on the server of a TypeORM DataSource (see {@link connectionSettingsFromDataSource}: its url or
   * host/port/username/password/database, `ssl` with its certificates, `replication.master`, `extra`).
   */
  static async create(dataSource: DataSourceLike, config: LeaderElectorConfig = {}): Promise<LeaderElectorCore> {
    try {
      postgresOptions(dataSource);
    } catch (err) {
      throw fromNative(err);
    }
    const elector = new LeaderElectorCore({ manager: { dataSource } }, config);
    await elector.ready();
    return elector;
  }

  /**
   * The leadership events as an RxJS `Observable`:
   * - `{ type: 'elected', term }` when this node becomes leader,
   * - `{ type: 'revoked' }` when it stops leading (lease lost, {@link release}, {@link shutdown}),
   * - `{ type: 'leaderChanged', leaderId, term }` when another leader or a new term is observed (also
   *   when this node is elected).
   *
   * The same events, in the same order, as the EventEmitter's `elected`, `revoked` and `leaderChanged`.
   * It is hot: a subscriber sees the events from the moment it subscribes ({@link status} and
   * {@link amILeader} tell the state before). It completes when the elector stops for good
   * ({@link shutdown}, or a start that failed: {@link ready} rejects with the reason); subscribing after
   * that completes at once. Each subscription adds one listener per event, and unsubscribing removes
   * them. Also on `LeaderElectorService`, which is a `LeaderElectorCore`.
   *
   * rxjs is an optional peer dependency, loaded on first access: without it, reading `events$` throws a
   * `MissingPeerDependencyError` (`ERR_MISSING_DEPENDENCY`) that names `rxjs`.
   *
   * ```ts
   * elector.events$
   *   .pipe(filter((e) => e.type === 'elected'))
   *   .subscribe(({ term }) => startWorkers(term));
   * ```
   */
  get events$(): Rx.Observable<LeadershipEvent> {
    if (this.#events$ === undefined) {
      const rx = requirePeer<typeof Rx>('rxjs', 'LeaderElectorCore.events$');
      this.#events$ = new rx.Observable<LeadershipEvent>((subscriber) => {
        if (this.#ended) {
          subscriber.complete();
          return undefined;
        }
        const onElected = ({ term }: { term: number }) => subscriber.next({ type: 'elected', term });
        const onRevoked = () => subscriber.next({ type: 'revoked' });
        const onChanged = ({ leaderId, term }: LeaderIdentity) =>
          subscriber.next({ type: 'leaderChanged', leaderId, term });
        const onStop = () => subscriber.complete();
        this.on('elected', onElected);
        this.on('revoked', onRevoked);
        this.on('leaderChanged', onChanged);
        this.#onStop.add(onStop);
        return () => {
          this.off('elected', onElected);
          this.off('revoked', onRevoked);
          this.off('leaderChanged', onChanged);
          this.#onStop.delete(onStop);
        };
      });
    }
    return this.#events$;
  }

  /** Completes the observers of {@link events$}: the elector stopped for good. */
  #stoppedForGood(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const f of [...this.#onStop]) {
      try {
        f();
      } catch (err) {
        process.emitWarning(`leaderlease: an events$ observer threw on completion: ${String(err)}`);
      }
    }
    this.#onStop.clear();
  }

  /** Lets the process exit while this elector still runs (as `server.unref()` does). */
  unref(): this {
    this.#keepAlive?.unref();
    return this;
  }

  /** Undoes {@link unref}: the running elector keeps the process alive again. */
  ref(): this {
    this.#keepAlive?.ref();
    return this;
  }

  #releaseKeepAlive(): void {
    if (this.#keepAlive !== null) {
      clearInterval(this.#keepAlive);
      this.#keepAlive = null;
    }
  }

  /**
   * Resolves once the elector campaigns (starting it if its start was deferred); rejects with the named
   * error if it could not start.
   */
  async ready(): Promise<void> {
    await this.start();
  }

  /**
   * True only while this node holds an unexpired lease, by its local deadline: a cheap synchronous read,
   * no database access. False before the start completed and after shutdown, and once the event loop has
   * not run for `maxEventLoopStall` (so never later than the native side stops renewing for that reason).
   *
   * The deadline is a copy in JavaScript of the native one (never later than it), taken from the ordered
   * snapshots of the native layer. A copy alone would lag behind a loss the native side has decided but
   * whose snapshot is still queued for this thread (a renewal that found no row, a step-down for a stalled
   * loop): the copy would say true while native `isLeader()` says false. So the copy is trusted only while
   * the native step-down counter (bumped before the native clock clears) still equals the generation of
   * the snapshot it came from. That counter is read with `Atomics.load` on its own memory (an external
   * buffer), not with a native call: a sync napi call costs 5-20 times the rest of this function. The
   * deadline is compared first, so a follower does not even read it. See docs/design.md, "The Node.js
   * copy of leadership".
   */
  amILeader(): boolean {
    return performance.now() < this.#validUntil && this.#generationNow() === this.#leaseGeneration;
  }

  /** The fencing term of the current leadership, or null when not leading. */
  term(): number | null {
    return this.amILeader() ? this.#leaseTerm : null;
  }

  /**
   * The fence the database enforces: run it inside the transaction that does the leader's work, as the
   * last statement before COMMIT. It passes only while `term` (default: the current one) holds an
   * unexpired lease by the database clock, and share-locks the lease row until the transaction ends, so
   * nobody can take over before the commit. Otherwise it rejects with {@link FencedError}: roll back.
   *
   * `runner` is whatever runs SQL in that transaction and has `query(sql, params)`: a TypeORM
   * `EntityManager` of `dataSource.transaction(...)`, a `QueryRunner` after `startTransaction()`, or a
   * `pg` client after `BEGIN` (not a pool: outside a transaction the lock ends at once). Pass the `term`
   * the work saved when it began to require that very leadership. PostgreSQL only; the table's migration
   * must have run (it installs `leader_lease_fence`).
   *
   * ```ts
   * await dataSource.transaction(async (m) => {
   *   await m.insert(Report, { day });
   *   await elector.fence(m);
   * });
   * ```
   */
  async fence(runner: FenceRunner, term: number | null = this.term()): Promise<number> {
    const native = this.#native;
    if (this.#config.backend?.nats || isNatsSource(this.#source)) {
      throw new LeaderElectionConfigError('fence(): needs the PostgreSQL backend (the lease is in NATS here)');
    }
    if (!runner || typeof (runner as { query?: unknown }).query !== 'function') {
      throw new LeaderElectionConfigError('fence(runner): runner must have a query(sql, params) method (an EntityManager, a QueryRunner or a pg client)');
    }
    const lockId = native?.lockId ?? this.#config.lockId ?? 1;
    if (term === null || native === null) {
      throw new FencedError(`fenced: this node does not lead lock ${lockId}`, { lockId, term: null });
    }
    if (!Number.isSafeInteger(term) || term < 0) {
      throw new LeaderElectionConfigError(`fence(runner, term): term must be a non-negative safe integer (got ${term})`);
    }
    try {
      await runner.query(`SELECT ${quoteIdent(native.schema)}.leader_lease_fence($1, $2)`, [lockId, String(term)]);
    } catch (err) {
      const e = err as { code?: unknown; driverError?: { code?: unknown }; message?: unknown };
      const code = e?.code ?? e?.driverError?.code;
      if (code === FENCE_SQLSTATE) {
        throw new FencedError(`fenced: ${String(e.message ?? err)}`, { cause: err, lockId, term });
      }
      throw err;
    }
    return term;
  }

  /** The leader this node last observed (itself while leading), or null. */
  leader(): LeaderIdentity | null {
    const l = this.#native?.leader();
    return l ? { leaderId: l.leaderId, term: l.term } : null;
  }

  /**
   * The current status, and whether the store is reachable: `connected` is false from the first failed
   * store operation of this elector (renewal, read, acquisition, ...) until the next one that gets an
   * answer, `since` tells since when (ms since the epoch), `lastError` the last error. A leader finds out
   * at its next renewal, a follower at its next read (when the lease it saw expires, or at once when the
   * `LISTEN` connection breaks). Before the start completes and after shutdown: not connected.
   */
  status(): ElectorStatus {
    const native = this.#native;
    if (native) {
      const h = native.storeHealth();
      return { ...toStatus(native.status()), connected: h.connected, lastError: h.lastError ?? null, since: h.since };
    }
    return { ...this.#last, connected: false, lastError: null, since: this.#createdAt };
  }

  /** Milliseconds left to this node's local lease deadline while it leads (as {@link amILeader}), else null. */
  leaseRemaining(): number | null {
    return this.amILeader() ? Math.max(0, this.#validUntil - performance.now()) : null;
  }

  /** The lease duration in ms (the configured one, or the default), once started; else null. */
  get leaseDuration(): number | null {
    return this.#native?.leaseDuration ?? null;
  }

  /** This candidate's instance id, once started. */
  get instanceId(): string | null {
    return this.#native?.instanceId ?? null;
  }

  /**
   * Gives up leadership now, if held, so another candidate takes over; this node stays a candidate.
   * Does nothing on a follower or after shutdown. The process stays alive until it settles.
   */
  async release(): Promise<void> {
    return keepAliveWhile(() => this.#release());
  }

  async #release(): Promise<void> {
    const drainUntil = this.#drainDeadline();
    this.#fence();
    if (this.#started === null) return;
    this.#releasing++;
    let native: Elector | null = null;
    let doneSeq = -1;
    try {
      native = await this.#started;
      if (this.#stopped) return;
      await this.#drain(drainUntil);
      doneSeq = await native.release();
    } catch (err) {
      const e = fromNative(err);
      if (e.code === 'ERR_SHUT_DOWN') return;
      throw e;
    } finally {
      // Every snapshot up to the release's completion is fenced; those after it are new decisions.
      this.#releasing--;
      if (native !== null && this.#native === native) {
        const current = native.state();
        this.#fenceSeq = Math.max(this.#fenceSeq, doneSeq >= 0 ? doneSeq : current.seq);
        if (this.#releasing === 0) this.#onState(current);
      }
    }
  }

  /**
   * Stops campaigning for good: releases the lease if held and closes the connections. Idempotent; never
   * rejects because the start had failed. The process stays alive until it settles.
   */
  async shutdown(): Promise<void> {
    return keepAliveWhile(() => this.#shutdown());
  }

  async #shutdown(): Promise<void> {
    const drainUntil = this.#drainDeadline();
    this.#stopped = true;
    this.#fence();
    this.#releaseKeepAlive();
    this.#stopHeartbeat();
    this.#stopMetrics();
    if (this.#started === null) {
      this.#onStatus({ state: 'stopped', leaderId: null, term: null }, null);
      return;
    }
    let native: Elector;
    try {
      native = await this.#started;
    } catch {
      return;
    }
    await this.#drain(drainUntil);
    this.#native = null;
    try {
      await native.shutdown();
    } catch (err) {
      throw fromNative(err);
    }
    this.#onStatus({ state: 'stopped', leaderId: null, term: null }, null);
  }

  /**
   * Runs `fn(signal)` once this node leads, and aborts `signal` the moment leadership is lost (revoked,
   * released, expired by the local deadline, or shut down). Resolves with what `fn` returns; `fn` should
   * stop its work when the signal aborts. Waits for leadership first; rejects with
   * {@link ElectorShutDownError} if the elector stops before that, or with `options.signal`'s reason when
   * that aborts first.
   */
  async runWhileLeader<T>(
    fn: (signal: AbortSignal) => T | Promise<T>,
    options: { signal?: AbortSignal } = {},
  ): Promise<T> {
    await this.ready();
    await this.#untilLeader(options.signal);
    const controller = new AbortController();
    // Aborted when the leadership ends: by the native snapshot that ends it (the core cancelling the
    // leadership's work token publishes one), by release() and shutdown() at once, and by a timer at the
    // local deadline or heartbeat bound, which pass without an event. No polling.
    const lost = () => {
      this.#onLoss.delete(lost);
      if (!controller.signal.aborted) {
        controller.abort(new DOMException('leaderlease: leadership lost', 'AbortError'));
      }
    };
    const onOuterAbort = () => controller.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onOuterAbort, { once: true });
    // Aborted after leadership came and before the listener was added: 'abort' will not fire again.
    if (options.signal?.aborted) onOuterAbort();
    const context: LeaderJobContext = { signal: controller.signal, term: this.#leaseTerm, name: this.#name };
    let finished: () => void = () => undefined;
    const job = new Promise<void>((resolve) => (finished = resolve));
    this.#jobs.add(job);
    jobOf.set(context, { owner: this, job });
    try {
      if (this.amILeader()) {
        this.#onLoss.add(lost);
        this.#armLossTimer();
      } else {
        lost();
      }
      return await leaderJobContext.run(context, () => fn(controller.signal));
    } finally {
      options.signal?.removeEventListener('abort', onOuterAbort);
      lost();
      this.#jobs.delete(job);
      finished();
    }
  }

  /**
   * Runs `fn` now if this node leads, as a leader job: inside it (and everything it calls or awaits)
   * {@link LeaderElectorCore.current} gives its `{ signal, term, name }`; the signal aborts the moment
   * this leadership ends; and while the Promise it returns is pending, {@link release} and
   * {@link shutdown} wait for it (at most until the lease would have run out) before they give the
   * lease up, so that the next leader does not start while this job still runs. Returns
   * `{ ran: false }` without calling `fn` when this node does not lead. `@LeaderOnly()` methods run
   * through this.
   */
  runIfLeader<T>(fn: () => T): { ran: true; value: T } | { ran: false } {
    if (!this.amILeader()) return { ran: false };
    const controller = new AbortController();
    const lost = () => {
      this.#onLoss.delete(lost);
      if (!controller.signal.aborted) {
        controller.abort(new DOMException('leaderlease: leadership lost', 'AbortError'));
      }
    };
    this.#onLoss.add(lost);
    this.#armLossTimer();
    const context: LeaderJobContext = { signal: controller.signal, term: this.#leaseTerm, name: this.#name };
    let value: T;
    try {
      value = leaderJobContext.run(context, fn);
    } catch (err) {
      this.#onLoss.delete(lost);
      throw err;
    }
    if (value !== null && typeof (value as { then?: unknown })?.then === 'function') {
      const job: Promise<void> = Promise.resolve(value as PromiseLike<unknown>).then(
        () => undefined,
        () => undefined,
      );
      this.#jobs.add(job);
      jobOf.set(context, { owner: this, job });
      void job.then(() => {
        this.#onLoss.delete(lost);
        this.#jobs.delete(job);
      });
    } else {
      this.#onLoss.delete(lost);
    }
    return { ran: true, value };
  }

  /**
   * The leader job running in the current async call chain (a `@LeaderOnly()` method, a
   * `runWhileLeader` callback, or what they call): its abort signal, its term and the election's name
   * (`null` for the app-wide one); `undefined` outside one.
   */
  static current(): LeaderJobContext | undefined {
    return leaderJobContext.getStore();
  }

  /** How many leader jobs run now (see {@link runIfLeader}). */
  get runningJobs(): number {
    return this.#jobs.size;
  }

  /** Until when a release may wait for running jobs: the local deadline of the lease held now. */
  #drainDeadline(): number {
    return this.amILeader() ? this.#validUntil : -Infinity;
  }

  /**
   * Waits for the running leader jobs (their signals are aborted already) until `until` on
   * performance.now(); those still running then are left behind with a warning.
   */
  async #drain(until: number): Promise<void> {
    // A job that releases (or shuts down) its own elector is not waited for: it waits for the release.
    const context = leaderJobContext.getStore();
    const own = context !== undefined ? jobOf.get(context) : undefined;
    const others = () => [...this.#jobs].filter((j) => own?.owner !== this || j !== own.job);
    if (others().length === 0) return;
    const wait = until - performance.now();
    if (wait > 0) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, wait)));
      try {
        await Promise.race([Promise.all(others()), timeout]);
      } finally {
        clearTimeout(timer);
      }
    }
    const left = others().length;
    if (left > 0) {
      process.emitWarning(
        `leaderlease: ${left} leader job(s)${this.#name !== null ? ` of election '${this.#name}'` : ''} ` +
          'still running when the lease had to be given up (their signal is aborted); releasing anyway',
        { type: 'LeaderElectionWarning', code: 'LEADERLEASE_DRAIN_TIMEOUT' },
      );
    }
  }

  /** Calls the loss listeners: the leadership they ran in has ended. */
  #leadershipLost(): void {
    if (this.#lossTimer !== null) {
      clearTimeout(this.#lossTimer);
      this.#lossTimer = null;
    }
    for (const f of [...this.#onLoss]) f();
  }

  /** While runWhileLeader runs: a timer at `#validUntil` that calls the loss listeners if it has passed. */
  #armLossTimer(): void {
    if (this.#lossTimer !== null || this.#onLoss.size === 0) return;
    if (!this.amILeader()) return this.#leadershipLost();
    const wait = Math.max(1, Math.ceil(this.#validUntil - performance.now()));
    this.#lossTimer = setTimeout(() => {
      this.#lossTimer = null;
      this.#armLossTimer();
    }, wait);
    this.#lossTimer.unref();
  }

  /** Resolves when this node leads; rejects when it stops first or `signal` aborts. */
  #untilLeader(signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const check = () => {
        if (signal?.aborted) return done(signal.reason ?? new DOMException('aborted', 'AbortError'));
        if (this.amILeader()) return done();
        if (this.#stopped || this.status().state === 'stopped') {
          return done(new ElectorShutDownError('the elector has been shut down'));
        }
      };
      const done = (err?: unknown) => {
        this.off('status', check);
        signal?.removeEventListener('abort', check);
        if (err === undefined) resolve();
        else reject(err);
      };
      this.on('status', check);
      signal?.addEventListener('abort', check);
      check();
    });
  }

  /**
   * Applies one native snapshot. They arrive in the order the core decided them (some may be skipped,
   * none reordered), each complete, so the lease copy and the status are set together: an `elected`
   * listener sees amILeader() true. A leader snapshot is accepted (its lease copied) unless the elector
   * is shut down, a release is in flight or completed after it was decided (by `seq`), or it is already
   * stale: its deadline has passed or its leadership has ended natively (generation). Terms are never
   * compared: they may take any value after a database reset.
   */
  #onState(s: StateSnapshot): void {
    if (s.seq < this.#seq) return;
    this.#seq = s.seq;
    if (s.state === 'leader' && s.term != null && s.deadline != null) {
      if (!this.#stopped && this.#releasing === 0 && s.seq > this.#fenceSeq) {
        this.#leaseTerm = s.term;
        this.#leaseGeneration = s.generation;
        this.#leaseDeadline = localDeadline(s.deadline, nativeClockNow);
        this.#validUntil = Math.min(this.#leaseDeadline, this.#beatUntil);
      }
      if (this.#leaseGeneration === s.generation && this.amILeader()) {
        this.#onStatus({ state: 'leader', leaderId: s.leaderId ?? null, term: s.term }, s.generation);
      } else if (this.#last.state === 'leader') {
        // Not (or no longer) leading by this node's own rule, whatever the snapshot said.
        this.#dropLease();
        this.#onStatus({ state: 'candidate', leaderId: null, term: null }, null);
      }
      return;
    }
    this.#dropLease();
    this.#onStatus(toStatus(s), null);
  }

  #onStatus(next: LeaderStatus, generation: number | null): void {
    const prev = this.#last;
    const prevGeneration = this.#lastGeneration;
    const ended = prev.state === 'leader' && (next.state !== 'leader' || generation !== prevGeneration);
    const elected = next.state === 'leader' && (prev.state !== 'leader' || generation !== prevGeneration);
    if (!ended && !elected && next.state === prev.state && next.leaderId === prev.leaderId && next.term === prev.term) {
      return;
    }
    this.#last = next;
    this.#lastGeneration = generation;
    // Called from the native stream: a listener's exception must not escape into it.
    const safeEmit = <K extends keyof LeaderElectorEvents>(event: K, ...args: LeaderElectorEvents[K]) => {
      try {
        this.emit(event, ...(args as never));
      } catch (err) {
        process.emitWarning(`leaderlease: a '${String(event)}' listener threw: ${String(err)}`);
      }
    };
    if (ended) {
      this.#leadershipLost();
      safeEmit('revoked');
    }
    if (elected && next.term !== null) {
      safeEmit('elected', { term: next.term });
    }
    if (
      next.leaderId !== null &&
      next.term !== null &&
      (elected || next.leaderId !== prev.leaderId || next.term !== prev.term)
    ) {
      safeEmit('leaderChanged', { leaderId: next.leaderId, term: next.term });
    }
    safeEmit('status', next);
    if (next.state === 'stopped') this.#stoppedForGood();
  }
}
