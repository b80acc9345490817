// The Node.js copy of leadership (docs/design.md): this node's lease as the ordered native snapshots tell
// it, which `amILeader()` reads without a native call, and the event loop heartbeat that bounds it.
import { performance } from 'node:perf_hooks';

import type { Elector, StateSnapshot } from '../native/index.js';
import { localDeadline } from './deadline.js';

/**
 * This node's lease as the last accepted snapshot told it: term, native generation, deadline on
 * performance.now(). Its fields are read by `LeaderElectorCore.amILeader()` on every call, so they are
 * plain fields; only the elector changes them.
 */
export class LeaseCopy {
  /** `seq` of the last native snapshot processed: they arrive in order; older ones are dropped. */
  #seq = -1;
  /** The term of the lease held (of the last accepted leader snapshot). */
  term = 0;
  /** The native generation of the leadership of the last accepted leader snapshot. */
  generation = -1;
  /** Reads the native step-down counter: `Atomics.load` on its memory, or a native call as a fallback. */
  generationNow: () => number = () => -2;
  #deadline = -Infinity;
  #beatUntil = Infinity;
  /** The earlier of the lease's local deadline and the heartbeat's bound. */
  validUntil = -Infinity;
  /** release() calls in flight: while any is, no leader snapshot is accepted. */
  releasing = 0;
  /** Leader snapshots up to this seq were decided before a release completed: never accepted. */
  fenceSeq = -1;
  /** The event loop heartbeat (unref'd), while the `maxEventLoopStall` check is on. */
  #heartbeat: NodeJS.Timeout | null = null;

  /** Records `s` as processed, or returns false when a later snapshot was (then `s` is dropped). */
  advance(s: StateSnapshot): boolean {
    if (s.seq < this.#seq) return false;
    this.#seq = s.seq;
    return true;
  }

  /**
   * Copies the lease of the leader snapshot `s` (its `term` and `deadline` given), unless a release is
   * in flight or completed after it was decided (by `seq`). `clockNow`: now on the native deadline clock.
   */
  accept(s: StateSnapshot, term: number, deadline: number, clockNow: () => number): void {
    if (this.releasing === 0 && s.seq > this.fenceSeq) {
      this.term = term;
      this.generation = s.generation;
      this.#deadline = localDeadline(deadline, clockNow);
      this.validUntil = Math.min(this.#deadline, this.#beatUntil);
    }
  }

  /** Forgets the lease copy: `amILeader()` is false from now on, until a snapshot is accepted. */
  drop(): void {
    this.#deadline = -Infinity;
    this.validUntil = -Infinity;
  }

  /** Reads the native step-down counter of `native` from now on. */
  readGenerationOf(native: Elector): void {
    const view = native.generationView();
    this.generationNow =
      view !== null && native.generationViewIsLive() ? () => Atomics.load(view, 0) : () => native.generation();
  }

  /**
   * Beats the native event loop check from an unref'd timer, several times per `maxEventLoopStall`.
   * The JS bound counts from just before each beat reaches the native side, so `amILeader()` turns
   * false no later than the native check fails.
   */
  startHeartbeat(native: Elector): void {
    const stall = native.maxEventLoopStall;
    if (!(stall > 0)) return;
    const beat = () => {
      this.#beatUntil = performance.now() + stall;
      native.heartbeat();
      this.validUntil = Math.min(this.#deadline, this.#beatUntil);
    };
    beat();
    this.#heartbeat = setInterval(beat, Math.min(1000, Math.max(5, stall / 4)));
    this.#heartbeat.unref();
  }

  stopHeartbeat(): void {
    if (this.#heartbeat !== null) {
      clearInterval(this.#heartbeat);
      this.#heartbeat = null;
    }
  }
}
