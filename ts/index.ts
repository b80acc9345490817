export {
  LeaderElectorCore,
  connectionStringFromDataSource,
  type DataSourceLike,
  type LeaderElectorConfig,
  type LeaderElectorEvents,
  type LeaderIdentity,
  type LeaderStatus,
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
