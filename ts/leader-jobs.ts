// The leader jobs of an elector (runIfLeader, runWhileLeader, `@LeaderOnly()` methods): their abort
// signals, which fire the moment the leadership they run in ends, and the wait for them before a release.
import { performance } from 'node:perf_hooks';

import { ElectorShutDownError } from './errors.js';
import { leaderJobContext, type LeaderJobContext } from './leader-job.context.js';
import type { LeaderStatus } from './leader-elector.config.js';

/** The owner (an elector's {@link LeaderJobs}) and the tracked Promise of each running leader job, by its context. */
const jobOf = new WeakMap<LeaderJobContext, { owner: object; job: Promise<void> }>();

/** What the leader jobs read of their elector. */
export interface JobsHost {
  /** `LeaderElectorCore.amILeader()`. */
  amILeader(): boolean;
  /** The local deadline of the lease held now, on performance.now(). */
  validUntil(): number;
  /** The term of the lease held now. */
  term(): number;
  /**
   * Leader jobs began running (from none): the native core's drains (a release, a shutdown, a fleet's
   * handover of the name) wait for them until `workFinished`, at most one lease.
   */
  workStarted?(): void;
  /** No leader job runs any more (or those left behind by a drain are no longer waited for). */
  workFinished?(): void;
}

/** The running leader jobs of one elector and the aborters of their signals. */
export class LeaderJobs {
  readonly #host: JobsHost;
  readonly #name: string | null;
  /** Leader jobs still running (runIfLeader, runWhileLeader): release and shutdown wait for them. */
  readonly #jobs = new Set<Promise<void>>();
  /** Aborters of the signals of runWhileLeader, called when the leadership they run in ends. */
  readonly #onLoss = new Set<() => void>();
  /** Fires at the lease's local deadline while a runWhileLeader runs: its passing has no event. */
  #lossTimer: NodeJS.Timeout | null = null;
  /** The native core counts this elector's jobs as running work (see {@link JobsHost.workStarted}). */
  #reported = false;
  /** A drain left the running jobs behind: the native core no longer waits for them. */
  #abandoned = false;

  constructor(host: JobsHost, name: string | null) {
    this.#host = host;
    this.#name = name;
  }

  /**
   * Runs `fn(signal)` as a leader job of the leadership held now (see `LeaderElectorCore.runWhileLeader`,
   * which waits for it first); `signal` also aborts when `outer` does.
   */
  async runWhileLeading<T>(fn: (signal: AbortSignal) => T | Promise<T>, outer: AbortSignal | undefined): Promise<T> {
    const controller = new AbortController();
    // Aborted when the leadership ends: by the native snapshot that ends it (the core cancelling the
    // leadership's work token publishes one), by release() and shutdown() at once, and by a timer at the
    // local deadline or heartbeat bound, which pass without an event. No polling.
    const lost = () => {
      this.#onLoss.delete(lost);
      if (!controller.signal.aborted) {
        controller.abort(new DOMException('leaderlease: leadership lost', 'AbortError'));
      }
    };
    const onOuterAbort = () => controller.abort(outer?.reason);
    outer?.addEventListener('abort', onOuterAbort, { once: true });
    // Aborted after leadership came and before the listener was added: 'abort' will not fire again.
    if (outer?.aborted) onOuterAbort();
    const context: LeaderJobContext = { signal: controller.signal, term: this.#host.term(), name: this.#name };
    let finished: () => void = () => undefined;
    const job = new Promise<void>((resolve) => (finished = resolve));
    this.#jobs.add(job);
    this.#sync();
    jobOf.set(context, { owner: this, job });
    try {
      if (this.#host.amILeader()) {
        this.#onLoss.add(lost);
        this.#armLossTimer();
      } else {
        lost();
      }
      return await leaderJobContext.run(context, () => fn(controller.signal));
    } finally {
      outer?.removeEventListener('abort', onOuterAbort);
      lost();
      this.#jobs.delete(job);
      this.#sync();
      finished();
    }
  }

  /** See `LeaderElectorCore.runIfLeader`. */
  runIfLeader<T>(fn: () => T): { ran: true; value: T } | { ran: false } {
    if (!this.#host.amILeader()) return { ran: false };
    const controller = new AbortController();
    const lost = () => {
      this.#onLoss.delete(lost);
      if (!controller.signal.aborted) {
        controller.abort(new DOMException('leaderlease: leadership lost', 'AbortError'));
      }
    };
    this.#onLoss.add(lost);
    this.#armLossTimer();
    const context: LeaderJobContext = { signal: controller.signal, term: this.#host.term(), name: this.#name };
    let value: T;
    try {
      value = leaderJobContext.run(context, fn);
    } catch (err) {
      this.#onLoss.delete(lost);
      throw err;
    }
    if (value !== null && typeof (value as { then?: unknown })?.then === 'function') {
      const job: Promise<void> = Promise.resolve(value as PromiseLike<unknown>).then(
        () => undefined,
        () => undefined,
      );
      this.#jobs.add(job);
      this.#sync();
      jobOf.set(context, { owner: this, job });
      void job.then(() => {
        this.#onLoss.delete(lost);
        this.#jobs.delete(job);
        this.#sync();
      });
    } else {
      this.#onLoss.delete(lost);
    }
    return { ran: true, value };
  }

  /** How many leader jobs run now. */
  get size(): number {
    return this.#jobs.size;
  }

  /** Until when a release may wait for running jobs: the local deadline of the lease held now. */
  drainDeadline(): number {
    return this.#host.amILeader() ? this.#host.validUntil() : -Infinity;
  }

  /**
   * Waits for the running leader jobs (their signals are aborted already) until `until` on
   * performance.now(); those still running then are left behind with a warning.
   */
  async drain(until: number): Promise<void> {
    // A job that releases (or shuts down) its own elector is not waited for: it waits for the release.
    const context = leaderJobContext.getStore();
    const own = context !== undefined ? jobOf.get(context) : undefined;
    const others = () => [...this.#jobs].filter((j) => own?.owner !== this || j !== own.job);
    if (others().length === 0) {
      // Only the job that asked (if any) still runs: the native release must not wait for it either.
      this.#abandon();
      return;
    }
    const wait = until - performance.now();
    if (wait > 0) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, wait)));
      try {
        await Promise.race([Promise.all(others()), timeout]);
      } finally {
        clearTimeout(timer);
      }
    }
    const left = others().length;
    this.#abandon();
    if (left > 0) {
      process.emitWarning(
        `leaderlease: ${left} leader job(s)${this.#name !== null ? ` of election '${this.#name}'` : ''} ` +
          'still running when the lease had to be given up (their signal is aborted); releasing anyway',
        { type: 'LeaderElectionWarning', code: 'LEADERLEASE_DRAIN_TIMEOUT' },
      );
    }
  }

