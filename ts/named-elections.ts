import { warnUnknownKeys } from './config-keys.js';
import { LeaderElectionConfigError } from './errors.js';
import type { LeaderFleet, LeaderFleetOptions } from './fleet.js';
import type { LeaderElectorConfig } from './leader-elector.config.js';
import type { LeaderElectorService } from './leader-elector.service.js';
import { checkLockId } from './leader-only.decorator.js';
import { lockIdForName } from './lock-id.js';

/** The keys of `spread`. */
const SPREAD_KEYS = ['checkInterval', 'discoveryInterval', 'version'] as const;

/** Default `lockId` of the app-wide election (the native core's). */
const DEFAULT_LOCK_ID = 1;

/** A named election and its own settings (`LeaderElectorModule.forFeature`). */
export interface NamedElectionOptions extends Omit<LeaderElectorConfig, 'instanceId'> {
  /** The election's name: `@LeaderOnly(name)`, `LeaderGuard.for(name)`, `election(name)`. */
  name: string;
}

/**
 * How the named elections of an app are spread over its instances (`LeaderElectorModule.forRoot({
 * spread })`). `true` (default) or `false`, or the settings below. On PostgreSQL the instances are the
 * members of a fleet ({@link LeaderFleet}: a member row each, next to the lease table) and each name is
 * led by the member the plan gives it (docs/design.md, "Fleets"); the two settings below apply on NATS,
 * where the instances still find each other by giving names up now and then, and on PostgreSQL only when
 * the member table is missing (a database migrated before it existed, with `createTableOnInit: false`).
 */
export interface SpreadOptions {
  /** How often an instance looks at the spread, in ms (default: the `renewalInterval`). */
  checkInterval?: number;
  /**
   * How long, in ms, an instance that leads more than its share of the names it sees waits between
   * giving one up to find instances that lead none (default 4 x `leaseDuration`; doubled after each
   * search that found nobody new, up to 64 x). The first search is one to two leases after the start.
   */
  discoveryInterval?: number;
  /**
   * This instance's version as a fleet member (PostgreSQL): names prefer members of the newest version
   * (compared piecewise, numbers by value: `1.10` after `1.9`), so during a rolling deploy a name led by
   * one instance (a singleton) moves once, to the first instance of the new version, and stays there.
   */
  version?: string;
}

/** The forFeature declarations: found by the explorer among the app's providers. */
export class NamedElectionDeclaration {
  constructor(readonly elections: readonly NamedElectionOptions[]) {}
}

interface Declared {
  settings: Omit<NamedElectionOptions, 'name'>;
  /** Where it was declared, for error messages. */
  where: string[];
}

/** Makes the elector of one named election (the module decides the source and the base settings). */
export type NamedElectorFactory = (config: LeaderElectorConfig, name: string) => LeaderElectorService;

/** Joins the app's fleet on the module's store (null where there is none yet: NATS). */
export type FleetJoiner = ((options: LeaderFleetOptions) => Promise<LeaderFleet>) | null;

/**
 * The named elections of one app: each its own election on the app's hub (one pool, batched renewals),
 * declared by `@LeaderOnly(name)` and `forFeature`, started with the app, each with a lock id from its
 * name unless set, and spread over the instances (see {@link SpreadOptions}).
 */
export class NamedElections {
  readonly #declared = new Map<string, Declared>();
  readonly #electors = new Map<string, LeaderElectorService>();
  /**
   * The settings each elector was made with (the elector reads them when it starts): one made before
   * the app-wide election started gets the app's instance id in start().
   */
  readonly #configs = new Map<string, LeaderElectorConfig>();
  /** Lock id keys in use: `<store>|<lockId>` -> election name (`null`: the app-wide election). */
  readonly #lockOwners = new Map<string, string | null>();
  #started = false;
  #stopped = false;
  #instanceId: string | undefined;
  #spreadTimer: NodeJS.Timeout | null = null;
  #spread: Required<Omit<SpreadOptions, 'version'>> | null;
  /** `spread.version`. */
  #version: string | undefined;
  #nextShed = 0;
  #nextDiscovery = Infinity;
  #discoveryWait = 0;
  #probe: { name: string; known: Set<string> } | null = null;
  readonly #lease: number;
  /** The app's fleet, while the names are spread by membership. */
  #fleet: LeaderFleet | null = null;

