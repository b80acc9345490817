/**
 * Errors of leaderlease: named `Error` subclasses, each with a stable `code`.
 *
 * The native binding reports every failure as an `Error` whose message starts with the code in brackets
 * (`[ERR_INVALID_CONFIG] ...`); {@link fromNative} turns that into the matching subclass.
 */

/** The stable codes, one per kind of failure. */
export type LeaderElectionErrorCode =
  | 'ERR_INVALID_CONFIG'
  | 'ERR_DATABASE_UNREACHABLE'
  | 'ERR_TABLE_MISSING'
  | 'ERR_PERMISSION_DENIED'
  | 'ERR_READ_ONLY'
  | 'ERR_TIMEOUT'
  | 'ERR_DATABASE'
  | 'ERR_STORE_UNREACHABLE'
  | 'ERR_STORE'
  | 'ERR_INVALID_BUCKET'
  | 'ERR_UNSUPPORTED_SERVER'
  | 'ERR_SHUT_DOWN'
  | 'ERR_FENCED'
  | 'ERR_MISSING_DEPENDENCY'
  | 'ERR_NOT_LEADER'
  | 'ERR_UNSUPPORTED_PLATFORM'
  | 'ERR_INTERNAL';

/** Base class of every error leaderlease throws or rejects with. */
export class LeaderElectionError extends Error {
  readonly code: LeaderElectionErrorCode;

  constructor(code: LeaderElectionErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A setting broke a rule; the message names the setting (`leaseDuration`, `lockId`, ...). */
export class LeaderElectionConfigError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INVALID_CONFIG', message, options);
  }
}

/**
 * PostgreSQL could not be reached at start (refused, unknown host, bad credentials, timeout). NATS reports
 * {@link StoreUnreachableError} instead.
 */
export class DatabaseUnreachableError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DATABASE_UNREACHABLE', message, options);
  }
}

/** The lease table is missing or outdated and `createTableOnInit` is off: run the migration. */
export class TableMissingError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_TABLE_MISSING', message, options);
  }
}

/** The database user lacks a privilege the election needs (the message says which). */
export class PermissionDeniedError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PERMISSION_DENIED', message, options);
  }
}

/**
 * The server is a read-only standby (or its transactions are read-only): leases are written, so the elector
 * needs the primary. The message names the server.
 */
export class ReadOnlyDatabaseError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_READ_ONLY', message, options);
  }
}

/** A database operation did not finish within the operation timeout. */
export class LeaderElectionTimeoutError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_TIMEOUT', message, options);
  }
}

/** The database answered with an error. */
export class DatabaseError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DATABASE', message, options);
  }
}

/**
 * A store other than PostgreSQL (NATS) could not be reached at start: refused, unknown host, no server
 * answering in time, an address that does not parse. The message names the servers.
 */
export class StoreUnreachableError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STORE_UNREACHABLE', message, options);
  }
}

/** An operation on a store other than PostgreSQL (NATS) failed: the server answered with an error. */
export class StoreError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STORE', message, options);
  }
}

/** A NATS KV bucket cannot hold leases as configured (no `max_age`, or another lease duration). */
export class InvalidBucketError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INVALID_BUCKET', message, options);
  }
}

/** The server is older than leaderlease supports (NATS before 2.10); the message names its version. */
export class UnsupportedServerError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_UNSUPPORTED_SERVER', message, options);
  }
}

/** The elector has been shut down. */
export class ElectorShutDownError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_SHUT_DOWN', message, options);
  }
}

/**
 * The database refused a fenced transaction (see `LeaderElectorCore.fence`): the term does not hold an
 * unexpired lease, or this node did not lead when asked. Roll the transaction back: the work belongs to
 * the leader that now holds the lease. `term` is the term that was checked (null: this node did not lead).
 */
export class FencedError extends LeaderElectionError {
  readonly lockId: number | null;
  readonly term: number | null;

  constructor(message: string, options?: { cause?: unknown; lockId?: number; term?: number | null }) {
    super('ERR_FENCED', message, options);
    this.lockId = options?.lockId ?? null;
    this.term = options?.term ?? null;
  }
}

