import type * as NestCommon from '@nestjs/common';

import { LeaderElectionConfigError } from './errors.js';
import { LeaderElectorService } from './leader-elector.service.js';
import { loadOptional, requirePeer } from './optional-deps.js';

const nest = loadOptional<typeof NestCommon>('@nestjs/common');
const Injectable: typeof NestCommon.Injectable =
  nest?.Injectable ?? ((() => () => undefined) as unknown as typeof NestCommon.Injectable);

/** The JSON body a `LeaderGuard` answers non-leaders' requests with (status 503). */
export interface NotLeaderResponseBody {
  statusCode: 503;
  error: 'Service Unavailable';
  message: string;
  /** The instance id of the current leader, where this instance knows it. */
  leaderId: string | null;
  /** The current leader's fencing term, where known. */
  term: number | null;
}

/** The guard classes of the named elections, one per name. */
const namedGuards = new Map<string, typeof LeaderGuard>();
/** The election name of each of those classes. */
const namedGuardElection = new WeakMap<object, string>();

/** The election a `LeaderGuard.for(name)` class follows (undefined for anything else). */
export function electionOfGuard(guard: unknown): string | undefined {
  return typeof guard === 'function' ? namedGuardElection.get(guard) : undefined;
}

/**
 * Lets requests through on the leader only; elsewhere answers 503 Service Unavailable with a
 * {@link NotLeaderResponseBody} naming the current leader where known. `@UseGuards(LeaderGuard)` on a
 * controller or route of an app that imports `LeaderElectorModule` follows the app-wide election;
 * `@UseGuards(LeaderGuard.for('reports'))` the election named `reports`.
 */
@Injectable()
export class LeaderGuard implements NestCommon.CanActivate {
  constructor(private readonly elector: LeaderElectorService) {}

  /** The election this guard follows: the app-wide one, or (in `LeaderGuard.for(name)`) a named one. */
  protected election(): LeaderElectorService {
    return this.elector;
  }

  /** A guard class for the election named `name` (the same class for the same name). */
  static for(name: string): typeof LeaderGuard {
    if (typeof name !== 'string' || name === '') {
      throw new LeaderElectionConfigError(
        `invalid leader election config: LeaderGuard.for(name): \`name\` must be a non-empty string (got ${JSON.stringify(name)})`,
      );
    }
    let guard = namedGuards.get(name);
    if (guard === undefined) {
      @Injectable()
      class NamedLeaderGuard extends LeaderGuard {
        constructor(elector: LeaderElectorService) {
          super(elector);
        }

        protected override election(): LeaderElectorService {
          return super.election().election(name);
        }
      }
      Object.defineProperty(NamedLeaderGuard, 'name', { value: `LeaderGuard(${name})` });
      namedGuardElection.set(NamedLeaderGuard, name);
      guard = NamedLeaderGuard;
      namedGuards.set(name, guard);
    }
    return guard;
  }

  canActivate(): boolean {
    const elector = this.election();
    if (elector.amILeader()) return true;
    const { ServiceUnavailableException } = requirePeer<typeof NestCommon>('@nestjs/common', 'LeaderGuard');
    const leader = elector.leader();
    const body: NotLeaderResponseBody = {
      statusCode: 503,
      error: 'Service Unavailable',
      message: 'this instance is not the leader',
      leaderId: leader?.leaderId ?? null,
      term: leader?.term ?? null,
    };
    throw new ServiceUnavailableException(body);
  }
}
