import type * as NestCommon from '@nestjs/common';

import {
  LeaderElectorCore,
  type LeaderElectorConfig,
  type RepositoryLike,
} from './leader-elector.core.js';
import { loadOptional } from './optional-deps.js';

type Logger = Pick<NestCommon.Logger, 'log' | 'warn' | 'error'>;

function createLogger(): Logger {
  const nest = loadOptional<typeof NestCommon>('@nestjs/common');
  if (nest) return new nest.Logger('LeaderElectorService');
  return { log: () => undefined, warn: console.warn, error: console.error };
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

  /** `source`: a TypeORM repository of `LeaderLease` (or anything with its DataSource), or a URL. */
  constructor(source: string | RepositoryLike, config: LeaderElectorConfig = {}) {
    super(source, config, { start: false });
    this.on('elected', ({ term }) => this.#logger.log(`${this.instanceId} leads (term ${term})`));
    this.on('revoked', () => this.#logger.log(`${this.instanceId} no longer leads`));
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

  /** Stops campaigning and closes the connections. */
  async onApplicationShutdown(): Promise<void> {
    try {
      await this.shutdown();
    } catch (err) {
      this.#logger.error(`shutdown failed: ${String(err)}`);
    }
  }
}
