import type * as NestCommon from '@nestjs/common';

import type { LeaderElectorConfig, RepositoryLike } from './leader-elector.config.js';
import { LeaderElectorCore } from './leader-elector.core.js';
import type { NatsSource } from './nats-source.js';
import { LeaderElectionConfigError } from './errors.js';
import type { NamedElections } from './named-elections.js';
import type { LeaderElectorLogger } from './logging.js';
import { loadOptional } from './optional-deps.js';
import { holdUntilSignalReraised } from './keep-alive.js';

/** The named elections of each app-wide service (set by the module). */
const namedOf = new WeakMap<LeaderElectorService, NamedElections>();

/** Lets `named` answer `service.election(name)` (the module calls this). */
export function bindNamedElections(service: LeaderElectorService, named: NamedElections): void {
  namedOf.set(service, named);
}

/** The named elections of an app-wide service made by the module. */
export function namedElectionsOf(service: LeaderElectorService): NamedElections | undefined {
  return namedOf.get(service);
}

type Logger = Pick<NestCommon.Logger, 'log' | 'warn' | 'error'>;

function createLogger(): Logger {
  const nest = loadOptional<typeof NestCommon>('@nestjs/common');
  if (nest) return new nest.Logger('LeaderElectorService');
  return { log: () => undefined, warn: console.warn, error: console.error };
}

/**
 * The core's log lines through Nest's `Logger` with the context `LeaderElector`: error, warn, info as
 * `log`, and debug only while the application's logger level allows it (`Logger.isLevelEnabled`).
 */
function nestLogger(name?: string): LeaderElectorLogger | undefined {
  const nest = loadOptional<typeof NestCommon>('@nestjs/common');
  if (!nest) return undefined;
  const logger = new nest.Logger('LeaderElector');
  const Logger = nest.Logger as unknown as { isLevelEnabled?: (level: string) => boolean };
  // A named election's lines start with its name.
  const p = name !== undefined ? `election '${name}': ` : '';
  return {
    log: (m: string) => logger.log(p + m),
    warn: (m: string) => logger.warn(p + m),
    error: (m: string) => logger.error(p + m),
    debug: (m: string) => {
      if (typeof Logger.isLevelEnabled !== 'function' || Logger.isLevelEnabled('debug')) logger.debug(p + m);
    },
  };
}

/**
 * The election as a NestJS provider (nest-leader-election's class of the same name): campaigning starts
 * when the module initialises, the lease is released before the application shuts down, and the
 * connections are closed on shutdown. Shutdown logs its failures and never throws.
 * `LeaderElectorModule` creates it; inject it where leadership matters. Everything of
 * {@link LeaderElectorCore} is here too: the events, and `events$`, the same events as an RxJS Observable
 * (rxjs is an optional peer dependency), e.g. `this.elector.events$.pipe(filter((e) => e.type === 'elected'))`.
 */
export class LeaderElectorService
  extends LeaderElectorCore
  implements NestCommon.OnModuleInit, NestCommon.BeforeApplicationShutdown, NestCommon.OnApplicationShutdown
{
  readonly #logger: Logger = createLogger();
  /** The election's name; `null` for the app-wide election. */
  readonly name: string | null;

  /**
   * `source`: a TypeORM repository of `LeaderLease` (or anything with its DataSource), or a URL.
   * `name`: set for the named elections the module makes (`election(name)`).
   */
  constructor(source: string | RepositoryLike | NatsSource, config: LeaderElectorConfig = {}, name?: string) {
    // The core's events (elected, stepped down and why, renewal failed, ...) go to Nest's Logger unless
    // the options name a logger of their own; each line names the election's lock id.
    super(source, { ...config, logger: config?.logger ?? nestLogger(name) }, { start: false, ...(name !== undefined ? { name } : {}) });
    this.name = name ?? null;
  }

  /**
   * The election named `name` of this app, with the same API as this service (`amILeader()`, `term()`,
   * `leader()`, the events and `events$`, `runWhileLeader`, `release()`): the one `@LeaderOnly(name)`
   * methods, `LeaderGuard.for(name)` and `LeaderElectorModule.forFeature` declarations use. Its lock id
   * is derived from the name (see `lockIdForName`) unless one was declared. A name that nothing declared
   * is started on first use (then a clash of its lock id throws here rather than at the app's start).
   * Throws `LeaderElectionConfigError` for a service that `LeaderElectorModule` did not make.
   */
  election(name: string): LeaderElectorService {
    const source = namedOf.get(this);
    if (source === undefined) {
      throw new LeaderElectionConfigError(
        'invalid leader election config: election(name) needs the LeaderElectorService of an app that imports ' +
          'LeaderElectorModule (this one was not made by the module)',
      );
    }
    return source.election(name);
  }

  /** Starts campaigning; a failure to start (unreachable database, missing table, ...) fails the app's start. */
  async onModuleInit(): Promise<void> {
    await this.start();
  }

  /** Hands leadership over before the application goes away. */
  async beforeApplicationShutdown(): Promise<void> {
    try {
      await this.release();
    } catch (err) {
      this.#logger.warn(`release on shutdown failed: ${String(err)}`);
    }
  }

  /**
   * Stops campaigning and closes the connections. On a shutdown by a signal, also holds the event loop
   * until Nest has re-raised that signal and it has been dispatched (see `holdUntilSignalReraised`), so
   * that the process ends by the signal or by the app's own listener of it, never with code 0 before.
   */
  async onApplicationShutdown(signal?: string): Promise<void> {
    holdUntilSignalReraised(signal);
    try {
      await this.shutdown();
    } catch (err) {
      this.#logger.error(`shutdown failed: ${String(err)}`);
    }
  }
}
