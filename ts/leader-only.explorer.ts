import type * as NestCore from '@nestjs/core';

import { LEADER_ONLY_METADATA } from './leader-elector.constants.js';
import { namedElectionsOf, type LeaderElectorService } from './leader-elector.service.js';
import { bindLeaderOnly, isLeaderOnlyMethod, leaderOnlyMetadataOf, type LeaderOnlyMetadata } from './leader-only.decorator.js';
import { NamedElectionDeclaration } from './named-elections.js';

/**
 * Finds the providers and controllers with `@LeaderOnly()` methods (through `DiscoveryService` and
 * `MetadataScanner`, as @nestjs/schedule finds its handlers) and binds them to this application's
 * electors: the app-wide one, or the named election each method names. Also finds the
 * `LeaderElectorModule.forFeature` declarations, then starts the named elections (after checking their
 * lock ids) and hands them over and stops them with the application.
 */
export class LeaderOnlyExplorer {
  constructor(
    private readonly discovery: NestCore.DiscoveryService,
    private readonly scanner: NestCore.MetadataScanner,
    private readonly reflector: NestCore.Reflector,
    private readonly elector: LeaderElectorService,
  ) {}

  async onModuleInit(): Promise<void> {
    const named = namedElectionsOf(this.elector);
    for (const wrapper of [...this.discovery.getProviders(), ...this.discovery.getControllers()]) {
      const instance: unknown = wrapper.instance;
      if (instance === null || typeof instance !== 'object') continue;
      if (instance instanceof NamedElectionDeclaration) {
        for (const { name, ...settings } of instance.elections) {
          named?.declare(name, settings, `LeaderElectorModule.forFeature({ name: '${name}' })`);
        }
        continue;
      }
      const proto: object | null = Object.getPrototypeOf(instance);
      if (proto === null) continue;
      let marked = false;
      for (const methodName of this.scanner.getAllMethodNames(proto)) {
        const method = (instance as Record<string, unknown>)[methodName];
        if (typeof method !== 'function') continue;
        const meta: LeaderOnlyMetadata | undefined =
          leaderOnlyMetadataOf(method) ?? this.reflector.get(LEADER_ONLY_METADATA, method);
        if (!isLeaderOnlyMethod(method) && meta === undefined) continue;
        marked = true;
        if (meta?.name != null && named !== undefined) {
          const where = `@LeaderOnly() on ${proto.constructor?.name ?? 'object'}.${methodName}`;
          named.declare(meta.name, meta.lockId !== undefined ? { lockId: meta.lockId } : {}, where);
        }
      }
      if (marked) {
        const app = this.elector;
        bindLeaderOnly(instance, (name) => (name === null ? app : named?.get(name)));
      }
    }
    await named?.start();
  }

  /** Hands the named leaderships over, each after its running jobs ended. */
  async beforeApplicationShutdown(): Promise<void> {
    await namedElectionsOf(this.elector)?.release().catch(() => undefined);
  }

  /** Stops the named elections. */
  async onApplicationShutdown(): Promise<void> {
    await namedElectionsOf(this.elector)?.shutdown().catch(() => undefined);
  }
}
