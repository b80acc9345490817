import { LeaderElectionConfigError, NotLeaderError } from './errors.js';
import { LEADER_ONLY_METADATA } from './leader-elector.constants.js';
import { loadOptional } from './optional-deps.js';

/** Which election a `@LeaderOnly()` method follows, and what it does when called on a follower. */
export interface LeaderOnlyOptions {
  /**
   * The named election to follow (each name is an election of its own, with its own leader); without
   * it, the app-wide election of `LeaderElectorModule.forRoot`.
   */
  name?: string;
  /**
   * The lock id of the named election; by default derived from the name (`lockIdForName`). Only with
   * `name`.
   */
  lockId?: number;
  /** `skip` (default): return `undefined` without running; `throw`: throw a `NotLeaderError`. */
  onFollower?: 'skip' | 'throw';
}

/** What `@LeaderOnly()` records on a method (also its `LEADER_ONLY_METADATA` metadata). */
export interface LeaderOnlyMetadata {
  onFollower: 'skip' | 'throw';
  /** The named election, or `null` for the app-wide one. */
  name: string | null;
  lockId?: number;
}

/** The part of the elector a `@LeaderOnly()` method reads. */
export interface LeadershipSource {
  amILeader(): boolean;
  leader(): { leaderId: string; term: number } | null;
  /** Runs `fn` as a leader job if leading (see `LeaderElectorCore.runIfLeader`). */
  runIfLeader?<T>(fn: () => T): { ran: true; value: T } | { ran: false };
}

/** The elector of an election by name (`null`: the app-wide one). */
export type LeadershipResolver = (name: string | null) => LeadershipSource | undefined;

/**
 * Which electors decide for each object whose class has `@LeaderOnly()` methods; filled by the module's
 * explorer when the application initialises (each application its own, so several apps in one process
 * each follow their own election).
 */
const electorOf = new WeakMap<object, LeadershipResolver>();

/**
 * Lets `elector` decide for the `@LeaderOnly()` methods of `instance` (the explorer calls this): one
 * elector for every method, or a resolver that gives the elector of each election name.
 */
export function bindLeaderOnly(instance: object, elector: LeadershipSource | LeadershipResolver): void {
  electorOf.set(instance, typeof elector === 'function' ? elector : () => elector);
}

/** What `@LeaderOnly()` recorded for each checked method (found without reflect-metadata too). */
const optionsOfMethod = new WeakMap<object, LeaderOnlyMetadata>();

/** The election name and settings of a method made by `@LeaderOnly()`, or undefined. */
export function leaderOnlyMetadataOf(fn: unknown): LeaderOnlyMetadata | undefined {
  return typeof fn === 'function' ? optionsOfMethod.get(fn) : undefined;
}

/**
 * The checked methods `@LeaderOnly()` made. The explorer finds them here as well as by their metadata,
 * so that they are bound even where the metadata could not be set (reflect-metadata missing).
 */
const leaderOnlyMethods = new WeakSet<object>();

/** Whether `fn` is a method made by `@LeaderOnly()`. */
export function isLeaderOnlyMethod(fn: unknown): boolean {
  return typeof fn === 'function' && leaderOnlyMethods.has(fn);
}

/** Codes of the process warnings `@LeaderOnly()` emits (`process.on('warning', w => w.code)`). */
export const LEADER_ONLY_WARNINGS = {
  /** A `@LeaderOnly()` method was called on an instance no elector is bound to: skipped (or thrown). */
  unbound: 'LEADERLEASE_LEADER_ONLY_UNBOUND',
  /** `@LeaderOnly()` was applied while the `Reflect` metadata API (reflect-metadata) was missing. */
  noReflectMetadata: 'LEADERLEASE_NO_REFLECT_METADATA',
} as const;

let warnedNoReflectMetadata = false;

type ReflectWithMetadata = typeof Reflect & {
  getMetadataKeys?: (target: object) => unknown[];
  getMetadata?: (key: unknown, target: object) => unknown;
  defineMetadata?: (key: unknown, value: unknown, target: object) => void;
};

/** The `Reflect` metadata API, loading reflect-metadata if nothing has yet; null when it is not installed. */
function metadataApi(): Required<Pick<ReflectWithMetadata, 'getMetadataKeys' | 'getMetadata' | 'defineMetadata'>> | null {
  const has = () => {
    const r = Reflect as ReflectWithMetadata;
    return typeof r.getMetadataKeys === 'function' && typeof r.defineMetadata === 'function' && typeof r.getMetadata === 'function';
  };
  if (!has()) loadOptional('reflect-metadata'); // a polyfill: it installs the API on the global Reflect
  return has() ? (Reflect as ReturnType<typeof metadataApi> & object) : null;
}

/**
 * Runs the method only on the leader, typically an `@Cron` / `@Interval` handler: on other instances the
 * call is skipped (returns `undefined`, or a Promise of it for an `async` method), or throws
 * `NotLeaderError` (rejects, for an `async` method) with `{ onFollower: 'throw' }`.
 *
 * `@LeaderOnly()` follows the app-wide election; `@LeaderOnly('nightly-report')` (or
 * `@LeaderOnly({ name, onFollower, lockId })`) follows the election of that name, which may lead on
 * another instance (see `LeaderElectorService.election(name)`). While the method runs (until the Promise
 * an `async` one returns settles), `LeaderElectorService.current()` gives its `{ signal, term, name }`:
 * the signal aborts the moment that leadership ends; and a release or shutdown of the election waits for
 * the run to end (at most until the lease would have run out) before the next leader can start.
 * The instance must be a provider or controller of an application that imports `LeaderElectorModule`;
 * until the application has initialised, the method counts as not leading. Called on an instance that no
 * elector is bound to (created with `new`, or in an app without `LeaderElectorModule`), the method is
 * skipped (or throws) like on a follower, and a process warning with code
 * `LEADERLEASE_LEADER_ONLY_UNBOUND` is emitted, once per method.
 *
 * The metadata needs the `Reflect` metadata API: if nothing has loaded reflect-metadata yet, the decorator
 * loads it; if it is not installed, the check still works (the module finds the method without metadata),
 * but the metadata is not set and a warning with code `LEADERLEASE_NO_REFLECT_METADATA` is emitted, once.
 *
 * Sets the `LEADER_ONLY_METADATA` metadata, and puts a check in front of the method on the prototype
 * itself (not on the instance later), so that schedulers which capture the method while the app
 * initialises still call the checked one. Metadata other decorators set on the method is kept.
 */
