// `leaderlease/core`: the standalone elector and its errors, without the NestJS module, the TypeORM entity
// or the migration class, so that importing it loads none of NestJS, TypeORM or rxjs (rxjs is loaded only
// if `events$` is read). It loads the native addon (ts/native.ts: `UnsupportedPlatformError` where none fits).

export {
  LeaderElectorCore,
  connectionStringFromDataSource,
  FENCE_SQLSTATE,
  connectionSettingsFromDataSource,
  type SslOptions,
  type DataSourceLike,
  type FenceRunner,
  type ElectorStatus,
  type LeaderElectorConfig,
  type LeaderElectorEvents,
  type LeaderIdentity,
  type LeaderStatus,
  type LeadershipEvent,
  type NatsSource,
  type RepositoryLike,
} from './leader-elector.core.js';
export {
  DatabaseError,
  DatabaseUnreachableError,
  ElectorShutDownError,
  FencedError,
  InvalidBucketError,
  LeaderElectionConfigError,
  LeaderElectionError,
  LeaderElectionTimeoutError,
  MissingPeerDependencyError,
  NotLeaderError,
  PermissionDeniedError,
  ReadOnlyDatabaseError,
  StoreError,
  StoreUnreachableError,
  TableMissingError,
  UnsupportedServerError,
  UnsupportedPlatformError,
  fromNative,
  type LeaderElectionErrorCode,
} from './errors.js';
export { upSql, downSql } from './sql.js';
export { lockIdForName } from './lock-id.js';
export type { LeaderJobContext } from './leader-job.context.js';
export { METRIC_NAMES, type LeaderElectionMetricsOptions } from './metrics.js';
export type { LeaderElectionLogEvent, LeaderElectionLogLevel, LeaderElectorLogger } from './logging.js';
import { loadNative } from './native.js';

/** The error codes the native layer reports (each maps to its own subclass of `LeaderElectionError`). */
export const errorCodes: () => string[] = () => loadNative().errorCodes();
