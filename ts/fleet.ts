/**
 * A fleet: this process as a member of the store, and named elections spread over the live members by a
 * plan (the core's `leaderlease::fleet`; docs/design.md, "Fleets"). Each member runs the same names; an
 * election started with `{ fleet: { fleet, name } }` campaigns only for the names the plan gives its
 * member, and a leader hands a name over (drained, then released) when the plan moves it.
 */
import type { Fleet as NativeFleet, FleetMember, PlannedName } from '../native/index.js';

import { warnUnknownKeys } from './config-keys.js';
import { connectionForUrl, connectionSettingsFromDataSource, storeSettings } from './connection-options.js';
import { LeaderElectionConfigError, fromNative } from './errors.js';
import { type DataSourceLike, type LeaderElectorConfig, type RepositoryLike, toNativeOptions } from './leader-elector.config.js';
import { loadNative } from './native.js';

export type { FleetMember, PlannedName };

/** Settings of this process's membership. Durations in milliseconds. */
export interface LeaderFleetOptions {
  /** The member id (default: hostname, process id and a random suffix); the fleet's elections use it as their instance id. */
  id?: string;
  /** The member's version: names prefer members of the newest version (a rolling deploy moves a singleton once). */
  version?: string;
  /** How long the membership lives without renewal (default 10000). */
  leaseDuration?: number;
  /** Time between renewals (default 3000); also how long a leader waits before handing a name over. */
  renewalInterval?: number;
  /** Schema of the member table: the elections' schema (default `public`). */
  schema?: string;
  /** Create the member table if missing (default true). */
  createTableOnInit?: boolean;
}

const FLEET_KEYS = ['id', 'version', 'leaseDuration', 'renewalInterval', 'schema', 'createTableOnInit'] as const;

/** This process's membership in a fleet and the plan of its named elections. */
export class LeaderFleet {
  readonly #native: NativeFleet;
  /** Holds the event loop open while the membership lasts (the native renewal does not). */
  #keepAlive: NodeJS.Timeout | null = setInterval(() => undefined, 2 ** 30);

  private constructor(native: NativeFleet) {
    this.#native = native;
  }

  /**
   * Joins the fleet on PostgreSQL: a connection string, a TypeORM DataSource, or a repository (its
   * DataSource). Creates the member table next to the lease table if missing.
   */
  static async join(source: string | DataSourceLike | RepositoryLike, options: LeaderFleetOptions = {}): Promise<LeaderFleet> {
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new LeaderElectionConfigError('invalid leader election config: the LeaderFleet.join options must be an object');
    }
    warnUnknownKeys(options, FLEET_KEYS, 'LeaderFleet.join options');
    try {
      const connection =
        typeof source === 'string'
          ? connectionForUrl(source, {})
          : await connectionSettingsFromDataSource(
              'options' in source ? source : (source.manager.dataSource ?? source.manager.connection!),
            );
      return new LeaderFleet(await loadNative().Fleet.joinPg(connection, options));
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * @internal Joins with the connection the elections of `config` on `source` use (its `ssl`, `pooler`
   * and operation timeout), so that the membership rides on their hub: the NestJS module's named
   * elections.
   */
  static async joinFor(
    source: string | RepositoryLike,
    config: LeaderElectorConfig,
    options: LeaderFleetOptions,
  ): Promise<LeaderFleet> {
    try {
      const native = toNativeOptions(config);
      const { connection } = await storeSettings(source, config, native);
      const renewal = config.renewalInterval ?? 3000;
      const operationTimeout = config.operationTimeout ?? Math.min(renewal / 2, 2000);
      const schema = options.schema ?? native.schema ?? undefined;
      return new LeaderFleet(
        await loadNative().Fleet.joinPg(connection, { ...options, ...(schema !== undefined ? { schema } : {}), operationTimeout }),
      );
    } catch (err) {
      throw fromNative(err);
    }
  }

  /** This member's id. */
  get id(): string {
    return this.#native.id();
  }

  /** The live members. */
  members(): FleetMember[] {
    return this.#native.members();
  }

  /** The plan of this process's names: each with the member that should lead it. */
  plan(): PlannedName[] {
    return this.#native.plan();
  }

  /** The names the plan gives this member. */
  owned(): string[] {
    return this.#native.owned();
  }

  /**
   * Leaves the fleet: the other members replan at once. Shut the fleet's elections down after it, so
   * that each release is taken at once by the name's new owner. Idempotent.
   */
  async leave(): Promise<void> {
    try {
      await this.#native.leave();
    } finally {
      if (this.#keepAlive !== null) clearInterval(this.#keepAlive);
      this.#keepAlive = null;
    }
  }

  /** @internal The native fleet (for the elections started with it). */
  get native(): NativeFleet {
    return this.#native;
  }
}
