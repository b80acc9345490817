// `LeaderElectorCore`: one election's lifecycle (start, release, shutdown), its reading of the native
// snapshots into the lease copy and the status, and its public API. The roles it leans on have files of
// their own: settings (leader-elector.config.ts), connection settings (connection-options.ts, nats-source.ts),
// the lease copy (lease-copy.ts), leader jobs (leader-jobs.ts), events (leadership-events.ts), the fence
// (fence.ts), logging (logging.ts) and metrics (metrics.ts).
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';

import type * as Rx from 'rxjs';

import type { Elector, ElectorEvent, StateSnapshot, StatusInfo } from '../native/index.js';
import { NATS_CONFIG_KEYS, warnUnknownKeys } from './config-keys.js';
import { postgresOptions, storeSettings } from './connection-options.js';
import { ElectorShutDownError, LeaderElectionConfigError, fromNative } from './errors.js';
import { LeaderFleet } from './fleet.js';
import { runFence, type FenceRunner } from './fence.js';
import { keepAliveWhile } from './keep-alive.js';
import {
  toNativeOptions,
  type DataSourceLike,
  type ElectorStatus,
  type LeaderElectorConfig,
  type LeaderElectorEvents,
  type LeaderIdentity,
  type LeaderStatus,
  type LeadershipEvent,
  type RepositoryLike,
} from './leader-elector.config.js';
import { leaderJobContext, type LeaderJobContext } from './leader-job.context.js';
import { LeaderJobs, untilLeader } from './leader-jobs.js';
import { LeaseCopy } from './lease-copy.js';
import { LeadershipEvents } from './leadership-events.js';
import { deliverLogEvent, type LeaderElectorLogger, loggerProblem } from './logging.js';
import { trackMetrics } from './metrics.js';
import { isNatsSource, type NatsSource } from './nats-source.js';
import { loadNative } from './native.js';

/**
 * The native addon, loaded with this module: where no prebuilt binary fits, importing this module (and
 * `leaderlease/core`) throws `UnsupportedPlatformError` (ts/native.ts).
 */
const addon = loadNative();

/** The config's `fleet`, checked: `{ fleet: LeaderFleet, name: non-empty string }`, or null when unset. */
function fleetOf(config: LeaderElectorConfig | undefined): { fleet: LeaderFleet; name: string } | null {
  const f = config?.fleet;
  if (f === undefined || f === null) return null;
  if (typeof f !== 'object' || !(f.fleet instanceof LeaderFleet)) {
    throw new LeaderElectionConfigError('invalid leader election config: `fleet.fleet` must be a LeaderFleet (LeaderFleet.join(...))');
  }
  if (typeof f.name !== 'string' || f.name === '') {
    throw new LeaderElectionConfigError('invalid leader election config: `fleet.name` must be a non-empty string');
  }
  return f;
}

/** Now on the native deadline clock (see deadline.ts). */
const nativeClockNow = (): number => addon.Elector.clockNow();

function toStatus(s: StatusInfo): LeaderStatus {
  return { state: s.state, leaderId: s.leaderId ?? null, term: s.term ?? null };
}

/**
 * A leader election on PostgreSQL, the API of nest-leader-election's `LeaderElectorCore`.
 *
 * Start it with {@link LeaderElectorCore.connect} (a connection string), {@link LeaderElectorCore.create}
 * (a TypeORM DataSource), or `new LeaderElectorCore(source, config)` which starts in the background
 * (`ready()` tells when it campaigns). Like a server, a running elector keeps the Node process alive
 * (unless {@link unref} is called); after {@link shutdown}, or a failed start, nothing of it does.
 */
