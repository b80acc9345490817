export {
  LeaderElectorCore,
  connectionStringFromDataSource,
  type DataSourceLike,
  type LeaderElectorConfig,
  type LeaderElectorEvents,
  type LeaderIdentity,
  type LeaderStatus,
  type LeadershipEvent,
  type RepositoryLike,
} from './leader-elector.core.js';
export {
  DatabaseError,
  DatabaseUnreachableError,
  ElectorShutDownError,
  InvalidBucketError,
  LeaderElectionConfigError,
  LeaderElectionError,
  LeaderElectionTimeoutError,
  MissingPeerDependencyError,
  NotLeaderError,
  PermissionDeniedError,
  StoreError,
  TableMissingError,
  fromNative,
  type LeaderElectionErrorCode,
} from './errors.js';
export { upSql, downSql, errorCodes } from '../native/index.js';
export {
  LeaderLease,
  createLeaderLeaseEntity,
  createLeaderLeaseTable,
  LEADER_LEASE_TABLE,
} from './leader-lease.entity.js';
export { LeaderElectionMigrationBase } from './leader-election.migration.js';
export {
  LeaderElectorModule,
  type LeaderElectorModuleAsyncOptions,
  type LeaderElectorModuleOptions,
  type LeaderElectorOptionsFactory,
} from './leader-elector.module.js';
export { LeaderElectorService } from './leader-elector.service.js';
export { LeaderOnly, type LeaderOnlyOptions } from './leader-only.decorator.js';
export { LeaderGuard, type NotLeaderResponseBody } from './leader.guard.js';
export { LEADER_ELECTOR_MODULE_OPTIONS, LEADER_ONLY_METADATA } from './leader-elector.constants.js';
