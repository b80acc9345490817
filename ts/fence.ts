// The fence the database enforces (`LeaderElectorCore.fence`): the statement a leader runs last in the
// transaction of its work, which passes only while its term holds an unexpired lease by the database clock.
import { FencedError, LeaderElectionConfigError } from './errors.js';
import { quoteIdent } from './sql.js';

/** What {@link LeaderElectorCore.fence} runs its statement on: anything with `query(sql, params)`. */
export interface FenceRunner {
  query(sql: string, parameters?: unknown[]): Promise<unknown>;
}

/** The SQLSTATE of the fence function's refusal. */
export const FENCE_SQLSTATE = 'LLF01';

/**
 * Runs the fence of `term` on `runner` (see `LeaderElectorCore.fence`) for the election of `native`
 * (null: not started or shut down; `lockId` is then the configured one), on PostgreSQL (`nats` false).
 */
export async function runFence(
  runner: FenceRunner,
  term: number | null,
  nats: boolean,
  native: { lockId: number; schema: string } | null,
  configuredLockId: number,
): Promise<number> {
  if (nats) {
    throw new LeaderElectionConfigError('fence(): needs the PostgreSQL backend (the lease is in NATS here)');
  }
  if (!runner || typeof (runner as { query?: unknown }).query !== 'function') {
    throw new LeaderElectionConfigError('fence(runner): runner must have a query(sql, params) method (an EntityManager, a QueryRunner or a pg client)');
  }
  const lockId = native?.lockId ?? configuredLockId;
  if (term === null || native === null) {
    throw new FencedError(`fenced: this node does not lead lock ${lockId}`, { lockId, term: null });
  }
  if (!Number.isSafeInteger(term) || term < 0) {
    throw new LeaderElectionConfigError(`fence(runner, term): term must be a non-negative safe integer (got ${term})`);
  }
  try {
    await runner.query(`SELECT ${quoteIdent(native.schema)}.leader_lease_fence($1, $2)`, [lockId, String(term)]);
  } catch (err) {
    const e = err as { code?: unknown; driverError?: { code?: unknown }; message?: unknown };
    const code = e?.code ?? e?.driverError?.code;
    if (code === FENCE_SQLSTATE) {
      throw new FencedError(`fenced: ${String(e.message ?? err)}`, { cause: err, lockId, term });
    }
    throw err;
  }
  return term;
}