export class LeaderElectorCore extends EventEmitter<LeaderElectorEvents> {
  #native: Elector | null = null;
  #stopped = false;
  #source: string | RepositoryLike | NatsSource;
  #config: LeaderElectorConfig;
  /** Set by the first {@link start}; null while a deferred start has not happened. */
  #started: Promise<Elector> | null = null;
  /** This node's lease as the native snapshots tell it, and the heartbeat that bounds it. */
  readonly #lease = new LeaseCopy();
  /** Holds the event loop open while the elector runs (the native status stream does not). */
  #keepAlive: NodeJS.Timeout | null = null;
  /** `events$`, completed when the elector stops for good. */
  readonly #events = new LeadershipEvents(this);
  /** Someone awaits the start (start(), ready(), connect()): a failure reaches them as a rejection. */
  #startAwaited = false;
  /** The running leader jobs (runIfLeader, runWhileLeader): release and shutdown wait for them. */
  readonly #jobs: LeaderJobs;
  /** Where the core's log lines go, if anywhere. */
  #logger: LeaderElectorLogger | null = null;
  /** Undoes the metrics registration (set while the elector runs with `metrics`). */
  #untrackMetrics: (() => void) | null = null;
  /** Construction time, the `since` of the status before the start completed. */
  readonly #createdAt = Date.now();

  /**
   * Starts campaigning in the background on `source`: a connection string, or a TypeORM repository
   * whose DataSource settings (and, when `config.schema` is unset, whose table schema) are used.
   * Failures to start reject {@link ready} and are emitted as `error` when a listener exists; they are
   * never left unhandled. When nobody hears of a failure that way (no `error` listener, and neither
   * `ready()` nor `start()` called before it), it is emitted as a process warning with code
   * `LEADERLEASE_START_FAILED` rather than lost. With `{ start: false }` nothing happens until
   * {@link start} (used by `LeaderElectorService`, which starts with the Nest application).
   */
  constructor(
    source: string | RepositoryLike | NatsSource,
    config: LeaderElectorConfig = {},
    options: { start?: boolean; name?: string } = {},
  ) {
    super();
    this.#source = source;
    this.#config = config;
    this.#jobs = new LeaderJobs(
      {
        amILeader: () => this.amILeader(),
        validUntil: () => this.#lease.validUntil,
        term: () => this.#lease.term,
        workStarted: () => this.#native?.workStarted(),
        workFinished: () => this.#native?.workFinished(),
      },
      options.name ?? null,
    );
    // A 'log' listener added or removed changes whether the native debug events are wanted.
    const plain = this as EventEmitter;
    plain.on('newListener', (event: string | symbol) => {
      if (event === 'log') queueMicrotask(() => this.#applyEventLevel());
    });
    plain.on('removeListener', (event: string | symbol) => {
      if (event === 'log') this.#applyEventLevel();
    });
    if (options.start !== false) this.#begin();
  }

