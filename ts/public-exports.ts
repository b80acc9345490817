// The public exports that both entries share: `leaderlease` (ts/index.ts) and `leaderlease/core`
// (ts/core.ts) re-export all of these, and each adds its own. Nothing here loads the native addon, so the
// full entry can load it at once (see ts/index.ts).
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
export type {
  DataSourceLike,
  ElectorStatus,
  LeaderElectorConfig,
  LeaderElectorEvents,
  LeaderIdentity,
  LeaderStatus,
  LeadershipEvent,
  RepositoryLike,
} from './leader-elector.config.js';
export type { FenceRunner } from './fence.js';
export type { NatsSource } from './nats-source.js';
export { LeaderFleet, type LeaderFleetOptions, type FleetMember, type PlannedName } from './fleet.js';
