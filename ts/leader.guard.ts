import type * as NestCommon from '@nestjs/common';

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

/**
 * Lets requests through on the leader only; elsewhere answers 503 Service Unavailable with a
 * {@link NotLeaderResponseBody} naming the current leader where known. `@UseGuards(LeaderGuard)` on a
 * controller or route of an app that imports `LeaderElectorModule`.
 */
@Injectable()
export class LeaderGuard implements NestCommon.CanActivate {
  constructor(private readonly elector: LeaderElectorService) {}

  canActivate(): boolean {
    if (this.elector.amILeader()) return true;
    const { ServiceUnavailableException } = requirePeer<typeof NestCommon>('@nestjs/common', 'LeaderGuard');
    const leader = this.elector.leader();
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