  /** The jobs still running are no longer waited for, here or by the native core. */
  #abandon(): void {
    if (this.#jobs.size === 0) return;
    this.#abandoned = true;
    this.#sync();
  }

  /** Tells the native core whether jobs run (it waits for them in its drains), when that changed. */
  #sync(): void {
    if (this.#jobs.size === 0) this.#abandoned = false;
    const running = this.#jobs.size > 0 && !this.#abandoned;
    if (running === this.#reported) return;
    this.#reported = running;
    try {
      if (running) this.#host.workStarted?.();
      else this.#host.workFinished?.();
    } catch {
      // The native elector is gone (shut down): nothing to tell.
    }
  }

  /** Calls the loss listeners: the leadership they ran in has ended. */
  leadershipLost(): void {
    if (this.#lossTimer !== null) {
      clearTimeout(this.#lossTimer);
      this.#lossTimer = null;
    }
    for (const f of [...this.#onLoss]) f();
  }

  /** While runWhileLeader runs: a timer at the local deadline that calls the loss listeners if it has passed. */
  #armLossTimer(): void {
    if (this.#lossTimer !== null || this.#onLoss.size === 0) return;
    if (!this.#host.amILeader()) return this.leadershipLost();
    const wait = Math.max(1, Math.ceil(this.#host.validUntil() - performance.now()));
    this.#lossTimer = setTimeout(() => {
      this.#lossTimer = null;
      this.#armLossTimer();
    }, wait);
    this.#lossTimer.unref();
  }
}

/**
 * Resolves when `elector` leads; rejects when it stops first (`stopped()`, or its status says so) or
 * `signal` aborts.
 */
export function untilLeader(
  elector: {
    amILeader(): boolean;
    status(): LeaderStatus;
    on(event: 'status', listener: () => void): unknown;
    off(event: 'status', listener: () => void): unknown;
  },
  stopped: () => boolean,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const check = () => {
      if (signal?.aborted) return done(signal.reason ?? new DOMException('aborted', 'AbortError'));
      if (elector.amILeader()) return done();
      if (stopped() || elector.status().state === 'stopped') {
        return done(new ElectorShutDownError('the elector has been shut down'));
      }
    };
    const done = (err?: unknown) => {
      elector.off('status', check);
      signal?.removeEventListener('abort', check);
      if (err === undefined) resolve();
      else reject(err);
    };
    elector.on('status', check);
    signal?.addEventListener('abort', check);
    check();
  });
}
