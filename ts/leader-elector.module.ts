import type * as NestCommon from '@nestjs/common';
import type * as NestCore from '@nestjs/core';
import type * as NestTypeOrm from '@nestjs/typeorm';

import {
  ELECTOR_CONFIG_KEYS,
  MODULE_ASYNC_OPTION_KEYS,
  MODULE_OPTION_KEYS,
  NAMED_ELECTION_KEYS,
  warnUnknownKeys,
} from './config-keys.js';
import { LeaderElectionConfigError } from './errors.js';
import { LEADER_ELECTOR_MODULE_OPTIONS } from './leader-elector.constants.js';
import type { DataSourceLike, LeaderElectorConfig, RepositoryLike } from './leader-elector.config.js';
import { isNatsSource, type NatsSource } from './nats-source.js';
import { LeaderFleet } from './fleet.js';
import { LeaderElectorService, bindNamedElections } from './leader-elector.service.js';
import { LeaderElectionHealthIndicator } from './health.js';
import { createLeaderLeaseEntity } from './leader-lease.entity.js';
import { LeaderOnlyExplorer } from './leader-only.explorer.js';
import { NamedElectionDeclaration, NamedElections, type NamedElectionOptions, type SpreadOptions } from './named-elections.js';
import { loadOptional, requirePeer } from './optional-deps.js';

/** `LeaderElectorModule` settings: the election's, plus where its database is. */
export interface LeaderElectorModuleOptions extends LeaderElectorConfig {
  /**
   * The PostgreSQL URL to run on. Without it, the settings of the app's TypeORM DataSource are used
   * (its url, or host/port/username/password/database/ssl), which needs `@nestjs/typeorm`.
   */
  connectionString?: string;
  /**
   * New: how the named elections (`@LeaderOnly(name)`, `forFeature`) are spread over the app's
   * instances: `true` (default): an instance leading more than its share gives names up; `false`: no
   * spreading (whoever campaigns first leads); or `{ checkInterval, discoveryInterval }` in ms.
   */
  spread?: boolean | SpreadOptions;
  /** New: register the module globally (default true, as nest-leader-election's module is). */
  isGlobal?: boolean;
  /** New: providers to add to the module (as `ConfigurableModuleBuilder` extras are used). */
  extraProviders?: NestCommon.Provider[];
}

/** For `forRootAsync({ useClass })` / `useExisting`: a provider that makes the options. */
export interface LeaderElectorOptionsFactory {
  createLeaderElectorOptions(): LeaderElectorModuleOptions | Promise<LeaderElectorModuleOptions>;
}

/** `LeaderElectorModule.forRootAsync` settings, as `TypeOrmModule.forRootAsync` takes them. */
export interface LeaderElectorModuleAsyncOptions extends Pick<NestCommon.ModuleMetadata, 'imports'> {
  useFactory?: (...args: any[]) => LeaderElectorModuleOptions | Promise<LeaderElectorModuleOptions>;
  inject?: (NestCommon.InjectionToken | NestCommon.OptionalFactoryDependency)[];
  useClass?: NestCommon.Type<LeaderElectorOptionsFactory>;
  useExisting?: NestCommon.Type<LeaderElectorOptionsFactory>;
  /** The TypeORM DataSource to take connection settings from, by name (default: the default one). */
  dataSourceName?: string;
  /** Register the module globally (default true). */
  isGlobal?: boolean;
  /** Providers to add to the module (for the factory's dependencies, say). */
  extraProviders?: NestCommon.Provider[];
}

/** What the module registers besides the options: the service, the explorer, and their imports. */
interface Registration {
  imports: NonNullable<NestCommon.ModuleMetadata['imports']>;
  providers: NestCommon.Provider[];
}

const ELECTOR_FIELDS: ReadonlySet<string> = new Set(ELECTOR_CONFIG_KEYS);

/** The election settings among the module's options. */
function electorConfig(options: LeaderElectorModuleOptions): LeaderElectorConfig {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options ?? {})) if (ELECTOR_FIELDS.has(k)) out[k] = v;
  return out as LeaderElectorConfig;
}

/** The app-wide service and its named elections, made from one source with the module's settings. */
function createService(options: LeaderElectorModuleOptions, dataSource: DataSourceLike | undefined): LeaderElectorService {
  const make = (source: string | RepositoryLike | NatsSource): LeaderElectorService => {
    const base = electorConfig(options);
    const service = new LeaderElectorService(source, base);
    const named = new NamedElections(
      service,
      base,
      (config, name) => new LeaderElectorService(source, config, name),
      options.spread,
      isNatsSource(source) ? null : (fleetOptions) => LeaderFleet.joinFor(source, base, fleetOptions),
    );
    bindNamedElections(service, named);
    return service;
  };
  return createServiceFrom(options, dataSource, make);
}