  #begin(): Promise<Elector> {
    if (this.#started === null) {
      this.#keepAlive = setInterval(() => undefined, 2 ** 30);
      this.#started = keepAliveWhile(() => this.#start(this.#source, this.#config));
      // Kept handled: a failure is reported through ready(), release(), shutdown() and 'error', and, when
      // none of them is listening, as a process warning.
      this.#started.catch((reason: unknown) => {
        const err = fromNative(reason);
        this.#releaseKeepAlive();
        this.#lease.stopHeartbeat();
        this.#stopMetrics();
        if (this.listenerCount('error') > 0) {
          this.emit('error', err);
        } else if (!this.#startAwaited) {
          process.emitWarning(`leaderlease: the elector could not start: ${err.name} [${err.code}]: ${err.message}`, {
            type: 'LeaderElectionWarning',
            code: 'LEADERLEASE_START_FAILED',
            detail: "Await ready() (or use LeaderElectorCore.connect) or listen for the 'error' event to handle it.",
          });
        }
        this.#events.end();
      });
    }
    return this.#started;
  }

  /**
   * Starts campaigning if not started yet (the constructor does unless told not to) and resolves once
   * campaigning; rejects with the named error if the start failed, or after {@link shutdown}.
   */
  async start(): Promise<void> {
    this.#startAwaited = true;
    if (this.#started === null && this.#stopped) {
      throw new ElectorShutDownError('the elector has been shut down');
    }
    await this.#begin();
  }

  async #start(source: string | RepositoryLike | NatsSource, config: LeaderElectorConfig): Promise<Elector> {
    let native: Elector;
    try {
      const options = toNativeOptions(config);
      const logger = config?.logger;
      if (logger !== undefined && logger !== null) {
        const problem = loggerProblem(logger);
        if (problem !== null) {
          throw new LeaderElectionConfigError(`invalid leader election config: \`logger\` ${problem}`);
        }
        this.#logger = logger;
      }
      const metrics = config?.metrics;
      if (metrics !== undefined && metrics !== null && metrics !== false) {
        // Checked (and prom-client loaded) before connecting, so that a missing peer fails the start.
        this.#untrackMetrics = trackMetrics(this, metrics === true ? {} : metrics, config.lockId ?? 1);
      }
      const onEvent = (e: ElectorEvent) => this.#onNativeEvent(e);
      const { nats, connection } = await storeSettings(source, config, options);
      const fleet = fleetOf(config);
      if (fleet !== null && nats !== null) {
        throw new LeaderElectionConfigError('invalid leader election config: `fleet` runs on PostgreSQL only (not on NATS yet)');
      }
      native = nats !== null
        ? await addon.Elector.connectNats(nats.servers, nats.bucket ?? null, options, onEvent)
        : fleet !== null
          ? await fleet.fleet.native.connectPg(connection, fleet.name, options, onEvent)
          : await addon.Elector.connectPg(connection, options, onEvent);
    } catch (err) {
      this.#stopMetrics();
      throw fromNative(err);
    }
    if (this.#stopped) {
      // shutdown() was called while connecting.
      await native.shutdown().catch(() => undefined);
    } else {
      this.#native = native;
      this.#applyEventLevel();
      this.#lease.startHeartbeat(native);
      this.#lease.readGenerationOf(native);
      native.onStateChange((s) => this.#onState(s));
      this.#onState(native.state());
    }
    return native;
  }

  /** Whether the native debug events (one per renewal) are wanted. */
  #applyEventLevel(): void {
    const debug = typeof this.#logger?.debug === 'function' || this.listenerCount('log') > 0;
    this.#native?.setEventLevel(debug ? 'debug' : 'info');
  }

  /** One event of the native core: to the logger and the `'log'` listeners. Never throws. */
  #onNativeEvent(e: ElectorEvent): void {
    deliverLogEvent(e, this.#logger, () => this.listenerCount('log'), (event) => this.emit('log', event));
  }

  #stopMetrics(): void {
    const untrack = this.#untrackMetrics;
    this.#untrackMetrics = null;
    untrack?.();
  }

  /** Stops leading locally at once (release and shutdown), before the native layer confirms it. */
  #fence(): void {
    this.#lease.drop();
    this.#jobs.leadershipLost();
  }

  /** Starts on the PostgreSQL server at `url` and resolves once campaigning. */
  static async connect(url: string, config: LeaderElectorConfig = {}): Promise<LeaderElectorCore> {
    const elector = new LeaderElectorCore(url, config);
    await elector.ready();
    return elector;
  }

  /**
   * Starts on NATS (`servers`, e.g. `nats://127.0.0.1:4222`), with the lease as a key in the JetStream
   * KV bucket `bucket` (default `leaderlease`), and resolves once campaigning. Same as
   * `new LeaderElectorCore({ nats: { servers, bucket } }, config)` and `ready()`. `servers` may list several
   * servers of a cluster, separated by commas.
   */
  static async connectNats(
    servers: string,
    config: LeaderElectorConfig & { bucket?: string } = {},
  ): Promise<LeaderElectorCore> {
    warnUnknownKeys(config, NATS_CONFIG_KEYS, 'connectNats config');
    const { bucket, ...rest } = config ?? {};
    const elector = new LeaderElectorCore({ nats: bucket !== undefined ? { servers, bucket } : { servers } }, rest);
    await elector.ready();
    return elector;
  }

  /**
   * Starts on the server of a TypeORM DataSource (see {@link connectionSettingsFromDataSource}: its url or
   * host/port/username/password/database, `ssl` with its certificates, `replication.master`, `extra`).
   */
  static async create(dataSource: DataSourceLike, config: LeaderElectorConfig = {}): Promise<LeaderElectorCore> {
    try {
      postgresOptions(dataSource);
    } catch (err) {
      throw fromNative(err);
    }
    const elector = new LeaderElectorCore({ manager: { dataSource } }, config);
    await elector.ready();
    return elector;
  }

  /**
   * The leadership events as an RxJS `Observable`:
   * - `{ type: 'elected', term }` when this node becomes leader,
   * - `{ type: 'revoked' }` when it stops leading (lease lost, {@link release}, {@link shutdown}),
   * - `{ type: 'leaderChanged', leaderId, term }` when another leader or a new term is observed (also
   *   when this node is elected).
   *
   * The same events, in the same order, as the EventEmitter's `elected`, `revoked` and `leaderChanged`.
   * It is hot: a subscriber sees the events from the moment it subscribes ({@link status} and
   * {@link amILeader} tell the state before). It completes when the elector stops for good
   * ({@link shutdown}, or a start that failed: {@link ready} rejects with the reason); subscribing after
   * that completes at once. Each subscription adds one listener per event, and unsubscribing removes
   * them. Also on `LeaderElectorService`, which is a `LeaderElectorCore`.
   *
   * rxjs is an optional peer dependency, loaded on first access: without it, reading `events$` throws a
   * `MissingPeerDependencyError` (`ERR_MISSING_DEPENDENCY`) that names `rxjs`.
   *
   * ```ts
   * elector.events$
   *   .pipe(filter((e) => e.type === 'elected'))
   *   .subscribe(({ term }) => startWorkers(term));
   * ```
   */
  get events$(): Rx.Observable<LeadershipEvent> {
    return this.#events.events$;
  }

  /** Lets the process exit while this elector still runs (as `server.unref()` does). */
  unref(): this {
    this.#keepAlive?.unref();
    return this;
  }

  /** Undoes {@link unref}: the running elector keeps the process alive again. */
  ref(): this {
    this.#keepAlive?.ref();
    return this;
  }

  #releaseKeepAlive(): void {
    if (this.#keepAlive !== null) {
      clearInterval(this.#keepAlive);
      this.#keepAlive = null;
    }
  }

  /**
   * Resolves once the elector campaigns (starting it if its start was deferred); rejects with the named
   * error if it could not start.
   */
  async ready(): Promise<void> {
    await this.start();
  }

  /**
   * True only while this node holds an unexpired lease, by its local deadline: a cheap synchronous read,
   * no database access. False before the start completed and after shutdown, and once the event loop has
   * not run for `maxEventLoopStall` (so never later than the native side stops renewing for that reason).
   *
   * The deadline is a copy in JavaScript of the native one (never later than it), taken from the ordered
   * snapshots of the native layer. A copy alone would lag behind a loss the native side has decided but
   * whose snapshot is still queued for this thread (a renewal that found no row, a step-down for a stalled
   * loop): the copy would say true while native `isLeader()` says false. So the copy is trusted only while
   * the native step-down counter (bumped before the native clock clears) still equals the generation of
   * the snapshot it came from. That counter is read with `Atomics.load` on its own memory (an external
   * buffer), not with a native call: a sync napi call costs 5-20 times the rest of this function. The
   * deadline is compared first, so a follower does not even read it. See docs/design.md, "The Node.js
   * copy of leadership".
   */
  amILeader(): boolean {
    const lease = this.#lease;
    return performance.now() < lease.validUntil && lease.generationNow() === lease.generation;
  }

  /** The fencing term of the current leadership, or null when not leading. */
  term(): number | null {
    return this.amILeader() ? this.#lease.term : null;
  }

  /**
   * The fence the database enforces: run it inside the transaction that does the leader's work, as the
   * last statement before COMMIT. It passes only while `term` (default: the current one) holds an
   * unexpired lease by the database clock, and share-locks the lease row until the transaction ends, so
   * nobody can take over before the commit. Otherwise it rejects with {@link FencedError}: roll back.
   *
   * `runner` is whatever runs SQL in that transaction and has `query(sql, params)`: a TypeORM
   * `EntityManager` of `dataSource.transaction(...)`, a `QueryRunner` after `startTransaction()`, or a
   * `pg` client after `BEGIN` (not a pool: outside a transaction the lock ends at once). Pass the `term`
   * the work saved when it began to require that very leadership. PostgreSQL only; the table's migration
   * must have run (it installs `leader_lease_fence`).
   *
   * ```ts
   * await dataSource.transaction(async (m) => {
   *   await m.insert(Report, { day });
   *   await elector.fence(m);
   * });
   * ```
   */
  async fence(runner: FenceRunner, term: number | null = this.term()): Promise<number> {
    const nats = Boolean(this.#config.backend?.nats) || isNatsSource(this.#source);
    return runFence(runner, term, nats, this.#native, this.#config.lockId ?? 1);
  }

  /** The leader this node last observed (itself while leading), or null. */
  leader(): LeaderIdentity | null {
    const l = this.#native?.leader();
    return l ? { leaderId: l.leaderId, term: l.term } : null;
  }

  /**
   * The current status, and whether the store is reachable: `connected` is false from the first failed
   * store operation of this elector (renewal, read, acquisition, ...) until the next one that gets an
   * answer, `since` tells since when (ms since the epoch), `lastError` the last error. A leader finds out
   * at its next renewal, a follower at its next read (when the lease it saw expires, or at once when the
   * `LISTEN` connection breaks). Before the start completes and after shutdown: not connected.
   */
  status(): ElectorStatus {
    const native = this.#native;
    if (native) {
      const h = native.storeHealth();
      return { ...toStatus(native.status()), connected: h.connected, lastError: h.lastError ?? null, since: h.since };
    }
    return { ...this.#events.last, connected: false, lastError: null, since: this.#createdAt };
  }

  /** Milliseconds left to this node's local lease deadline while it leads (as {@link amILeader}), else null. */
  leaseRemaining(): number | null {
    return this.amILeader() ? Math.max(0, this.#lease.validUntil - performance.now()) : null;
  }

  /** The lease duration in ms (the configured one, or the default), once started; else null. */
  get leaseDuration(): number | null {
    return this.#native?.leaseDuration ?? null;
  }

  /** This candidate's instance id, once started. */
  get instanceId(): string | null {
    return this.#native?.instanceId ?? null;
  }

  /**
   * Gives up leadership now, if held, so another candidate takes over; this node stays a candidate.
   * Does nothing on a follower or after shutdown. The process stays alive until it settles.
   */
  async release(): Promise<void> {
    return keepAliveWhile(() => this.#release());
  }

  async #release(): Promise<void> {
    const drainUntil = this.#jobs.drainDeadline();
    this.#fence();
    if (this.#started === null) return;
    this.#lease.releasing++;
    let native: Elector | null = null;
    let doneSeq = -1;
    try {
      native = await this.#started;
      if (this.#stopped) return;
      await this.#jobs.drain(drainUntil);
      doneSeq = await native.release();
    } catch (err) {
      const e = fromNative(err);
      if (e.code === 'ERR_SHUT_DOWN') return;
      throw e;
    } finally {
      // Every snapshot up to the release's completion is fenced; those after it are new decisions.
      this.#lease.releasing--;
      if (native !== null && this.#native === native) {
        const current = native.state();
        this.#lease.fenceSeq = Math.max(this.#lease.fenceSeq, doneSeq >= 0 ? doneSeq : current.seq);
        if (this.#lease.releasing === 0) this.#onState(current);
      }
    }
  }

  /**
   * Stops campaigning for good: releases the lease if held and closes the connections. Idempotent; never
   * rejects because the start had failed. The process stays alive until it settles.
   */
  async shutdown(): Promise<void> {
    return keepAliveWhile(() => this.#shutdown());
  }

  async #shutdown(): Promise<void> {
    const drainUntil = this.#jobs.drainDeadline();
    this.#stopped = true;
    this.#fence();
    this.#releaseKeepAlive();
    this.#lease.stopHeartbeat();
    this.#stopMetrics();
    if (this.#started === null) {
      this.#onStatus({ state: 'stopped', leaderId: null, term: null }, null);
      return;
    }
    let native: Elector;
    try {
      native = await this.#started;
    } catch {
      return;
    }
    await this.#jobs.drain(drainUntil);
    this.#native = null;
    try {
      await native.shutdown();
    } catch (err) {
      throw fromNative(err);
    }
    this.#onStatus({ state: 'stopped', leaderId: null, term: null }, null);
  }

  /**
   * Runs `fn(signal)` once this node leads, and aborts `signal` the moment leadership is lost (revoked,
   * released, expired by the local deadline, or shut down). Resolves with what `fn` returns; `fn` should
   * stop its work when the signal aborts. Waits for leadership first; rejects with
   * {@link ElectorShutDownError} if the elector stops before that, or with `options.signal`'s reason when
   * that aborts first.
   */
  async runWhileLeader<T>(
    fn: (signal: AbortSignal) => T | Promise<T>,
    options: { signal?: AbortSignal } = {},
  ): Promise<T> {
    await this.ready();
    await untilLeader(this, () => this.#stopped, options.signal);
    return this.#jobs.runWhileLeading(fn, options.signal);
  }

  /**
   * Runs `fn` now if this node leads, as a leader job: inside it (and everything it calls or awaits)
   * {@link LeaderElectorCore.current} gives its `{ signal, term, name }`; the signal aborts the moment
   * this leadership ends; and while the Promise it returns is pending, {@link release} and
   * {@link shutdown} wait for it (at most until the lease would have run out) before they give the
   * lease up, so that the next leader does not start while this job still runs. Returns
   * `{ ran: false }` without calling `fn` when this node does not lead. `@LeaderOnly()` methods run
   * through this.
   */
  runIfLeader<T>(fn: () => T): { ran: true; value: T } | { ran: false } {
    return this.#jobs.runIfLeader(fn);
  }

  /**
   * The leader job running in the current async call chain (a `@LeaderOnly()` method, a
   * `runWhileLeader` callback, or what they call): its abort signal, its term and the election's name
   * (`null` for the app-wide one); `undefined` outside one.
   */
  static current(): LeaderJobContext | undefined {
    return leaderJobContext.getStore();
  }

  /** How many leader jobs run now (see {@link runIfLeader}). */
  get runningJobs(): number {
    return this.#jobs.size;
  }

  /**
   * Applies one native snapshot. They arrive in the order the core decided them (some may be skipped,
   * none reordered), each complete, so the lease copy and the status are set together: an `elected`
   * listener sees amILeader() true. A leader snapshot is accepted (its lease copied) unless the elector
   * is shut down, a release is in flight or completed after it was decided (by `seq`), or it is already
   * stale: its deadline has passed or its leadership has ended natively (generation). Terms are never
   * compared: they may take any value after a database reset.
   */
  #onState(s: StateSnapshot): void {
    if (!this.#lease.advance(s)) return;
    if (s.state === 'leader' && s.term != null && s.deadline != null) {
      if (!this.#stopped) this.#lease.accept(s, s.term, s.deadline, nativeClockNow);
      if (this.#lease.generation === s.generation && this.amILeader()) {
        this.#onStatus({ state: 'leader', leaderId: s.leaderId ?? null, term: s.term }, s.generation);
      } else if (this.#events.last.state === 'leader') {
        // Not (or no longer) leading by this node's own rule, whatever the snapshot said.
        this.#lease.drop();
        this.#onStatus({ state: 'candidate', leaderId: null, term: null }, null);
      }
      return;
    }
    this.#lease.drop();
    this.#onStatus(toStatus(s), null);
  }

  #onStatus(next: LeaderStatus, generation: number | null): void {
    this.#events.publish(next, generation, () => this.#jobs.leadershipLost());
  }
}
