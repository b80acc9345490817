import { NotLeaderError } from './errors.js';
import { LEADER_ONLY_METADATA } from './leader-elector.constants.js';

/** What a `@LeaderOnly()` method does when called on an instance that does not lead. */
export interface LeaderOnlyOptions {
  /** `skip` (default): return `undefined` without running; `throw`: throw a `NotLeaderError`. */
  onFollower?: 'skip' | 'throw';
}

/** The part of the elector a `@LeaderOnly()` method reads. */
export interface LeadershipSource {
  amILeader(): boolean;
  leader(): { leaderId: string; term: number } | null;
}

/**
 * Which elector decides for each object whose class has `@LeaderOnly()` methods; filled by the module's
 * explorer when the application initialises (each application its own, so several apps in one process
 * each follow their own election).
 */
const electorOf = new WeakMap<object, LeadershipSource>();

/** Lets `elector` decide for the `@LeaderOnly()` methods of `instance` (the explorer calls this). */
export function bindLeaderOnly(instance: object, elector: LeadershipSource): void {
  electorOf.set(instance, elector);
}

type ReflectWithMetadata = typeof Reflect & {
  getMetadataKeys?: (target: object) => unknown[];
  getMetadata?: (key: unknown, target: object) => unknown;
  defineMetadata?: (key: unknown, value: unknown, target: object) => void;
};

/**
 * Runs the method only on the leader, typically an `@Cron` / `@Interval` handler: on other instances the
 * call is skipped (returns `undefined`, or a Promise of it for an `async` method), or throws
 * `NotLeaderError` (rejects, for an `async` method) with `{ onFollower: 'throw' }`.
 * The instance must be a provider or controller of an application that imports `LeaderElectorModule`;
 * until the application has initialised, the method counts as not leading.
 *
 * Sets the `LEADER_ONLY_METADATA` metadata, and puts a check in front of the method on the prototype
 * itself (not on the instance later), so that schedulers which capture the method while the app
 * initialises still call the checked one. Metadata other decorators set on the method is kept.
 */
export function LeaderOnly(options: LeaderOnlyOptions = {}): MethodDecorator {
  const onFollower = options.onFollower ?? 'skip';
  if (onFollower !== 'skip' && onFollower !== 'throw') {
    throw new TypeError(`@LeaderOnly(): \`onFollower\` must be 'skip' or 'throw' (got ${String(onFollower)})`);
  }
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
    const checked = function (this: object, ...args: unknown[]): unknown {
      const elector = electorOf.get(this);
      if (elector?.amILeader()) return method.apply(this, args);
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
    const reflect = Reflect as ReflectWithMetadata;
    if (reflect.getMetadataKeys && reflect.getMetadata && reflect.defineMetadata) {
      for (const k of reflect.getMetadataKeys(method)) {
        reflect.defineMetadata(k, reflect.getMetadata(k, method), checked);
      }
      reflect.defineMetadata(LEADER_ONLY_METADATA, { onFollower }, checked);
    }
    descriptor.value = checked;
    return descriptor;
  };
}
