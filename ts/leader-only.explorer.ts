import type * as NestCore from '@nestjs/core';

import { LEADER_ONLY_METADATA } from './leader-elector.constants.js';
import type { LeaderElectorService } from './leader-elector.service.js';
import { bindLeaderOnly, isLeaderOnlyMethod } from './leader-only.decorator.js';

/**
 * Finds the providers and controllers with `@LeaderOnly()` methods (through `DiscoveryService` and
 * `MetadataScanner`, as @nestjs/schedule finds its handlers) and binds them to this application's elector.
 */
export class LeaderOnlyExplorer {
  constructor(
    private readonly discovery: NestCore.DiscoveryService,
    private readonly scanner: NestCore.MetadataScanner,
    private readonly reflector: NestCore.Reflector,
    private readonly elector: LeaderElectorService,
  ) {}

  onModuleInit(): void {
    for (const wrapper of [...this.discovery.getProviders(), ...this.discovery.getControllers()]) {
      const instance: unknown = wrapper.instance;
      if (instance === null || typeof instance !== 'object') continue;
      const proto: object | null = Object.getPrototypeOf(instance);
      if (proto === null) continue;
      const marked = this.scanner.getAllMethodNames(proto).some((name) => {
        const method = (instance as Record<string, unknown>)[name];
        return (
          typeof method === 'function' &&
          (isLeaderOnlyMethod(method) || this.reflector.get(LEADER_ONLY_METADATA, method) !== undefined)
        );
      });
      if (marked) bindLeaderOnly(instance, this.elector);
    }
  }
}
