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
  LeaderElectionConfigError,
  LeaderElectionError,
  LeaderElectionTimeoutError,
  PermissionDeniedError,
  TableMissingError,
  fromNative,
  type LeaderElectionErrorCode,
} from './errors.js';
export { upSql, downSql } from '../native/index.js';
