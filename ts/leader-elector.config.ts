// The public settings, status and event types of an election, and the check of the settings' types
// into the native core's options (the native core checks their values).
import type { LeaderFleet } from './fleet.js';
import type { ElectorOptions } from '../native/index.js';
import { ELECTOR_CONFIG_KEYS, warnUnknownKeys } from './config-keys.js';
import { LeaderElectionConfigError, type LeaderElectionError } from './errors.js';
import type { LeaderElectionLogEvent, LeaderElectorLogger } from './logging.js';
import type { LeaderElectionMetricsOptions } from './metrics.js';

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
  /**
   * Makes this the fleet's election of `name` ({@link LeaderFleet}, PostgreSQL): it campaigns only while
   * the plan gives `name` to this member (or when the name has had no leader for one lease), and hands it
   * over when the plan moves it. Every member runs the same names on the same lock ids. The instance id
   * is the member id.
   */
  fleet?: { fleet: LeaderFleet; name: string };
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

/** `repository.manager.dataSource` (TypeORM 0.3+) or `repository.manager.connection`. */
export interface RepositoryLike {
  manager: { dataSource?: DataSourceLike; connection?: DataSourceLike };
  /** The entity's table: its schema is used when the config sets none. */
  metadata?: { schema?: string };
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

/** A {@link LeaderElectionConfigError} whose message starts with `invalid leader election config: `. */
export function configError(message: string): LeaderElectionConfigError {
  return new LeaderElectionConfigError(`invalid leader election config: ${message}`);
}

/**
 * Checks the types of the settings (the native core checks their values) and copies the known ones;
 * warns about unknown ones.
 */
export function toNativeOptions(config: LeaderElectorConfig | undefined): ElectorOptions {
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
