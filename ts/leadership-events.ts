// The leadership events of an elector: the status changes it publishes as `revoked`, `elected`,
// `leaderChanged` and `status`, and the same as the RxJS Observable `LeaderElectorCore.events$`,
// completed when the elector stops for good. rxjs is an optional peer dependency, loaded on first use.
import type { EventEmitter } from 'node:events';

import type * as Rx from 'rxjs';

import type { LeaderElectorEvents, LeaderIdentity, LeaderStatus, LeadershipEvent } from './leader-elector.config.js';
import { requirePeer } from './optional-deps.js';

/** The status events one elector publishes, and their Observable. */
export class LeadershipEvents {
  readonly #elector: EventEmitter<LeaderElectorEvents>;
  /** Called once when the elector stops for good (shutdown, or a failed start). */
  readonly #onStop = new Set<() => void>();
  #events$: Rx.Observable<LeadershipEvent> | undefined;
  /** Stopped for good: shut down, or the start failed. */
  #ended = false;
  /** The status last published. */
  #last: LeaderStatus = { state: 'candidate', leaderId: null, term: null };
  /** The generation of the leadership `#last` reports (null when not leading). */
  #lastGeneration: number | null = null;

  constructor(elector: EventEmitter<LeaderElectorEvents>) {
    this.#elector = elector;
  }

  /** The status last published. */
  get last(): LeaderStatus {
    return this.#last;
  }

  /**
   * Publishes a status of the elector, if it differs from the last one (a new leadership of the same
   * term, by `generation`, differs): `onEnded()` (a leadership ended) then `revoked`, `elected`,
   * `leaderChanged` and `status` as they apply; completes {@link events$} on `stopped`.
   */
  publish(next: LeaderStatus, generation: number | null, onEnded: () => void): void {
    const prev = this.#last;
    const prevGeneration = this.#lastGeneration;
    const ended = prev.state === 'leader' && (next.state !== 'leader' || generation !== prevGeneration);
    const elected = next.state === 'leader' && (prev.state !== 'leader' || generation !== prevGeneration);
    if (!ended && !elected && next.state === prev.state && next.leaderId === prev.leaderId && next.term === prev.term) {
      return;
    }
    this.#last = next;
    this.#lastGeneration = generation;
    // Called from the native stream: a listener's exception must not escape into it.
    const safeEmit = <K extends keyof LeaderElectorEvents>(event: K, ...args: LeaderElectorEvents[K]) => {
      try {
        this.#elector.emit(event, ...(args as never));
      } catch (err) {
        process.emitWarning(`leaderlease: a '${String(event)}' listener threw: ${String(err)}`);
      }
    };
    if (ended) {
      onEnded();
      safeEmit('revoked');
    }
    if (elected && next.term !== null) {
      safeEmit('elected', { term: next.term });
    }
    if (
      next.leaderId !== null &&
      next.term !== null &&
      (elected || next.leaderId !== prev.leaderId || next.term !== prev.term)
    ) {
      safeEmit('leaderChanged', { leaderId: next.leaderId, term: next.term });
    }
    safeEmit('status', next);
    if (next.state === 'stopped') this.end();
  }

  /** The Observable (made on first use; rxjs is loaded then). See `LeaderElectorCore.events$`. */
  get events$(): Rx.Observable<LeadershipEvent> {
    if (this.#events$ === undefined) {
      const rx = requirePeer<typeof Rx>('rxjs', 'LeaderElectorCore.events$');
      const elector = this.#elector;
      this.#events$ = new rx.Observable<LeadershipEvent>((subscriber) => {
        if (this.#ended) {
          subscriber.complete();
          return undefined;
        }
        const onElected = ({ term }: { term: number }) => subscriber.next({ type: 'elected', term });
        const onRevoked = () => subscriber.next({ type: 'revoked' });
        const onChanged = ({ leaderId, term }: LeaderIdentity) =>
          subscriber.next({ type: 'leaderChanged', leaderId, term });
        const onStop = () => subscriber.complete();
        elector.on('elected', onElected);
        elector.on('revoked', onRevoked);
        elector.on('leaderChanged', onChanged);
        this.#onStop.add(onStop);
        return () => {
          elector.off('elected', onElected);
          elector.off('revoked', onRevoked);
          elector.off('leaderChanged', onChanged);
          this.#onStop.delete(onStop);
        };
      });
    }
    return this.#events$;
  }

  /** Completes the observers of {@link events$}: the elector stopped for good. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const f of [...this.#onStop]) {
      try {
        f();
      } catch (err) {
        process.emitWarning(`leaderlease: an events$ observer threw on completion: ${String(err)}`);
      }
    }
    this.#onStop.clear();
  }
}
