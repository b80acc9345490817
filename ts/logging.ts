import type { ElectorEvent } from '../native/index.js';

/**
 * Where an elector's log lines go: any object with `log`, `warn` and `error` (and optionally `debug`),
 * such as `console`, a pino or winston logger, or a NestJS `Logger`. Each gets one string per event.
 */
export interface LeaderElectorLogger {
  log(message: string): unknown;
  warn(message: string): unknown;
  error(message: string): unknown;
  /** Debug lines (one per renewal, ...) are sent only when this exists. */
  debug?(message: string): unknown;
}

/** The level of a {@link LeaderElectionLogEvent}: the core's, with `info` as the logger's `log`. */
export type LeaderElectionLogLevel = 'error' | 'warn' | 'info' | 'debug';

/**
 * One event of the native core (the `'log'` event of `LeaderElectorCore`): what happened, with the
 * election's lock id and instance id, the term and the reason, and `line`, the same as one line of text.
 */
export interface LeaderElectionLogEvent {
  level: LeaderElectionLogLevel;
  /**
   * What happened: `elected`, `renewed`, `renewal_failed`, `lease_lost`, `stepped_down`, `released`,
   * `release_failed`, `observed_leader`, `read_failed`, `acquire_failed`, `contended`, `server_changed`,
   * `duplicate_instance_id`, `liveness_failed`, `work_overran`, `cleaned`, `cleanup_failed`,
   * `listen_failed`, `listening`, `handing_over`, `taking_over`, `started`, `stopped` (more may come).
   */
  kind: string;
  /** The message without the fields (`renewal failed; retrying`). */
  message: string;
  lockId: number;
  instanceId: string;
  /** The term concerned (this node's while it leads, the observed leader's otherwise), or null. */
  term: number | null;
  /** Why: the step-down's reason, or the failed operation's error. */
  reason: string | null;
  /** The stable code of the error (`ERR_DATABASE_UNREACHABLE`, ...), or null. */
  errorCode: string | null;
  /** For a failed store operation: `renew`, `acquire`, `read`, `release` or `cleanup`. */
  operation: string | null;
  /** The leader observed (`observed_leader`), or null. */
  leaderId: string | null;
  /** Milliseconds the store operation took (`renewed`, `renewal_failed`, `lease_lost`), or null. */
  latencyMs: number | null;
  /** Milliseconds until a failed operation is tried again, or null. */
  retryInMs: number | null;
  /** The event as one line: `renewal failed; retrying (lock 7, instance web-1, term 12, reason: ...)`. */
  line: string;
}

/** Text on one line: runs of whitespace with a line break in them become one space. */
function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ');
}

/** The log event of native event `e`. */
export function toLogEvent(e: ElectorEvent): LeaderElectionLogEvent {
  const { lockId, instanceId } = e;
  const level: LeaderElectionLogLevel =
    e.level === 'error' || e.level === 'warn' || e.level === 'info' ? e.level : 'debug';
  const reason = e.reason ?? e.error ?? null;
  const term = e.term ?? null;
  const parts = [`lock ${lockId}`, `instance ${instanceId}`, `term ${term ?? '-'}`];
  if (e.leaderId != null) parts.push(`leader ${e.leaderId}`);
  if (reason !== null) parts.push(`reason: ${reason}`);
  if (e.latencyMs != null) parts.push(`took ${Math.round(e.latencyMs)} ms`);
  if (e.retryInMs != null) parts.push(`retry in ${Math.round(e.retryInMs)} ms`);
  return {
    level,
    kind: e.kind,
    message: e.message,
    lockId,
    instanceId,
    term,
    reason,
    errorCode: e.errorCode ?? null,
    operation: e.operation ?? null,
    leaderId: e.leaderId ?? null,
    latencyMs: e.latencyMs ?? null,
    retryInMs: e.retryInMs ?? null,
    line: oneLine(`${e.message} (${parts.join(', ')})`),
  };
}

/** Sends `event` to `logger` at its level (info as `log`); debug only when the logger has `debug`. */
export function writeLog(logger: LeaderElectorLogger, event: LeaderElectionLogEvent): void {
  switch (event.level) {
    case 'error':
      logger.error(event.line);
      break;
    case 'warn':
      logger.warn(event.line);
      break;
    case 'info':
      logger.log(event.line);
      break;
    default:
      logger.debug?.(event.line);
  }
}

/** Checks that `logger` is a {@link LeaderElectorLogger}; returns a message naming the rule if not. */
export function loggerProblem(logger: unknown): string | null {
  if (logger === null || typeof logger !== 'object') {
    return `must be an object with log, warn and error methods (got ${logger === null ? 'null' : typeof logger})`;
  }
  const l = logger as Record<string, unknown>;
  for (const m of ['log', 'warn', 'error'] as const) {
    if (typeof l[m] !== 'function') return `must have a \`${m}\` method (got ${typeof l[m]})`;
  }
  if (l['debug'] !== undefined && typeof l['debug'] !== 'function') {
    return `\`debug\` must be a method when given (got ${typeof l['debug']})`;
  }
  return null;
}

/**
 * One event of the native core, to `logger` and to the `'log'` listeners (`listeners()` counts them,
 * `emit` calls them). Never throws: a logger or listener that throws is reported as a process warning.
 */
export function deliverLogEvent(
  e: ElectorEvent,
  logger: LeaderElectorLogger | null,
  listeners: () => number,
  emit: (event: LeaderElectionLogEvent) => void,
): void {
  let event: LeaderElectionLogEvent;
  try {
    event = toLogEvent(e);
  } catch {
    return;
  }
  if (logger !== null) {
    try {
      writeLog(logger, event);
    } catch (err) {
      process.emitWarning(`leaderlease: the logger threw: ${String(err)}`);
    }
  }
  if (listeners() > 0) {
    try {
      emit(event);
    } catch (err) {
      process.emitWarning(`leaderlease: a 'log' listener threw: ${String(err)}`);
    }
  }
}
