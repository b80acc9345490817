// The full entry: the core, the NestJS module and its helpers, the TypeORM entity and migration class.
//
// What needs no native addon (errors, SQL helpers, entity, migration class, decorator, constants) is
// loaded at once. What needs it (the elector and everything built on it) is loaded on first access, so
// that a TypeORM migration run, or anything else that uses only the former, works where no prebuilt
// binary fits; reading one of the latter there throws `UnsupportedPlatformError` (ts/native.ts). Each lazy export is
// written in the one `Object.defineProperty(exports, name, { get: function () { return a.b; } })` shape
// Node's CommonJS export detection accepts, so ES modules can import it by name (an ES module reads every
// export when it imports this file: without the addon the lazy ones are then `undefined`, and a process
// warning `LEADERLEASE_NO_ADDON` says why). `leaderlease/core` is the light entry for standalone use.

import type * as ConnectionModule from './connection-options.js';
import type * as CoreModule from './leader-elector.core.js';
import type * as GuardModule from './leader.guard.js';
import type * as HealthModule from './health.js';
import type * as NestModule from './leader-elector.module.js';
import type * as ServiceModule from './leader-elector.service.js';
import type * as Native from '../native/index.js';
import type * as NativeModule from './native.js';

export * from './public-exports.js';
export type { LeaderElectionHealthDetails, LeaderElectionHealthOptions } from './health.js';
export {
  LeaderLease,
  createLeaderLeaseEntity,
  createLeaderLeaseTable,
  LEADER_LEASE_TABLE,
} from './leader-lease.entity.js';
export { LeaderElectionMigrationBase } from './leader-election.migration.js';
export { LeaderOnly, type LeaderOnlyOptions } from './leader-only.decorator.js';
export { NAMED_LOCK_ID_BASE } from './lock-id.js';
export type { NamedElectionOptions, SpreadOptions } from './named-elections.js';
export { LEADER_ELECTOR_MODULE_OPTIONS, LEADER_ONLY_METADATA } from './leader-elector.constants.js';
export type {
  LeaderElectorModuleAsyncOptions,
  LeaderElectorModuleOptions,
  LeaderElectorOptionsFactory,
} from './leader-elector.module.js';
export type { NotLeaderResponseBody } from './leader.guard.js';

// The lazy exports: each a value (declared here, defined by the getters below) and, for the classes, the
// instance type of the same name.
export declare const LeaderElectorCore: typeof CoreModule.LeaderElectorCore;
export type LeaderElectorCore = CoreModule.LeaderElectorCore;
export declare const connectionStringFromDataSource: typeof ConnectionModule.connectionStringFromDataSource;
export declare const LeaderElectorModule: typeof NestModule.LeaderElectorModule;
export type LeaderElectorModule = NestModule.LeaderElectorModule;
export declare const LeaderElectorService: typeof ServiceModule.LeaderElectorService;
export type LeaderElectorService = ServiceModule.LeaderElectorService;
export declare const LeaderGuard: typeof GuardModule.LeaderGuard;
export type LeaderGuard = GuardModule.LeaderGuard;
export declare const errorCodes: typeof Native.errorCodes;
export declare const LeaderElectionHealthIndicator: typeof HealthModule.LeaderElectionHealthIndicator;
export type LeaderElectionHealthIndicator = HealthModule.LeaderElectionHealthIndicator;

let warned = false;

/** `get()`, which loads what needs the addon; a failure is thrown again, and reported once as a process warning. */
function load<T>(get: () => T): T {
  try {
    return get();
  } catch (err) {
    if (!warned) {
      warned = true;
      process.emitWarning(
        `leaderlease: the native addon could not be loaded, so LeaderElectorCore, LeaderElectorModule, ` +
          `LeaderElectorService, LeaderGuard, LeaderElectionHealthIndicator, connectionStringFromDataSource and ` +
          `errorCodes are unavailable ` +
          `(the migration class, the entity, upSql/downSql and the errors work without it): ${String(err)}`,
        { code: 'LEADERLEASE_NO_ADDON' },
      );
    }
    throw err;
  }
}

/** The modules that need the addon, each required on first access (Node caches it after that). */
const lazy = {
  get LeaderElectorCore() {
    return load(() => (require('./leader-elector.core.js') as typeof CoreModule).LeaderElectorCore);
  },
  get connectionStringFromDataSource() {
    // Needs no addon itself, but is documented among what needs it (it came from the elector's module),
    // so it still loads (and fails without) the addon.
    return load(() => {
      (require('./native.js') as typeof NativeModule).loadNative();
      return (require('./connection-options.js') as typeof ConnectionModule).connectionStringFromDataSource;
    });
  },
  get LeaderElectorModule() {
    return load(() => (require('./leader-elector.module.js') as typeof NestModule).LeaderElectorModule);
  },
  get LeaderElectorService() {
    return load(() => (require('./leader-elector.service.js') as typeof ServiceModule).LeaderElectorService);
  },
  get LeaderGuard() {
    return load(() => (require('./leader.guard.js') as typeof GuardModule).LeaderGuard);
  },
  get LeaderElectionHealthIndicator() {
    return load(() => (require('./health.js') as typeof HealthModule).LeaderElectionHealthIndicator);
  },
  get errorCodes() {
    return load(() => (require('./native.js') as typeof NativeModule).loadNative().errorCodes);
  },
};

Object.defineProperty(exports, 'LeaderElectorCore', { enumerable: true, get: function () { return lazy.LeaderElectorCore; } });
Object.defineProperty(exports, 'connectionStringFromDataSource', { enumerable: true, get: function () { return lazy.connectionStringFromDataSource; } });
Object.defineProperty(exports, 'LeaderElectorModule', { enumerable: true, get: function () { return lazy.LeaderElectorModule; } });
Object.defineProperty(exports, 'LeaderElectorService', { enumerable: true, get: function () { return lazy.LeaderElectorService; } });
Object.defineProperty(exports, 'LeaderGuard', { enumerable: true, get: function () { return lazy.LeaderGuard; } });
Object.defineProperty(exports, 'LeaderElectionHealthIndicator', { enumerable: true, get: function () { return lazy.LeaderElectionHealthIndicator; } });
Object.defineProperty(exports, 'errorCodes', { enumerable: true, get: function () { return lazy.errorCodes; } });