export function LeaderOnly(nameOrOptions: string | LeaderOnlyOptions = {}): MethodDecorator {
  const options: LeaderOnlyOptions =
    typeof nameOrOptions === 'string' ? { name: nameOrOptions } : (nameOrOptions ?? {});
  const onFollower = options.onFollower ?? 'skip';
  if (onFollower !== 'skip' && onFollower !== 'throw') {
    throw new TypeError(`@LeaderOnly(): \`onFollower\` must be 'skip' or 'throw' (got ${String(onFollower)})`);
  }
  const name = options.name ?? null;
  if (name !== null && (typeof name !== 'string' || name === '')) {
    throw new LeaderElectionConfigError(
      `invalid leader election config: @LeaderOnly(): \`name\` must be a non-empty string (got ${JSON.stringify(name)})`,
    );
  }
  if (options.lockId !== undefined) {
    if (name === null) {
      throw new LeaderElectionConfigError(
        'invalid leader election config: @LeaderOnly(): `lockId` needs a `name` (the app-wide election takes its ' +
          'lockId from LeaderElectorModule.forRoot)',
      );
    }
    checkLockId(options.lockId, `@LeaderOnly('${name}')`);
  }
  const recorded: LeaderOnlyMetadata = {
    onFollower,
    name,
    ...(options.lockId !== undefined ? { lockId: options.lockId } : {}),
  };
  return (target, key, descriptor: PropertyDescriptor) => {
    const original: unknown = descriptor.value;
    if (typeof original !== 'function') {
      throw new TypeError(`@LeaderOnly() applies to methods; ${String(key)} is not one`);
    }
    const method = original as (...args: unknown[]) => unknown;
    const where = `${(target as { constructor?: { name?: string } }).constructor?.name ?? 'object'}.${String(key)}`;
    // An async method rejects (and a skipped one resolves) rather than throwing synchronously.
    // Also a method declared to return a Promise without `async` (TypeScript records the return type).
    const meta = Reflect as unknown as { getMetadata?: (k: string, t: object, p: string | symbol) => unknown };
    const isAsync =
      method.constructor?.name === 'AsyncFunction' || meta.getMetadata?.('design:returntype', target, key) === Promise;
    let warnedUnbound = false;
    const checked = function (this: object, ...args: unknown[]): unknown {
      const elector = electorOf.get(this)?.(name);
      if (elector?.runIfLeader !== undefined) {
        const run = elector.runIfLeader(() => method.apply(this, args));
        if (run.ran) return run.value;
      } else if (elector?.amILeader()) {
        return method.apply(this, args);
      }
      if (elector === undefined && !warnedUnbound) {
        warnedUnbound = true;
        process.emitWarning(
          `${where} is @LeaderOnly() but no leader elector is bound to this instance, so the call is ` +
            `${onFollower === 'throw' ? 'refused' : 'skipped'}: the instance must be a provider or controller of an ` +
            'initialised NestJS application that imports LeaderElectorModule (not created with `new`). ' +
            'Warned once per method.',
          { type: 'LeaderElectionWarning', code: LEADER_ONLY_WARNINGS.unbound },
        );
      }
      if (onFollower === 'throw') {
        const err = new NotLeaderError(
          `${where} runs on the leader only; this instance does not lead`,
          elector?.leader() ?? null,
        );
        if (isAsync) return Promise.reject(err);
        throw err;
      }
      return isAsync ? Promise.resolve(undefined) : undefined;
    };
    Object.defineProperty(checked, 'name', { value: method.name });
    leaderOnlyMethods.add(checked);
    optionsOfMethod.set(checked, recorded);
    const reflect = metadataApi();
    if (reflect !== null) {
      for (const k of reflect.getMetadataKeys(method)) {
        reflect.defineMetadata(k, reflect.getMetadata(k, method), checked);
      }
      reflect.defineMetadata(LEADER_ONLY_METADATA, recorded, checked);
    } else if (!warnedNoReflectMetadata) {
      warnedNoReflectMetadata = true;
      process.emitWarning(
        `@LeaderOnly() on ${where}: the Reflect metadata API is missing (reflect-metadata is not installed), ` +
          `so the ${LEADER_ONLY_METADATA} metadata is not set and other decorators' metadata on the method is not ` +
          'kept. The leader check itself works. NestJS needs reflect-metadata: npm install reflect-metadata.',
        { type: 'LeaderElectionWarning', code: LEADER_ONLY_WARNINGS.noReflectMetadata },
      );
    }
    descriptor.value = checked;
    return descriptor;
  };
}

/** Checks an explicit lock id: an integer in PostgreSQL's INT range. */
export function checkLockId(lockId: unknown, where: string): void {
  if (typeof lockId !== 'number' || !Number.isInteger(lockId) || lockId < -(2 ** 31) || lockId > 2 ** 31 - 1) {
    throw new LeaderElectionConfigError(
      `invalid leader election config: ${where}: \`lockId\` must be an integer between -2147483648 and 2147483647 ` +
        `(got ${String(lockId)})`,
    );
  }
}
