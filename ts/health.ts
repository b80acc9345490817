import type * as NestCommon from '@nestjs/common';
import type * as Terminus from '@nestjs/terminus';

import { LeaderElectionConfigError } from './errors.js';
import { LeaderElectorService } from './leader-elector.service.js';
import { loadOptional, requirePeer } from './optional-deps.js';

const nest = loadOptional<typeof NestCommon>('@nestjs/common');
const Injectable: typeof NestCommon.Injectable =
  nest?.Injectable ?? ((() => () => undefined) as unknown as typeof NestCommon.Injectable);

/** Options of {@link LeaderElectionHealthIndicator.isHealthy}. */
export interface LeaderElectionHealthOptions {
  /**
   * How long the store may be unreachable before the indicator reports `down`, in ms (default: the
   * lease duration). 0: down at the first failed store operation.
   */
  unreachableFor?: number;
}

/** The details of the indicator's result (besides `status`). */
export interface LeaderElectionHealthDetails {
  /** Whether this instance leads now (`amILeader()`). */
  leading: boolean;
  /** `leader`, `candidate` or `stopped`. */
  state: string;
  /** The leader's term (this instance's own while it leads), where known. */
  term: number | null;
  /** The leader's instance id, where known. */
  leaderId: string | null;
  /** This instance's id. */
  instanceId: string | null;
  /** Whether the last store operation got an answer. */
  connected: boolean;
  /** Since when `connected` holds its value (ISO 8601). */
  since: string;
  /** The last store error, if any. */
  lastError: string | null;
  /** Present when down: why. */
  message?: string;
}

/**
 * A `@nestjs/terminus` health indicator for the election (`@nestjs/terminus` is an optional peer
 * dependency, loaded on the first check: without it, `isHealthy()` throws a `MissingPeerDependencyError`
 * naming it). `LeaderElectorModule` provides and exports it.
 *
 * Healthy while this instance reaches the lease store, leader or follower alike (a follower is healthy:
 * it is ready to take over); `down` once the store has been unreachable for longer than `unreachableFor`
 * (default: the lease duration), and once the elector has stopped. Details: leadership, term, leader id,
 * connected, since, last error.
 *
 * ```ts
 * @Get('health') @HealthCheck()
 * check() { return this.health.check([() => this.leaderElection.isHealthy('leaderElection')]); }
 * ```
 */
@Injectable()
export class LeaderElectionHealthIndicator {
  constructor(private readonly elector: LeaderElectorService) {}

  /** The indicator's result under `key` (default `leaderElection`): `up` or `down` with the details. */
  async isHealthy(
    key = 'leaderElection',
    options: LeaderElectionHealthOptions = {},
  ): Promise<Terminus.HealthIndicatorResult> {
    const terminus = requirePeer<typeof Terminus>('@nestjs/terminus', 'LeaderElectionHealthIndicator');
    const limit = options?.unreachableFor ?? this.elector.leaseDuration ?? 10_000;
    if (typeof limit !== 'number' || !Number.isFinite(limit) || limit < 0) {
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`unreachableFor\` must be a finite, non-negative number of milliseconds (got ${String(limit)})`,
      );
    }
    const s = this.elector.status();
    const details: LeaderElectionHealthDetails = {
      leading: this.elector.amILeader(),
      state: s.state,
      term: s.term,
      leaderId: s.leaderId,
      instanceId: this.elector.instanceId,
      connected: s.connected,
      since: new Date(s.since).toISOString(),
      lastError: s.lastError,
    };
    let problem: string | null = null;
    if (s.state === 'stopped') {
      problem = 'the elector has stopped';
    } else if (!s.connected) {
      const downFor = Date.now() - s.since;
      if (downFor > limit) {
        problem = `the lease store has been unreachable for ${downFor} ms (more than ${limit} ms)`;
      }
    }
    if (problem === null) return { [key]: { status: 'up', ...details } };
    const result = { [key]: { status: 'down' as const, ...details, message: problem } };
    // Terminus before 10.2 counts only a thrown HealthCheckError as down; later ones take the result.
    const legacy = terminus as unknown as { HealthIndicatorService?: unknown; HealthCheckError?: new (m: string, c: unknown) => Error };
    if (legacy.HealthIndicatorService === undefined && legacy.HealthCheckError !== undefined) {
      throw new legacy.HealthCheckError(problem, result);
    }
    return result;
  }
}
