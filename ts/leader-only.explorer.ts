import type * as NestCore from '@nestjs/core';

import { LEADER_ONLY_METADATA } from './leader-elector.constants.js';
import { namedElectionsOf, type LeaderElectorService } from './leader-elector.service.js';
import { bindLeaderOnly, isLeaderOnlyMethod, leaderOnlyMetadataOf, type LeaderOnlyMetadata } from './leader-only.decorator.js';
import { holdUntilSignalReraised } from './keep-alive.js';
import { electionOfGuard } from './leader.guard.js';
import { NamedElectionDeclaration } from './named-elections.js';

/** Where `@UseGuards()` keeps a class's or a method's guards (@nestjs/common's `GUARDS_METADATA`). */
const GUARDS_METADATA = '__guards__';

/** The election names of the `LeaderGuard.for(name)` guards in `@UseGuards()` metadata on `target`. */
function guardedElections(target: object): string[] {
  const reflect = Reflect as unknown as { getMetadata?: (key: string, target: object) => unknown };
  const guards = reflect.getMetadata?.(GUARDS_METADATA, target);
  if (!Array.isArray(guards)) return [];
  return guards.map(electionOfGuard).filter((n): n is string => n !== undefined);
}

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
      // Names of LeaderGuard.for(name) on controllers and their routes: checked and started with the rest.
      const className = proto.constructor?.name ?? 'object';
      if (typeof proto.constructor === 'function') {
        for (const name of guardedElections(proto.constructor)) {
          named?.declare(name, {}, `LeaderGuard.for('${name}') on ${className}`);
        }
      }
      let marked = false;
      for (const methodName of this.scanner.getAllMethodNames(proto)) {
        const method = (instance as Record<string, unknown>)[methodName];
        if (typeof method !== 'function') continue;
        for (const name of guardedElections(method)) {
          named?.declare(name, {}, `LeaderGuard.for('${name}') on ${className}.${methodName}`);
        }
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

  /** Stops the named elections (holding the loop for a re-raised signal, as the service does). */
  async onApplicationShutdown(signal?: string): Promise<void> {
    holdUntilSignalReraised(signal);
    await namedElectionsOf(this.elector)?.shutdown().catch(() => undefined);
  }
}