/**
 * A feature needs an optional peer dependency that is not installed (`typeorm`, `@nestjs/common`, ...);
 * the message names the package to install. Raised by this package itself, never by the native layer.
 */
export class MissingPeerDependencyError extends LeaderElectionError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_MISSING_DEPENDENCY', message, options);
  }
}

/**
 * A `@LeaderOnly({ onFollower: 'throw' })` method was called on an instance that does not lead. Carries
 * the leader this instance last saw, where known. Raised by this package itself, never by the native layer.
 */
export class NotLeaderError extends LeaderElectionError {
  readonly leaderId: string | null;
  readonly term: number | null;

  constructor(message: string, leader: { leaderId: string; term: number } | null = null) {
    super('ERR_NOT_LEADER', message);
    this.leaderId = leader?.leaderId ?? null;
    this.term = leader?.term ?? null;
  }
}

/**
 * No prebuilt native addon could be loaded on this platform: none is built for it, or its platform package
 * (`leaderlease-<platform>`, an optional dependency) is missing or did not load. The message names the
 * platform, architecture and C library found, the prebuilt platforms and the remedy; `cause` is the
 * loader's own error. Everything that needs no addon (`upSql`/`downSql`, `LeaderElectionMigrationBase`,
 * the entity, the errors) still works. Raised by this package itself (ts/native.ts).
 */
export class UnsupportedPlatformError extends LeaderElectionError {
  /** `process.platform`, e.g. `linux`. */
  readonly platform: string;
  /** `process.arch`, e.g. `arm64`. */
  readonly arch: string;
  /** On Linux the C library found, `glibc <version>` or `musl`; otherwise null. */
  readonly libc: string | null;
  /** The platform tag looked for, e.g. `linux-arm64-musl`. */
  readonly target: string;
  /** The platform tags a prebuilt addon exists for. */
  readonly supported: readonly string[];

  constructor(
    message: string,
    found: { platform: string; arch: string; libc: string | null; target: string; supported: readonly string[] },
    options?: { cause?: unknown },
  ) {
    super('ERR_UNSUPPORTED_PLATFORM', message, options);
    this.platform = found.platform;
    this.arch = found.arch;
    this.libc = found.libc;
    this.target = found.target;
    this.supported = found.supported;
  }
}

const BY_CODE: Record<string, new (message: string, options?: { cause?: unknown }) => LeaderElectionError> = {
  ERR_INVALID_CONFIG: LeaderElectionConfigError,
  ERR_DATABASE_UNREACHABLE: DatabaseUnreachableError,
  ERR_TABLE_MISSING: TableMissingError,
  ERR_PERMISSION_DENIED: PermissionDeniedError,
  ERR_READ_ONLY: ReadOnlyDatabaseError,
  ERR_TIMEOUT: LeaderElectionTimeoutError,
  ERR_DATABASE: DatabaseError,
  ERR_STORE_UNREACHABLE: StoreUnreachableError,
  ERR_STORE: StoreError,
  ERR_INVALID_BUCKET: InvalidBucketError,
  ERR_UNSUPPORTED_SERVER: UnsupportedServerError,
  ERR_SHUT_DOWN: ElectorShutDownError,
  ERR_FENCED: FencedError,
};

const CODED_MESSAGE = /^\[(ERR_[A-Z_]+)\] ([\s\S]*)$/;

/**
 * Converts an error thrown by the native binding into the named subclass for its code. Errors without a
 * code (a bug, or a value the binding could not convert) become a `LeaderElectionError` with code
 * `ERR_INTERNAL`, the original kept as `cause`.
 */
export function fromNative(err: unknown): LeaderElectionError {
  if (err instanceof LeaderElectionError) {
    return err;
  }
  const message = err instanceof Error ? err.message : String(err);
  const m = CODED_MESSAGE.exec(message);
  if (m) {
    const Ctor = BY_CODE[m[1]!];
    // A code this version does not know yet keeps its code on the base class.
    return Ctor ? new Ctor(m[2]!) : new LeaderElectionError(m[1] as LeaderElectionErrorCode, m[2]!);
  }
  return new LeaderElectionError('ERR_INTERNAL', message, { cause: err });
}
