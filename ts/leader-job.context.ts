import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * What a running leader-only job can know about the leadership it runs in, without a parameter of its
 * own: `LeaderElectorService.current()` (or `LeaderElectorCore.current()`) inside a `@LeaderOnly()`
 * method or a `runWhileLeader` callback, and in everything they call or await.
 */
export interface LeaderJobContext {
  /**
   * Aborted the moment this leadership ends: revoked (lost to another node, or a renewal that found no
   * row), expired by the local deadline, released, or shut down. Pass it to `fetch`, database drivers,
   * or check `signal.aborted` between steps.
   */
  readonly signal: AbortSignal;
  /** The fencing term of the leadership the job started in: hand it to whatever the job writes. */
  readonly term: number;
  /** The election's name; `null` for the app-wide election. */
  readonly name: string | null;
}

/** The context of the leader-only job running in the current async call chain. */
export const leaderJobContext = new AsyncLocalStorage<LeaderJobContext>();