function createServiceFrom(
  options: LeaderElectorModuleOptions,
  dataSource: DataSourceLike | undefined,
  make: (source: string | RepositoryLike | NatsSource) => LeaderElectorService,
): LeaderElectorService {
  if (options === null || typeof options !== 'object') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: LeaderElectorModule options must be an object (got ${options === null ? 'null' : typeof options})`,
    );
  }
  warnUnknownKeys(options, MODULE_OPTION_KEYS, 'LeaderElectorModule options');
  const { connectionString } = options;
  if (options.backend?.nats) {
    // The lease lives in NATS: no PostgreSQL connection is used.
    return make({ nats: options.backend.nats });
  }
  if (connectionString !== undefined) {
    if (typeof connectionString !== 'string' || connectionString === '') {
      throw new LeaderElectionConfigError(
        'invalid leader election config: `connectionString` must be a non-empty string',
      );
    }
    return make(connectionString);
  }
  if (dataSource === undefined || dataSource === null) {
    throw new LeaderElectionConfigError(
      'invalid leader election config: LeaderElectorModule has no database: set `connectionString`, or import ' +
        'TypeOrmModule.forRoot(...) (a PostgreSQL DataSource) in the application',
    );
  }
  const source: RepositoryLike = { manager: { dataSource } };
  return make(source);
}

function registration(
  optionsProvider: NestCommon.Provider,
  dataSourceName: string | undefined,
  typeOrmImports: NonNullable<NestCommon.ModuleMetadata['imports']>,
  needsTypeOrm: boolean,
): Registration {
  const core = requirePeer<typeof NestCore>('@nestjs/core', 'LeaderElectorModule');
  const nestTypeOrm = needsTypeOrm
    ? requirePeer<typeof NestTypeOrm>('@nestjs/typeorm', 'LeaderElectorModule without `connectionString`')
    : loadOptional<typeof NestTypeOrm>('@nestjs/typeorm');
  const dataSourceToken = nestTypeOrm?.getDataSourceToken(dataSourceName);
  return {
    imports: [core.DiscoveryModule, ...typeOrmImports],
    providers: [
      optionsProvider,
      {
        provide: LeaderElectorService,
        useFactory: (options: LeaderElectorModuleOptions, dataSource?: DataSourceLike) =>
          createService(options, dataSource),
        inject: [
          LEADER_ELECTOR_MODULE_OPTIONS,
          ...(dataSourceToken !== undefined ? [{ token: dataSourceToken, optional: true }] : []),
        ],
      },
      {
        provide: LeaderOnlyExplorer,
        useFactory: (
          discovery: NestCore.DiscoveryService,
          scanner: NestCore.MetadataScanner,
          reflector: NestCore.Reflector,
          elector: LeaderElectorService,
        ) => new LeaderOnlyExplorer(discovery, scanner, reflector, elector),
        inject: [core.DiscoveryService, core.MetadataScanner, core.Reflector, LeaderElectorService],
      },
      {
        // Needs @nestjs/terminus only when it checks (isHealthy), so it is always provided.
        provide: LeaderElectionHealthIndicator,
        useFactory: (elector: LeaderElectorService) => new LeaderElectionHealthIndicator(elector),
        inject: [LeaderElectorService],
      },
    ],
  };
}

/**
 * The election as a global NestJS module (nest-leader-election's module of the same name).
 *
 * `forRoot(config)`: with `@nestjs/typeorm`, it registers the `LeaderLease` entity of `config.schema` on the
 * app's DataSource and runs on that DataSource's server (the original Quick Start, unchanged); with
 * `connectionString`, it needs no TypeORM. `forRootAsync({ imports, inject, useFactory })`, `useClass` or
 * `useExisting` take the options from other providers (`ConfigService`, ...).
 * Exports `LeaderElectorService`; `@LeaderOnly()` methods and `LeaderGuard` follow its election, and
 * `@LeaderOnly(name)`, `LeaderGuard.for(name)` and `election(name)` the named ones (`forFeature`).
 * Like `ConfigurableModuleBuilder` modules, both take `isGlobal` (default true) and `extraProviders`; it
 * is written out rather than built with it so that `leaderlease` loads without `@nestjs/common`.
 */
export class LeaderElectorModule {
  static forRoot(config: LeaderElectorModuleOptions = {}): NestCommon.DynamicModule {
    const usesTypeOrm = config?.connectionString === undefined && !config?.backend?.nats;
    const typeOrmImports: NonNullable<NestCommon.ModuleMetadata['imports']> = [];
    if (usesTypeOrm) {
      const { TypeOrmModule } = requirePeer<typeof NestTypeOrm>(
        '@nestjs/typeorm',
        'LeaderElectorModule.forRoot() without `connectionString`',
      );
      typeOrmImports.push(TypeOrmModule.forFeature([createLeaderLeaseEntity(config?.schema ?? 'public')]));
    }
    const { imports, providers } = registration(
      { provide: LEADER_ELECTOR_MODULE_OPTIONS, useValue: config },
      undefined,
      typeOrmImports,
      usesTypeOrm,
    );
    return {
      module: LeaderElectorModule,
      global: config?.isGlobal ?? true,
      imports,
      providers: [...providers, ...(config?.extraProviders ?? [])],
      exports: [LeaderElectorService, LeaderElectionHealthIndicator],
    };
  }

  static forRootAsync(options: LeaderElectorModuleAsyncOptions): NestCommon.DynamicModule {
    warnUnknownKeys(options, MODULE_ASYNC_OPTION_KEYS, 'LeaderElectorModule.forRootAsync options');
    let optionsProvider: NestCommon.Provider;
    const extraProviders: NestCommon.Provider[] = [];
    if (options.useFactory) {
      optionsProvider = {
        provide: LEADER_ELECTOR_MODULE_OPTIONS,
        useFactory: options.useFactory,
        inject: options.inject ?? [],
      };
    } else {
      const factoryClass = options.useClass ?? options.useExisting;
      if (!factoryClass) {
        throw new LeaderElectionConfigError(
          'invalid leader election config: LeaderElectorModule.forRootAsync needs `useFactory`, `useClass` or `useExisting`',
        );
      }
      if (options.useClass) extraProviders.push({ provide: options.useClass, useClass: options.useClass });
      optionsProvider = {
        provide: LEADER_ELECTOR_MODULE_OPTIONS,
        useFactory: (factory: LeaderElectorOptionsFactory) => factory.createLeaderElectorOptions(),
        inject: [factoryClass],
      };
    }
    const { imports, providers } = registration(optionsProvider, options.dataSourceName, [], false);
    return {
      module: LeaderElectorModule,
      global: options.isGlobal ?? true,
      imports: [...imports, ...(options.imports ?? [])],
      providers: [...extraProviders, ...(options.extraProviders ?? []), ...providers],
      exports: [LeaderElectorService, LeaderElectionHealthIndicator],
    };
  }

  /**
   * Declares named elections with their own settings (any election setting but `instanceId`, which is
   * the app's), e.g. `LeaderElectorModule.forFeature([{ name: 'nightly-report', leaseDuration: 60000 }])`
   * in the module whose jobs use them. The settings not given are the `forRoot` ones; the lock id is
   * derived from the name unless given. Needs `forRoot`/`forRootAsync` in the app; the elections start
   * with it and `LeaderElectorService.election(name)` returns them.
   */
  static forFeature(elections: NamedElectionOptions | readonly NamedElectionOptions[]): NestCommon.DynamicModule {
    const list = (Array.isArray(elections) ? elections : [elections]) as readonly NamedElectionOptions[];
    for (const e of list) {
      if (e === null || typeof e !== 'object') {
        throw new LeaderElectionConfigError(
          `invalid leader election config: LeaderElectorModule.forFeature takes { name, ...settings } objects (got ${e === null ? 'null' : typeof e})`,
        );
      }
      if (typeof e.name !== 'string' || e.name === '') {
        throw new LeaderElectionConfigError(
          `invalid leader election config: LeaderElectorModule.forFeature: \`name\` must be a non-empty string (got ${JSON.stringify(e.name)})`,
        );
      }
      warnUnknownKeys(e, NAMED_ELECTION_KEYS, `LeaderElectorModule.forFeature options of '${e.name}'`);
    }
    const token = `LEADER_ELECTOR_FEATURE:${list.map((e) => e.name).join(',')}`;
    return {
      module: LeaderElectorModule,
      providers: [{ provide: token, useValue: new NamedElectionDeclaration(list.map((e) => ({ ...e }))) }],
    };
  }
}