  constructor(
    private readonly app: LeaderElectorService,
    private readonly base: LeaderElectorConfig,
    private readonly make: NamedElectorFactory,
    spread: boolean | SpreadOptions | undefined,
    private readonly joinFleet: FleetJoiner = null,
  ) {
    const renewal = base.renewalInterval ?? 3000;
    const lease = base.leaseDuration ?? 10000;
    this.#lease = lease;
    if (spread === false) {
      this.#spread = null;
    } else {
      const o = spread === true || spread === undefined ? {} : spread;
      if (o === null || typeof o !== 'object') {
        throw new LeaderElectionConfigError(
          `invalid leader election config: \`spread\` must be true, false or an object (got ${typeof spread})`,
        );
      }
      warnUnknownKeys(o, SPREAD_KEYS, 'LeaderElectorModule `spread` option');
      if (o.version !== undefined && (typeof o.version !== 'string' || o.version === '')) {
        throw new LeaderElectionConfigError(
          `invalid leader election config: \`spread.version\` must be a non-empty string (got ${JSON.stringify(o.version)})`,
        );
      }
      this.#version = o.version;
      for (const k of ['checkInterval', 'discoveryInterval'] as const) {
        const v = o[k];
        if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 10)) {
          throw new LeaderElectionConfigError(
            `invalid leader election config: \`spread.${k}\` must be a number of milliseconds, at least 10 (got ${String(v)})`,
          );
        }
      }
      this.#spread = {
        checkInterval: o.checkInterval ?? renewal,
        discoveryInterval: o.discoveryInterval ?? 4 * lease,
      };
    }
  }

  /** Records a named election and its settings; the same name may be declared in several places. */
  declare(name: string, settings: Omit<NamedElectionOptions, 'name'>, where: string): void {
    if (typeof name !== 'string' || name === '') {
      throw new LeaderElectionConfigError(
        `invalid leader election config: ${where}: \`name\` must be a non-empty string (got ${JSON.stringify(name)})`,
      );
    }
    if (settings.lockId !== undefined) checkLockId(settings.lockId, where);
    const seen = this.#declared.get(name);
    if (seen === undefined) {
      this.#declared.set(name, { settings: { ...settings }, where: [where] });
    } else {
      for (const [k, v] of Object.entries(settings) as [keyof typeof settings, unknown][]) {
        if (v === undefined) continue;
        const had = seen.settings[k];
        if (had !== undefined && JSON.stringify(had) !== JSON.stringify(v)) {
          throw new LeaderElectionConfigError(
            `invalid leader election config: \`${k}\` of election '${name}' is ${JSON.stringify(had)} in ` +
              `${seen.where.join(', ')} but ${JSON.stringify(v)} in ${where}: declare it once`,
          );
        }
        (seen.settings as Record<string, unknown>)[k] = v;
      }
      seen.where.push(where);
    }
    if (this.#started) this.#create(name);
  }

  /** The names declared or started so far. */
  names(): string[] {
    return [...new Set([...this.#declared.keys(), ...this.#electors.keys()])];
  }

  /** The elector of `name` if it exists (no side effects). */
  get(name: string): LeaderElectorService | undefined {
    return this.#electors.get(name);
  }

  /** The elector of `name`: made (and, once the app runs, started) on first use. */
  election(name: string): LeaderElectorService {
    const e = this.#electors.get(name);
    if (e !== undefined) return e;
    if (this.#stopped) {
      throw new LeaderElectionConfigError(
        `invalid leader election config: election '${name}' was asked for after the app shut down`,
      );
    }
    this.declare(name, {}, `election('${name}')`);
    return this.#create(name);
  }

  /** The settings of `name`'s election: the module's, then its own, with its lock id. */
  #config(name: string): LeaderElectorConfig {
    const own = this.#declared.get(name)?.settings ?? {};
    const config: LeaderElectorConfig = { ...this.base, ...own, lockId: own.lockId ?? lockIdForName(name) };
    if (this.#fleet !== null) config.fleet = { fleet: this.#fleet, name };
    const id = this.base.instanceId ?? this.#instanceId ?? this.app.instanceId ?? undefined;
    if (id !== undefined) config.instanceId = id;
    else delete config.instanceId;
    // Metrics of a named election carry its name (not its derived lock id), unless its own settings name one.
    const metrics = config.metrics;
    if (metrics !== undefined && metrics !== null && metrics !== false && (own.metrics === undefined || metrics === true || metrics.name === undefined)) {
      config.metrics = { ...(metrics === true ? {} : metrics), name };
    }
    return config;
  }

  /** Where a lock id lives: the same id in another schema, bucket or server is another lease. */
  static #store(config: LeaderElectorConfig): string {
    const nats = config.backend?.nats;
    return nats ? `nats:${nats.servers}|${nats.bucket ?? ''}` : `pg:${config.schema ?? ''}`;
  }

  /** Claims the lock id of `name` (null: the app-wide election); a second owner is a config error. */
  #claim(name: string | null, config: LeaderElectorConfig): void {
    const lockId = config.lockId ?? DEFAULT_LOCK_ID;
    const key = `${NamedElections.#store(config)}|${lockId}`;
    if (this.#lockOwners.has(key) && this.#lockOwners.get(key) !== name) {
      const other = this.#lockOwners.get(key) ?? null;
      const what = (n: string | null) =>
        n === null ? 'the app-wide election (LeaderElectorModule.forRoot)' : `election '${n}'`;
      const derived = (n: string | null) =>
        n !== null && this.#declared.get(n)?.settings.lockId === undefined ? ' (derived from its name)' : '';
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`lockId\` ${lockId} of ${what(name)}${derived(name)} is already the lock ` +
          `id of ${what(other)}${derived(other)}: two elections would share one lease; give one of them its own ` +
          '`lockId` (LeaderElectorModule.forFeature, or @LeaderOnly({ name, lockId }))',
      );
    }
    this.#lockOwners.set(key, name);
  }

  #create(name: string): LeaderElectorService {
    const existing = this.#electors.get(name);
    if (existing !== undefined) return existing;
    const config = this.#config(name);
    this.#claim(name, config);
    const elector = this.make(config, name);
    this.#electors.set(name, elector);
    this.#configs.set(name, config);
    if (this.#started) {
      elector.start().catch(() => undefined); // its failure is reported by ready(), 'error' or a warning
      this.#startSpreading();
    }
    return elector;
  }

  /**
   * Checks every declared lock id against the others and the app-wide election's, then starts all
   * named elections (after the app-wide one, whose instance id they share) and resolves once they
   * campaign; a failure to start rejects, which fails the app's start.
   */
  async start(): Promise<void> {
    if (this.#started || this.#declared.size === 0) {
      this.#started = true;
      return;
    }
    this.#claim(null, { ...this.base, lockId: this.base.lockId ?? DEFAULT_LOCK_ID });
    for (const name of this.#declared.keys()) this.#claim(name, this.#config(name));
    await this.app.ready();
    this.#instanceId = this.app.instanceId ?? undefined;
    await this.#joinFleet();
    for (const [name, config] of this.#configs) {
      if (config.instanceId === undefined && this.#instanceId !== undefined) config.instanceId = this.#instanceId;
      if (this.#fleet !== null) config.fleet = { fleet: this.#fleet, name };
    }
    this.#started = true;
    for (const name of this.#declared.keys()) this.#create(name);
    try {
      await Promise.all([...this.#electors.values()].map((e) => e.start()));
    } catch (err) {
      // The app does not start: leave nothing running (nothing may shut these down later).
      await this.shutdown().catch(() => undefined);
      throw err;
    }
    this.#startSpreading();
  }

  /** Hands every named leadership over (each after its running jobs ended, see release()). */
  async release(): Promise<void> {
    this.#stopSpreading();
    await Promise.all([...this.#electors.values()].map((e) => e.release()));
  }

  /**
   * Stops every named election: the fleet is left first (the other instances replan at once), so that
   * each name's release is taken at once by its new owner.
   */
  async shutdown(): Promise<void> {
    this.#stopped = true;
    this.#stopSpreading();
    const fleet = this.#fleet;
    this.#fleet = null;
    await fleet?.leave().catch(() => undefined);
    await Promise.all([...this.#electors.values()].map((e) => e.shutdown()));
  }

  /**
   * Joins the app's fleet (member id: the app's instance id; the module's schema and timings), unless
   * spreading is off or the store has none. Without the member table (createTableOnInit: false on a
   * database migrated before it existed) the names are spread by probing, with a warning saying so.
   */
  async #joinFleet(): Promise<void> {
    if (this.#spread === null || this.joinFleet === null || this.#fleet !== null) return;
    const options: LeaderFleetOptions = {};
    if (this.#instanceId !== undefined) options.id = this.#instanceId;
    if (this.#version !== undefined) options.version = this.#version;
    if (this.base.leaseDuration !== undefined) options.leaseDuration = this.base.leaseDuration;
    if (this.base.renewalInterval !== undefined) options.renewalInterval = this.base.renewalInterval;
    if (this.base.createTableOnInit !== undefined) options.createTableOnInit = this.base.createTableOnInit;
    try {
      this.#fleet = await this.joinFleet(options);
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e?.code !== 'ERR_TABLE_MISSING') throw err;
      process.emitWarning(
        `leaderlease: the named elections are spread by probing, not by membership: ${e.message ?? String(err)} ` +
          '(run the migration again, or let the module create the table: createTableOnInit)',
        { type: 'LeaderElectionWarning', code: 'LEADERLEASE_NO_FLEET' },
      );
    }
  }

  #startSpreading(): void {
    const spread = this.#spread;
    if (spread === null || this.#fleet !== null || this.#spreadTimer !== null || this.#stopped) return;
    this.#discoveryWait = spread.discoveryInterval;
    // The first search one to two leases after the start (instances that start together are found
    // early); later ones after `discoveryInterval`, doubled after each that found nobody new.
    this.#nextDiscovery = Date.now() + this.#lease * (1 + Math.random());
    this.#spreadTimer = setInterval(() => this.#rebalance(), spread.checkInterval);
    this.#spreadTimer.unref();
  }

  #stopSpreading(): void {
    if (this.#spreadTimer !== null) {
      clearInterval(this.#spreadTimer);
      this.#spreadTimer = null;
    }
  }

  /**
   * One look at the spread. `P` = the instances seen leading a name (this one included), `N` = the
   * names. An instance that leads more than `ceil(N / P)` gives one name up (a release: the others
   * take it at once, this one stands back). One that leads at least two and more than
   * `ceil(N / (P + 1))` gives one up now and then to find instances that lead nothing (they are
   * invisible otherwise); when nobody new took it, it waits twice as long before the next search.
   */
  #rebalance(): void {
    const spread = this.#spread;
    const me = this.#instanceId ?? this.app.instanceId;
    if (spread === null || this.#stopped || me === null || me === undefined) return;
    const leaders = new Map<string, number>([[me, 0]]);
    const mine: LeaderElectorService[] = [];
    for (const e of this.#electors.values()) {
      if (e.amILeader()) {
        mine.push(e);
        leaders.set(me, (leaders.get(me) ?? 0) + 1);
      } else {
        const l = e.leader();
        if (l !== null && l.leaderId !== me) leaders.set(l.leaderId, (leaders.get(l.leaderId) ?? 0) + 1);
      }
    }
    const now = Date.now();
    const probe = this.#probe;
    if (probe !== null) {
      const leader = this.#electors.get(probe.name)?.leader()?.leaderId;
      if (leader !== undefined) {
        this.#probe = null;
        if (leader !== me && !probe.known.has(leader)) {
          this.#discoveryWait = spread.discoveryInterval;
        } else {
          this.#discoveryWait = Math.min(this.#discoveryWait * 2, 64 * spread.discoveryInterval);
        }
        this.#nextDiscovery = now + this.#discoveryWait;
      }
    }
    const n = this.#electors.size;
    const k = mine.length;
    if (n < 2 || k === 0 || now < this.#nextShed) return;
    const p = leaders.size;
    // Names without a running job first (no job waits on their handover).
    mine.sort((a, b) => a.runningJobs - b.runningJobs);
    const pick = () => mine[0]!;
    const excess = k - Math.ceil(n / p);
    if (excess > 0) {
      // Half the excess at a time (at least one): the others take the names at once; several instances
      // shedding together do not overshoot.
      for (const e of mine.slice(0, Math.ceil(excess / 2))) void e.release().catch(() => undefined);
      this.#nextShed = now + spread.checkInterval;
    } else if (k >= 2 && k > Math.ceil(n / (p + 1)) && now >= this.#nextDiscovery && probe === null) {
      const e = pick();
      this.#probe = { name: e.name ?? '', known: new Set(leaders.keys()) };
      this.#nextDiscovery = Infinity; // set again once the probe's outcome is seen
      void e.release().catch(() => undefined);
      this.#nextShed = now + spread.checkInterval;
    }
  }
}
